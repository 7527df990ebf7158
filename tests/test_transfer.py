"""Transfer learning: data.classes, model.base (run, registered model, file), frozen layers, the new head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from gencv.data import load_dataset
from gencv.engines import (
    NetClassifier,
    UnsupportedSettingError,
    engine_used,
    get_engine,
)
from gencv.engines.transfer import BaseWeights
from gencv.errors import GencvError, SpecError
from gencv.runner import prepare, run_experiment
from gencv.spec import DataSpec, Experiment
from gencv.splits import Fold
from gencv.tracking import MlflowTracker

from .conftest import tiny


def test_data_classes_keeps_a_subset_coded_in_the_order_given() -> None:
    full = load_dataset(DataSpec(source="digits"))
    ds = load_dataset(DataSpec(source="digits", classes=[7, 5, 9]))
    assert ds.classes == ["7", "5", "9"]
    for code, label in enumerate([7, 5, 9]):  # the rows of each kept class, in data order, coded 0..k-1
        np.testing.assert_array_equal(ds.X[ds.y == code], full.X[full.y == label])
    assert len(ds.y) == int(np.isin(full.y, [5, 7, 9]).sum())
    with pytest.raises(SpecError, match=r"data.classes: got \[5, 11\]: \['11'\] not among the classes"):
        load_dataset(DataSpec(source="digits", classes=[5, 11]))
    with pytest.raises(SpecError, match="data.classes.*regression task"):
        load_dataset(DataSpec(source="diabetes", classes=[1, 2]))


def test_unset_transfer_keys_leave_the_spec_digest_as_before() -> None:
    # the digest of the default spec before model.base, train.base_lr_factor and data.classes existed
    assert Experiment().digest() == "16aaa59e8b1bd0a8"
    explicit = Experiment.model_validate({"model": {"base": None}, "train": {"base_lr_factor": 1.0},
                                          "data": {"classes": None}})
    assert explicit.digest() == "16aaa59e8b1bd0a8"
    assert Experiment.model_validate({"data": {"classes": [0, 1]}}).digest() != "16aaa59e8b1bd0a8"


@pytest.mark.parametrize(("base", "match"), [
    ({"run": "a", "path": "b"}, "exactly one of run"),
    ({"uri": "runs:/abc/model"}, "models:/NAME/VERSION"),
    ({"path": "w.pt", "sha256": "xyz"}, "64 hex digits"),
    ({"path": "w.pt", "new_head": [0]}, "positive hidden sizes"),
])
def test_model_base_is_checked_when_the_spec_is_read(base: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        tiny().with_overrides({"model.base": base})


def _source_state(n_features: int = 4, n_classes: int = 3) -> dict[str, torch.Tensor]:
    """A trained-looking MLP state dict (hidden [8, 8]) for n_features inputs and n_classes outputs."""
    est = NetClassifier("mlp", hidden=(8, 8), dropout=0.0, classes=list(range(n_classes)), random_state=7)
    return {k: v.detach().clone() for k, v in est.build_module(n_features).state_dict().items()}


def _xy(n: int = 60, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.mark.parametrize(("freeze", "fixed"), [
    ("all_but_head", ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]),
    (("net.0",), ["net.0.weight", "net.0.bias"]),
    ("none", []),
])
def test_frozen_parameters_do_not_change_and_leave_the_optimizer(freeze, fixed: list[str]) -> None:
    state = _source_state()
    X, y = _xy()
    est = NetClassifier("mlp", hidden=(8, 8), dropout=0.0, max_epochs=5, lr=0.05, early_stopping=False,
                        weight_decay=0.01, random_state=0, base=BaseWeights(state, freeze=freeze), base_lr_factor=0.1)
    est.fit(X, y)
    after = est.module_.state_dict()
    assert after["net.4.weight"].shape == (2, 8)  # the new head: 2 classes, where the base had 3
    for k, v in after.items():
        if k.startswith("net.4"):
            continue
        if k in fixed:
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
        else:  # loaded, then trained
            assert not torch.equal(v, state[k]), k
    # the optimizer holds the trainable parameters only: the head at lr, the unfrozen base layers at lr x 0.1
    groups = est.net_.optimizer_.param_groups
    held = {id(p) for g in groups for p in g["params"]}
    named = dict(est.module_.named_parameters())
    assert held == {id(p) for k, p in named.items() if k not in fixed}
    assert all(not named[k].requires_grad for k in fixed)
    if len(groups) == 2:
        assert groups[1]["initial_lr"] == pytest.approx(0.1 * groups[0]["initial_lr"], rel=1e-12)
        assert groups[0]["initial_lr"] == pytest.approx(0.05, rel=1e-12)
    # the starting point is the base, so init_state_ (the weights before training) holds the base's weights
    torch.testing.assert_close(est.init_state_["net.0.weight"], state["net.0.weight"], rtol=0, atol=0)


def test_new_head_replaces_the_output_layer_with_the_new_class_count() -> None:
    X, y = _xy()
    y = y + 2 * (X[:, 2] > 0.5)  # 4 classes
    est = NetClassifier("mlp", hidden=(8, 8), dropout=0.0, max_epochs=2, early_stopping=False, random_state=0,
                        base=BaseWeights(_source_state(), new_head=(5,)))
    est.fit(X, y)
    head = est.module_.net[4]
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [5, 4]
    assert est.predict_proba(X).shape == (60, 4)


def test_a_base_of_another_input_shape_fails_before_training(tmp_path) -> None:
    path = tmp_path / "base.pt"
    torch.save(_source_state(n_features=6), path)  # a plain module state dict: 6 inputs, iris has 4
    with pytest.raises(SpecError, match=r"model.base: the base network does not fit.*net.0.weight: \(8, 6\) in the "
                                        r"base, \(8, 4\) here"):
        prepare(tiny().with_overrides({"model.hidden": [8, 8], "model.base": {"path": str(path)}}))
    with pytest.raises(SpecError, match=r"net.2.weight: \(8, 8\) in the base, \(16, 8\) here"):
        prepare(tiny().with_overrides({"model.hidden": [8, 16], "model.base": {"path": str(path)}}))
    with pytest.raises(SpecError, match="model.base.sha256: the file .* has SHA-256"):
        prepare(tiny().with_overrides({"model.hidden": [8, 8], "model.base": {"path": str(path), "sha256": "0" * 64}}))
    torch.save(_source_state(n_features=4), path)
    with pytest.raises(SpecError, match="model.base.freeze: got 'body': the network has no such layer.*"
                                        "Its layers: net, net.0"):
        prepare(tiny().with_overrides({"model.hidden": [8, 8], "model.base": {"path": str(path), "freeze": ["body"]}}))
    with pytest.raises(SpecError, match="model.base.head: got 'fc'"):
        prepare(tiny().with_overrides({"model.hidden": [8, 8], "model.base": {"path": str(path), "head": "fc"}}))


def test_the_batched_engine_refuses_a_base_and_auto_falls_back() -> None:
    est = NetClassifier("mlp", hidden=(8, 8), base=BaseWeights(_source_state()))
    X, y = _xy()
    assert engine_used("auto", est) == "skorch"
    with pytest.raises(UnsupportedSettingError, match="model.base: got a base network; .*use train.engine: skorch"):
        get_engine("batched").fit_folds(est, X, y, [Fold(0, np.arange(40), np.arange(40, 60))], [0])


@pytest.mark.slow
def test_transferred_run_names_its_base_run_in_its_tags(tracking_uri: str, tmp_path) -> None:
    tracker = MlflowTracker(tracking_uri)
    source = tiny(**{"data.classes": ["setosa", "versicolor"], "model.hidden": [8, 8], "cv.n_splits": 2})
    src = run_experiment(source, tracker=tracker, register="iris-two")
    client = MlflowClient(tracking_uri)
    src_tags = client.get_run(src.run_id).data.tags
    target = tiny(**{"data.classes": ["versicolor", "virginica"], "model.hidden": [8, 8], "cv.n_splits": 2,
                     "model.base": {"run": src.run_id}})
    out = run_experiment(target, tracker=tracker)
    tags = client.get_run(out.run_id).data.tags
    assert tags["gencv.base_run"] == src.run_id and tags["gencv.base"] == src.run_id
    assert tags["gencv.base_sha256"] == src_tags["gencv.sha256.model_weights/state_dict.pt"]
    # the frozen layers of the refit are the source's refit weights
    logged = torch.load(client.download_artifacts(src.run_id, "model_weights/state_dict.pt", str(tmp_path)),
                        weights_only=True)
    torch.testing.assert_close(out.refit_estimator.module_.state_dict()["net.0.weight"], logged["net.net.0.weight"])
    # the same base through the registry
    by_uri = run_experiment(target.with_overrides({"model.base": {"uri": "models:/iris-two/latest"}}), tracker=tracker,
                            refit=False)
    tags = client.get_run(by_uri.run_id).data.tags
    assert tags["gencv.base_run"] == src.run_id and tags["gencv.base_model_version"] == "iris-two/1"
    # a weights file whose SHA-256 no longer matches the run's tag is refused before training
    client.set_tag(src.run_id, "gencv.sha256.model_weights/state_dict.pt", "0" * 64)
    with pytest.raises(GencvError, match="corrupted or was replaced"):
        prepare(target, tracking_uri=tracking_uri)
    # a base whose spec has another architecture is named, field by field
    key = "gencv.sha256.model_weights/state_dict.pt"
    client.set_tag(src.run_id, key, src_tags[key])
    with pytest.raises(SpecError, match=r"model.hidden=\[8, 8\] in the base, \[8, 4\] here"):
        prepare(target.with_overrides({"model.hidden": [8, 4]}), tracking_uri=tracking_uri)


@pytest.mark.slow
def test_the_shipped_transfer_examples_run_and_compare(tracking_uri: str, tmp_path, monkeypatch) -> None:
    # The README's recipe, one epoch and 2 folds: pretrain on digits 0-4 (registered), then digits 5-9 with and
    # without the base on the same folds, and `gencv compare` on the pair.
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from gencv.cli import app

    monkeypatch.chdir(tmp_path)
    examples = Path(__file__).resolve().parents[1] / "experiments"
    fast = ["--set", "train.max_epochs=1", "--set", "cv.n_splits=2", "--tracking-uri", tracking_uri, "--json"]

    def run(*args: str) -> dict:
        res = CliRunner().invoke(app, ["run", *args, *fast])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout.strip().splitlines()[-1])

    source = run(str(examples / "transfer_source_digits.yaml"), "--register", "digits-0-4")
    transferred = run(str(examples / "transfer_target_digits.yaml"))
    scratch = run(str(examples / "transfer_target_digits.yaml"), "--set", "model.base=null")
    client = MlflowClient(tracking_uri)
    tags = client.get_run(transferred["run_id"]).data.tags
    assert tags["gencv.base_run"] == source["run_id"] and tags["gencv.base_uri"] == "models:/digits-0-4/latest"
    assert "gencv.base_run" not in client.get_run(scratch["run_id"]).data.tags
    assert tags["gencv.folds_digest"] == client.get_run(scratch["run_id"]).data.tags["gencv.folds_digest"]
    res = CliRunner().invoke(app, ["compare", transferred["run_id"], scratch["run_id"], "--tracking-uri", tracking_uri,
                                   "--json"])
    assert res.exit_code == 0, res.output
    pair = json.loads(res.stdout.strip().splitlines()[-1])["pairs"][0]
    assert pair["n_folds"] == 2 and 0.0 <= pair["corrected_p"] <= 1.0


@pytest.mark.slow
def test_gencv_measure_rebuilds_a_transferred_network_with_its_new_head(tracking_uri: str) -> None:
    from gencv.posthoc import measure_logged_run

    tracker = MlflowTracker(tracking_uri)
    source = tiny(**{"data.classes": ["setosa", "versicolor"], "model.hidden": [8], "cv.n_splits": 2})
    src = run_experiment(source, tracker=tracker)
    target = tiny(**{"data.classes": ["versicolor", "virginica"], "model.hidden": [8], "cv.n_splits": 2,
                     "model.base": {"run": src.run_id, "new_head": [4]}})
    out = run_experiment(target, tracker=tracker)
    tracker.flush()
    post = measure_logged_run(tracker, out.run_id, ["norms"], log_results=False)
    # the measured network is the refit's own: the same weights, new output block included
    own = sum(float(p.detach().double().pow(2).sum()) for p in out.refit_estimator.module_.parameters())
    assert post.result.values["norm_l2"] == pytest.approx(np.sqrt(own), rel=1e-6)
