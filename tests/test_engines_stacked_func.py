"""The batched engine's generic path (gencv/engines/stacked_func.py) against the skorch engine, member by member:
a CNN, an MLP with batch norm, an RNN and a custom module."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import KFold
from torch import nn

from gencv.engines import BatchedEngine, estimator_from_spec, get_engine
from gencv.engines.batched import unsupported_setting
from gencv.engines.stacked_func import StackedCNN, StackedFunctional, make_stack
from gencv.engines.stacked_mlp import StackedMLP
from gencv.models import CNN, MLP
from gencv.spec import ModelSpec, TrainSpec
from gencv.splits import Fold
from tests.conftest import ROOT
from tests.test_engines_batched import ATOL, SEEDS, _data, _est, _max_weight_diff

RESMLP = ROOT / "experiments" / "nets" / "resmlp.py"
# run, not imported through gencv.models.load_module: its module cache (by content digest) would remember this
# path for the file, and tests/test_custom_module.py checks the path a copy of it resolves to
ResMLP = runpy.run_path(str(RESMLP))["ResMLP"]
TRAIN = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "max_epochs": 3, "schedule": "none", "dtype": "float64",
         "early_stopping": None}


def _folds(n: int, k: int = 4) -> list[Fold]:
    return [Fold(i, tr, va) for i, (tr, va) in enumerate(KFold(k, shuffle=True, random_state=0).split(np.arange(n)))]


def _digits(n: int = 150) -> tuple[np.ndarray, np.ndarray, list[Fold]]:
    X, y = load_digits(return_X_y=True)
    return X[:n], y[:n] % 3, _folds(n)  # three classes keep the head small


def _sequences(n: int = 120, lags: int = 6) -> tuple[np.ndarray, np.ndarray, list[Fold]]:
    t = np.arange(n + lags) * 0.3
    series = np.sin(t) + 0.1 * np.random.default_rng(0).normal(size=len(t))
    X = np.stack([series[i : i + lags] for i in range(n)])
    return X, series[lags : lags + n], _folds(n)


def _cnn(**train: object) -> object:
    m = ModelSpec(kind="cnn", channels=[3, 4], kernel_size=3, hidden=[6], dropout=0.0, batch_norm=False)
    return estimator_from_spec(m, TrainSpec(**{**TRAIN, **train}), task="classification", n_classes=3,  # type: ignore[arg-type]
                               image_shape=(1, 8, 8))


def _compare(est: object, X: np.ndarray, y: np.ndarray, folds: list[Fold]) -> tuple[list, list]:
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    assert all(f.error is None for f in ref + got), [f.error for f in ref + got]
    return ref, got


def test_a_cnn_member_equals_its_skorch_net() -> None:
    ref, got = _compare(_cnn(), *_digits())
    assert _max_weight_diff(ref, got) < ATOL


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batch_norm_members_equal_the_skorch_nets_weights_and_running_stats(kind: str) -> None:
    # folds of 112 and 113 rows in batches of 20: the last batches differ (12, 13 rows), so the members run in
    # groups of equal rows there and batch norm sees each member's real rows only
    X, y, folds = _digits() if kind == "cnn" else _data("classification")
    if kind == "cnn":
        est = _cnn(batch_size=20).set_params(batch_norm=True)
    else:
        est = _est(model={"batch_norm": True, "hidden": [8, 5]}, batch_size=20)
    ref, got = _compare(est, X, y, folds)
    assert _max_weight_diff(ref, got) < ATOL  # state_dict: running_mean, running_var, num_batches_tracked too
    stats = [k for k in got[0].estimator.module_.state_dict() if "running_mean" in k]
    assert stats and all(float(f.estimator.module_.state_dict()[stats[0]].abs().max()) > 0 for f in got)
    tracked = [int(f.estimator.module_.state_dict()[stats[0].replace("running_mean", "num_batches_tracked")])
               for f in got]
    assert tracked == [3 * -(-len(fo.train) // 20) for fo in folds]  # each member counted its own batches


def test_batch_norm_with_early_stopping_restores_each_members_best_statistics() -> None:
    est = _est(optimizer="adam", lr=0.05, max_epochs=25, model={"batch_norm": True}, batch_size=20,
               early_stopping={"patience": 3, "valid_fraction": 0.3})
    ref, got = _compare(est, *_data("classification"))
    assert [f.estimator.best_epoch_ for f in got] == [f.estimator.best_epoch_ for f in ref]
    assert any(f.estimator.best_epoch_ < f.estimator.epochs_run_ for f in got)  # some member went back
    assert _max_weight_diff(ref, got) < ATOL


@pytest.mark.parametrize("train", [
    {"optimizer": "nesterov", "weight_decay": 0.01, "l1": 1e-3, "clip_grad_norm": 0.5},
    {"schedule": {"kind": "plateau", "patience": 0, "factor": 0.5}, "max_epochs": 6, "lr": 0.3},
    {"optimizer": "adam", "lr": 0.02, "max_epochs": 40, "stop_at_train_loss": 0.5},
], ids=str)
def test_batch_norm_members_follow_the_engines_per_member_settings(train: dict) -> None:
    est = _est(model={"batch_norm": True}, batch_size=20, **train)
    ref, got = _compare(est, *_data("classification"))
    assert [f.estimator.epochs_run_ for f in got] == [f.estimator.epochs_run_ for f in ref]
    assert _max_weight_diff(ref, got) < ATOL


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_rnn_member_equals_its_skorch_net(cell: str) -> None:
    m = ModelSpec(kind="rnn", hidden=[5], cell=cell, rnn_layers=2, dropout=0.0)
    est = estimator_from_spec(m, TrainSpec(**TRAIN), task="regression")  # type: ignore[arg-type]
    ref, got = _compare(est, *_sequences())
    assert _max_weight_diff(ref, got) < ATOL


def test_a_custom_module_member_equals_its_skorch_net() -> None:
    m = ModelSpec(kind="custom", module=f"{RESMLP}:ResMLP", kwargs={"width": 6, "depth": 2, "dropout": 0.0})
    est = estimator_from_spec(m, TrainSpec(**{**TRAIN, "optimizer": "adam", "lr": 0.01, "l1": 1e-3}),  # type: ignore[arg-type]
                              task="classification", n_classes=3, module=ResMLP)
    assert unsupported_setting(est) is None
    ref, got = _compare(est, *_data("classification"))
    assert _max_weight_diff(ref, got) < ATOL


def test_make_stack_keeps_the_hand_batched_mlp_for_plain_mlps() -> None:
    assert isinstance(make_stack([MLP(3, 2, (4,), dropout=0.2)]), StackedMLP)
    assert isinstance(make_stack([MLP(3, 2, (4,), batch_norm=True)]), StackedCNN)
    assert isinstance(make_stack([ResMLP(3, 2)]), StackedFunctional)
    assert isinstance(make_stack([CNN((1, 8, 8), 3, (2,), hidden=(4,))]), StackedCNN)


@pytest.mark.parametrize(("kind", "batch_norm"), [("cnn", False), ("cnn", True), ("mlp", True)])
def test_the_hand_batched_cnn_computes_what_vmap_computes(kind: str, batch_norm: bool) -> None:
    torch.manual_seed(0)
    modules = [(CNN((1, 8, 8), 3, (3, 4), hidden=(5,), batch_norm=batch_norm) if kind == "cnn" else
                MLP(64, 3, (6, 5), batch_norm=batch_norm)).double() for _ in range(3)]
    X = torch.randn(3, 10, 64, dtype=torch.float64)
    counts = torch.tensor([10, 7, 0])  # a member with fewer rows, one with none
    results = []
    for cls in (StackedCNN, StackedFunctional):
        stack = cls(modules)
        flat = torch.stack([stack.flatten(m) for m in modules])
        grad = torch.zeros_like(flat)
        params = stack.leaves(flat, grad)
        out = stack.forward(params, X, torch.Generator().manual_seed(1), 0.0, counts)
        out.sum().backward()
        stack.sync_grads_(params, grad, stack.layout)
        with torch.no_grad():
            ev = stack.forward(params, X, None)
        results.append((out.detach(), grad.clone(), ev, {k: v.clone() for k, v in stack.buffers.items()}))
    (o1, g1, e1, b1), (o2, g2, e2, b2) = results
    for a, b in ((o1, o2), (g1, g2), (e1, e2), *((b1[k], b2[k]) for k in b1)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert bool((g1[2] == 0).all())  # the member without rows: no gradient, its statistics untouched
    assert all(int(v[2]) == 0 for k, v in b1.items() if k.endswith("num_batches_tracked"))
    assert all(int(v[1]) == 1 for k, v in b1.items() if k.endswith("num_batches_tracked"))


def test_dropout_masks_are_seeded_per_member_and_reproducible() -> None:
    m = ModelSpec(kind="custom", module=f"{RESMLP}:ResMLP", kwargs={"width": 6, "depth": 1, "dropout": 0.3})
    est = estimator_from_spec(m, TrainSpec(**TRAIN), task="classification", n_classes=3,  # type: ignore[arg-type]
                              module=ResMLP)
    X, y, folds = _data("classification")
    a = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    b = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    assert _max_weight_diff(a, b) == 0.0
    off = list(get_engine("batched").fit_folds(est.set_params(module__dropout=0.0), X, y, folds, SEEDS))
    assert _max_weight_diff(a, off) > 1e-3  # the masks do act


def test_populations_with_different_dropout_or_module_arguments_go_in_different_stacks(
        caplog: pytest.LogCaptureFixture) -> None:
    bn = {"batch_norm": True}
    ests = [_est(lr=0.05, model=bn, batch_size=20), _est(lr=0.1, model={**bn, "dropout": 0.2}, batch_size=20),
            _est(lr=0.02, model=bn, batch_size=20)]
    X, y, folds = _data("classification")
    with caplog.at_level("INFO", logger="gencv.engines.batched"):
        together = BatchedEngine().fit_population(ests, X, y, folds, SEEDS)
    assert "3 configurations x 4 folds in 2 stack(s)" in caplog.text
    alone = list(get_engine("batched").fit_folds(ests[2], X, y, folds, SEEDS))
    assert _max_weight_diff(alone, together[2]) < ATOL


def test_a_population_of_custom_modules_stacks_by_module_arguments(caplog: pytest.LogCaptureFixture) -> None:
    m = ModelSpec(kind="custom", module=f"{RESMLP}:ResMLP", kwargs={"width": 6, "depth": 1, "dropout": 0.0})
    base = estimator_from_spec(m, TrainSpec(**TRAIN), task="classification", n_classes=3,  # type: ignore[arg-type]
                               module=ResMLP)
    ests = [clone(base).set_params(lr=0.05), clone(base).set_params(lr=0.1, module__width=4),
            clone(base).set_params(lr=0.02)]
    X, y, folds = _data("classification")
    with caplog.at_level("INFO", logger="gencv.engines.batched"):
        together = BatchedEngine().fit_population(ests, X, y, folds, SEEDS)
    assert "3 configurations x 4 folds in 2 stack(s)" in caplog.text  # width 4 is another architecture
    for est, pop in zip(ests, together):
        assert _max_weight_diff(list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS)), pop) < ATOL


def test_a_batch_norm_batch_of_one_row_fails_that_member_alone_as_in_the_skorch_engine() -> None:
    est = _est(model={"batch_norm": True})  # batches of 16: folds of 113 rows end in a batch of one row
    X, y, folds = _data("classification")
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    ok = [f.error is None for f in got]
    assert ok == [f.error is None for f in ref] == [len(f.train) % 16 != 1 for f in folds]
    assert any(ok) and not all(ok)  # both outcomes occurred
    assert all("more than 1 value per channel" in str(f.error) for f in got if f.error is not None)
    assert _max_weight_diff([f for f in ref if f.error is None], [f for f in got if f.error is None]) < ATOL


def test_a_batch_norm_batch_of_one_row_in_every_member_fails_each_fold_not_the_run() -> None:
    """Leave-one-out on 18 rows in batches of 16: every member's last batch has one row (no uneven groups)."""
    from sklearn.model_selection import LeaveOneOut

    est = _est(model={"batch_norm": True}, batch_size=16, max_epochs=1)
    X, y, _ = _data("classification")
    X, y = X[:18], y[:18]
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(LeaveOneOut().split(X))]
    seeds = list(range(18))
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, seeds))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, seeds))
    assert all(f.error is not None for f in ref) and all(f.error is not None for f in got)
    assert all("more than 1 value per channel" in str(f.error) for f in got)


def test_a_forward_vmap_cannot_batch_runs_member_by_member(caplog: pytest.LogCaptureFixture) -> None:
    class Branchy(nn.Module):  # data-dependent control flow: vmap refuses it
        def __init__(self, n_features: int, n_outputs: int) -> None:
            super().__init__()
            self.lin = nn.Linear(n_features, n_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.lin(x)
            return out if float(out.detach().sum()) < 1e9 else out * 0

    est = estimator_from_spec(ModelSpec(kind="custom", module="x.y:Branchy"), TrainSpec(**TRAIN),  # type: ignore[arg-type]
                              task="classification", n_classes=3, module=Branchy)
    with caplog.at_level("INFO", logger="gencv.engines.stacked_func"):
        ref, got = _compare(est, *_data("classification"))
    assert "vmap cannot batch Branchy" in caplog.text
    assert _max_weight_diff(ref, got) < ATOL


@pytest.mark.parametrize("spec", ["digits_cnn.yaml", "custom_resmlp.yaml"])
def test_the_cnn_and_custom_examples_run_under_the_batched_engine(spec: str, tmp_path: Path) -> None:
    from gencv.runner import run_experiment
    from gencv.spec import load_experiment

    # a copy of the example whose net file differs by a comment: load_module caches a file's module by its
    # content digest, and tests/test_custom_module.py checks which path the original resolves to
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "resmlp.py").write_text(RESMLP.read_text() + "\n# a copy for test_engines_stacked_func\n")
    shutil.copy(ROOT / "experiments" / spec, tmp_path / spec)
    exp = load_experiment(tmp_path / spec, ["train.max_epochs=2", "cv.n_splits=2", "train.engine=batched"])
    out = run_experiment(exp, refit=False)  # no tracker: nothing recorded
    assert out.cv.n_failed == 0 and all(np.isfinite(f.valid_scores["accuracy"]) for f in out.cv.folds)
    assert [len(f.history) for f in out.cv.folds] == [2, 2]
