"""`model.kind: custom`: your own torch module from a file, an importable path or Python; errors; tuning; reload."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gencv.cv import cross_validate
from gencv.engines import NetClassifier, engine_used
from gencv.errors import SpecError
from gencv.models import MLP, load_module, module_args, module_reference
from gencv.modref import check_module_source
from gencv.runner import prepare, run_experiment
from gencv.spec import load_experiment, validate_experiment

from .conftest import ROOT, tiny

RESMLP = ROOT / "experiments" / "nets" / "resmlp.py"

NETS = '''
import torch
from torch import nn
from gencv.models import MLP


class Wide(nn.Module):
    def __init__(self, n_features, n_outputs, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_outputs))

    def forward(self, x):
        return self.body(x)


def make_mlp(n_features, n_outputs, hidden=(8,)):
    """The built-in MLP as a factory: the same network as model.kind=mlp."""
    return MLP(n_features, n_outputs, hidden, dropout=0.0)


class NeedsDepth(nn.Module):
    def __init__(self, n_features, n_outputs, depth):
        super().__init__()
        self.lin = nn.Linear(n_features, n_outputs)

    def forward(self, x):
        return self.lin(x)


class OneOutput(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x)


class Raises(nn.Module):
    def __init__(self, n_features, width=4):
        super().__init__()
        if width < 1:
            raise ValueError("width must be positive")


class Flat(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x).squeeze(1)


def not_a_module(n_features):
    return 3

CONSTANT = 1
'''


@pytest.fixture
def nets_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable package `mynets` (mynets/nets.py holds NETS) on sys.path, and the same file as a plain file."""
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg / "nets.py"
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        del sys.modules[name]


def custom(module: str, **kwargs: Any) -> Any:
    return tiny(**{"model.kind": "custom", "model.module": module, "model.kwargs": kwargs})


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(("model", "match"), [
    ({"kind": "custom"}, "model.kind=custom needs model.module"),
    ({"kind": "mlp", "module": "a.b:C"}, "model.module and model.kwargs are for model.kind=custom"),
    ({"kind": "mlp", "kwargs": {"width": 3}}, "model.module and model.kwargs are for model.kind=custom"),
    ({"kind": "custom", "module": "nets.Net"}, "expected MODULE:NAME"),
    ({"kind": "custom", "module": "nets:1Net"}, "'1Net' is not a Python name"),
    ({"kind": "custom", "module": "my-pkg.nets:Net"}, "not an importable module path"),
    ({"kind": "custom", "module": "nets/net.txt:Net"}, "not a .py file"),
])
def test_spec_checks_the_module_field(model: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        validate_experiment({"model": model})


def test_a_relative_file_is_resolved_against_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs" / "nets").mkdir(parents=True)
    # a copy that differs by a comment: load_module names a file's module by its content digest, so a byte-equal
    # copy would resolve to the path of whichever test (on this xdist worker) loaded the original first
    (tmp_path / "specs" / "nets" / "resmlp.py").write_text(RESMLP.read_text() + "\n# this test's copy\n")
    spec = tmp_path / "specs" / "s.yaml"
    spec.write_text("model: {kind: custom, module: nets/resmlp.py:ResMLP, kwargs: {width: 4}}\n")
    monkeypatch.chdir(tmp_path)  # another cwd than the spec's folder
    exp = load_experiment("specs/s.yaml")
    assert exp.model.module == f"{tmp_path / 'specs' / 'nets' / 'resmlp.py'}:ResMLP"
    check_module_source(exp.model.module)
    assert module_reference(load_module(exp.model.module)) == exp.model.module
    # the resolved spec validates again unchanged (a logged spec, a trial's overrides)
    assert exp.with_overrides({"model.kwargs.width": 5}).model.module == exp.model.module


def test_validate_no_data_checks_without_importing(nets_pkg: Path, tmp_path: Path) -> None:
    check_module_source(f"{nets_pkg}:Wide")
    check_module_source("mynets.nets:make_mlp")
    check_module_source("mynets.nets:CONSTANT")  # a name bound at top level counts; not callable is import-time
    assert "mynets.nets" not in sys.modules  # located and parsed, never imported
    with pytest.raises(SpecError, match=r"model.module: got .*defines no 'Wdie'. Did you mean 'Wide'\?"):
        check_module_source(f"{nets_pkg}:Wdie")
    with pytest.raises(SpecError, match="the file .*missing.py does not exist"):
        check_module_source(f"{tmp_path}/missing.py:Net")
    with pytest.raises(SpecError, match="module 'nopkg' not found; install its package"):
        check_module_source("nopkg.nets:Net")
    with pytest.raises(SpecError, match="module 'mynets.other' not found under mynets"):
        check_module_source("mynets.other:Net")


# --------------------------------------------------------------------------- building: one message each


@pytest.mark.parametrize(("ref", "kwargs", "match"), [
    ("nopkg.nets:Net", {}, r"model.module: got 'nopkg.nets:Net': module 'nopkg.nets' not found"),
    ("mynets.nets:Wdie", {}, r"model.module: .*mynets.nets defines no 'Wdie'. Did you mean 'Wide'\?"),
    ("mynets.nets:CONSTANT", {}, "CONSTANT is of type int, not a class or factory"),
    ("mynets.nets:Wide", {"widht": 4},
     r"model.kwargs.widht \(module__widht\): Wide does not take 'widht'. Did you mean 'width'\?"),
    ("mynets.nets:Wide", {"n_features": 4}, "model.kwargs.n_features: got 4, but gencv sets n_features"),
    ("mynets.nets:NeedsDepth", {}, r"model.kwargs: NeedsDepth needs depth; set model.kwargs.depth"),
    ("mynets.nets:Raises", {"width": 0}, r"model.kwargs: Raises\(n_features=4, width=0\) raised ValueError"),
    ("mynets.nets:not_a_module", {}, "returned an object of type int, not a torch nn.Module"),
    ("mynets.nets:OneOutput", {},
     r"OneOutput returns \(8, 1\) for a batch of 8 rows, but this classification task needs \(8, 3\): 3 logits"),
])
def test_each_error_names_the_field_and_the_fix(nets_pkg: Path, ref: str, kwargs: dict[str, Any], match: str) -> None:
    exp = custom(ref, **kwargs)
    with pytest.raises(SpecError, match=match):
        prepare(exp)  # before any training


def test_regression_needs_one_output_per_row(nets_pkg: Path) -> None:
    exp = custom("mynets.nets:Wide", width=4).with_overrides({"data.source": "diabetes", "metric": "rmse",
                                                              "cv.kind": "kfold"})
    assert prepare(exp).estimator.build_module(10).body[-1].out_features == 1  # n_outputs = 1 for regression
    with pytest.raises(SpecError, match=r"Flat returns \(8,\) for a batch of 8 rows, but this regression task "
                                        r"needs \(8, 1\): one value per row"):
        prepare(exp.with_overrides({"model.module": "mynets.nets:Flat", "model.kwargs": {}}))


def test_sizes_are_passed_only_under_the_names_a_signature_has() -> None:
    class Sized(nn.Module):
        def __init__(self, n_outputs: int, image_shape: tuple[int, ...] = (1, 1, 1)) -> None:
            super().__init__()

    assert module_args(Sized, {}, n_features=4, n_outputs=3) == {"n_outputs": 3}
    assert module_args(Sized, {}, n_features=64, n_outputs=10, image_shape=[1, 8, 8]) == {
        "n_outputs": 10, "image_shape": (1, 8, 8)}
    # the built-in modules take the same names
    assert MLP(n_features=4, n_outputs=3, hidden=(2,))(torch.zeros(5, 4)).shape == (5, 3)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_file_importable_and_python_object_train_the_builtin_network_exactly(nets_pkg: Path) -> None:
    """A factory returning the built-in MLP, given three ways, gives model.kind=mlp's fold losses bit for bit."""
    builtin = run_experiment(tiny(), refit=False)
    ref = [f.valid_loss for f in builtin.cv.folds]
    from_file = run_experiment(custom(f"{nets_pkg}:make_mlp", hidden=[8]), refit=False)
    from_path = run_experiment(custom("mynets.nets:make_mlp", hidden=[8]), refit=False)
    obj = load_module("mynets.nets:make_mlp")
    from_python = run_experiment(tiny(), module=obj, refit=False)
    assert from_python.experiment.model.module == "mynets.nets:make_mlp"
    for out in (from_file, from_path):
        assert [f.valid_loss for f in out.cv.folds] == ref
    # from Python without kwargs: the factory's own default hidden=(8,) is the same network
    assert [f.valid_loss for f in from_python.cv.folds] == ref
    assert ref[0] > 0 and np.isfinite(ref).all()


def test_cross_validate_takes_a_module_class(nets_pkg: Path) -> None:
    """`Wide` is Linear-ReLU-Linear, the built-in MLP with one hidden layer: the same fold losses bit for bit."""
    prep = prepare(tiny())
    ds = prep.dataset
    Wide = load_module("mynets.nets:Wide")
    settings = {"max_epochs": 3, "lr": 0.02, "early_stopping": False}
    res = cross_validate(NetClassifier(Wide, module__width=8, **settings), ds.X, ds.y, prep.folds, metric="accuracy",
                         seed=0)
    ref = cross_validate(NetClassifier(hidden=(8,), dropout=0.0, **settings), ds.X, ds.y, prep.folds,
                         metric="accuracy", seed=0)
    assert [f.valid_loss for f in res.folds] == [f.valid_loss for f in ref.folds]
    # the class itself: a NetClassifier with default settings on the labels of y
    bare = cross_validate(Wide, ds.X, ds.y, prep.folds, metric="accuracy", seed=0)
    assert len(bare.ok_folds) == 3 and bare.folds[0].n_fit < bare.folds[0].n_train  # early stopping by default


def test_init_default_keeps_the_modules_own_weights() -> None:
    Res = load_module(f"{RESMLP}:ResMLP")
    X, y = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2

    def init_of(init: str) -> dict[str, torch.Tensor]:
        est = NetClassifier(Res, init=init, max_epochs=1, early_stopping=False, random_state=3, module__width=4)
        return est.fit(X, y).init_state_

    torch.manual_seed(3)
    own = Res(n_features=4, n_outputs=2, width=4).state_dict()
    kept, he = init_of("default"), init_of("he")
    assert all(torch.equal(kept[k], own[k]) for k in own)
    assert not torch.equal(he["inp.weight"], own["inp.weight"]) and torch.count_nonzero(he["inp.bias"]) == 0


def test_batched_engine_stacks_a_custom_module_and_auto_uses_it() -> None:
    exp = custom(f"{RESMLP}:ResMLP", width=4).with_overrides({"train.dtype": "float64"})
    prep = prepare(exp)
    assert engine_used("auto", prep.estimator) == "batched"  # the generic path: vmap over functional_call
    ds = prep.dataset
    ref = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=exp.seed, engine="skorch")
    got = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=exp.seed, engine="batched")
    assert got.n_failed == 0 and len(got.folds) == len(ref.folds)
    # float64, dropout off: the same training (weights to about 1e-15), so the same predictions and scores
    for a, b in zip(ref.folds, got.folds):
        assert b.valid_scores == pytest.approx(a.valid_scores, abs=1e-9)


def test_tuning_model_kwargs_width() -> None:
    from gencv.tuning import build_space, tune_experiment

    exp = custom(f"{RESMLP}:ResMLP", width=4, depth=1).with_overrides(
        {"tune": {"trials": 3, "sampler": "random", "pruner": "none",
                  "space": {"model.kwargs.width": {"low": 2, "high": 6}}}})
    (dim,) = build_space(exp)
    assert (dim.kind, dim.low, dim.high) == ("int", 2.0, 6.0)
    out = tune_experiment(exp, storage=":memory:")
    widths = [t.params["model.kwargs.width"] for t in out.trials]
    assert len(widths) == 3 and all(isinstance(w, int) and 2 <= w <= 6 for w in widths)
    best = out.best.params["model.kwargs.width"]
    assert out.refit_estimator.module_.inp.out_features == best  # the refit is built with the winning width


# --------------------------------------------------------------------------- logging and reloading


@pytest.mark.slow
@pytest.mark.parametrize("given_as", ["file", "importable"])
def test_the_logged_copy_rebuilds_the_model_after_the_original_is_gone(nets_pkg: Path, tracking_uri: str,
                                                                       given_as: str) -> None:
    from mlflow import MlflowClient

    from gencv.posthoc import measure_logged_run
    from gencv.tracking import MlflowTracker
    from gencv.tracking.mlflow_tracker import load_logged_model

    ref = f"{nets_pkg}:Wide" if given_as == "file" else "mynets.nets:Wide"
    tracker = MlflowTracker(tracking_uri)
    out = run_experiment(custom(ref, width=6), tracker=tracker)
    client = MlflowClient(tracking_uri)
    assert [a.path for a in client.list_artifacts(out.run_id, "model_weights/module")] == [
        "model_weights/module/nets.py"]
    est = out.refit_estimator
    ref_proba = est.predict_proba(out.dataset.X[:5])
    shutil.rmtree(nets_pkg.parent)  # the user's module is gone: the reloads use the logged copy
    for name in [m for m in sys.modules if m.startswith(("mynets", "gencv_module_nets_"))]:
        del sys.modules[name]
    post = measure_logged_run(tracker, out.run_id, ["norms"], log_results=False)
    assert post.result.values["n_params"] == sum(p.numel() for p in est.module_.parameters()) == 4 * 6 + 6 + 6 * 3 + 3
    assert not any("model.module" in n for n in post.result.notes), post.result.notes
    model = load_logged_model(tracker, out.run_id)  # exported by torch.export: no code of yours needed
    with torch.no_grad():
        got = model(torch.as_tensor(out.dataset.X[:5], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, ref_proba, rtol=1e-5, atol=1e-6)
