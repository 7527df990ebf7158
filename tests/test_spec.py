from __future__ import annotations

from pathlib import Path

import pytest

from gencv.errors import SpecError
from gencv.spec import Experiment, load_experiment, parse_overrides, validate_experiment

from .conftest import ROOT


def test_every_example_spec_validates() -> None:
    specs = sorted((ROOT / "experiments").glob("*.yaml"))
    assert len(specs) >= 6
    for p in specs:
        exp = load_experiment(p)
        assert exp.name


def test_quickstart_is_the_embedded_default() -> None:
    from importlib import resources

    embedded = resources.files("gencv.experiments").joinpath("quickstart.yaml")
    assert load_experiment(str(embedded)) == load_experiment(ROOT / "experiments" / "quickstart.yaml")


def test_overrides_apply_dotted_paths_and_parse_values(tmp_path: Path) -> None:
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml", ["train.lr=0.5", "cv.kind=loo", "model.hidden=[3, 2]"])
    assert exp.train.lr == 0.5 and exp.cv.kind == "loo" and exp.model.hidden == [3, 2]
    assert parse_overrides(["train.early_stopping=null"]) == {"train.early_stopping": None}


def test_digest_changes_with_content() -> None:
    a = Experiment()
    assert a.digest() == Experiment().digest()
    assert a.digest() != a.with_overrides({"seed": 1}).digest()


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"trian": {}}, r"trian: unknown key\. Did you mean 'train'\?"),
        ({"train": {"lr": "fast"}}, r"train\.lr: got 'fast'"),
        ({"train": {"lr": -1}}, r"train\.lr: got -1: .*greater than 0"),
        ({"train": {"optimizer": "adamm"}}, r"train\.optimizer: got 'adamm': must be one of .*Did you mean 'adam'\?"),
        ({"cv": {"n_splits": 1}}, r"cv\.n_splits: got 1"),
        ({"model": {"dropout": 1.5}}, r"model\.dropout: got 1\.5"),
        ({"metric": "acuracy"}, r"metric: got 'acuracy'.*Did you mean 'accuracy'\?"),
        ({"data": {"test_size": 1.0}}, r"data\.test_size: got 1\.0"),
        ({"cv": {"kind": "rolling", "window": "sliding"}}, r"needs cv\.max_train_size"),
        ({"model": {"hidden": [8, 0]}}, r"model\.hidden"),
        ({"train": {"early_stopping": {"patiense": 3}}}, r"train\.early_stopping\.patiense: unknown key\. Did you mean 'patience'"),
        ({"data": {"source": "csv:d.csv", "target": "y", "features": ["y"]}},
         r"data\.features: got \['y'\]: lists the target column 'y' .*leaks.*remove 'y' from data\.features"),
    ],
)
def test_bad_specs_name_field_value_and_fix(raw: dict, pattern: str) -> None:
    with pytest.raises(SpecError, match=pattern):
        validate_experiment(raw)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(SpecError, match="2 problems") as info:
        validate_experiment({"train": {"lr": 0}, "cv": {"kind": "kfoldd"}})
    assert "train.lr" in str(info.value) and "cv.kind" in str(info.value)


def test_unreadable_and_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_experiment(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_experiment(lst)


def test_bad_override_syntax() -> None:
    with pytest.raises(SpecError, match="expected PATH=VALUE"):
        parse_overrides(["train.lr"])
    with pytest.raises(SpecError, match=r"train\.lrr: unknown key"):
        Experiment().with_overrides({"train.lrr": 0.1})


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["skorch", "batched"])
@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_example_runs(path: str, engine: str) -> None:
    # Data and all folds of every shipped example, then one epoch on (at most 25 of) its folds; tuning
    # examples run their base spec. Under the batched engine an example runs or is refused with the
    # setting named and `engine: skorch` suggested.
    import math

    from gencv.cv import cross_validate
    from gencv.engines import UnsupportedSettingError
    from gencv.engines.batched import unsupported_setting
    from gencv.runner import prepare

    exp = load_experiment(ROOT / "experiments" / path, ["train.max_epochs=1", f"train.engine={engine}"])
    if exp.model.base is not None and exp.model.base.path is None:  # its source run first: tests/test_transfer.py
        pytest.skip("a transfer example needs its source run; tests/test_transfer.py runs the pair")
    prep = prepare(exp)
    assert len(prep.folds) >= 1
    ds = prep.dataset
    if engine == "batched" and unsupported_setting(prep.estimator) is not None:
        with pytest.raises(UnsupportedSettingError, match=r"(model|train)\.[a-z_.]+: got .*use train\.engine: skorch"):
            cross_validate(prep.estimator, ds.X, ds.y, prep.folds[:25], metric=exp.metric, seed=exp.seed,
                           engine=engine)
        return
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds[:25], metric=exp.metric, seed=exp.seed, engine=engine)
    assert res.n_failed == 0 and all(math.isfinite(f.valid_scores[exp.metric]) for f in res.folds)


def test_stop_at_train_loss_with_early_stopping_names_both_fields_and_the_fix() -> None:
    with pytest.raises(SpecError, match=r"train\.stop_at_train_loss=0\.1 cannot be combined with train\.early_stopping"
                       r".*train\.early_stopping: null"):
        validate_experiment({"train": {"stop_at_train_loss": 0.1}})  # early stopping is on by default
    exp = validate_experiment({"train": {"stop_at_train_loss": 0.1, "early_stopping": None}})
    assert exp.train.stop_at_train_loss == 0.1
    with pytest.raises(SpecError, match=r"train\.stop_at_train_loss"):
        validate_experiment({"train": {"stop_at_train_loss": 0.0, "early_stopping": None}})
