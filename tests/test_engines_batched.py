"""The batched engine against the skorch engine (the reference), member by member."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification, make_regression
from sklearn.model_selection import KFold

from gencv.cv import cross_validate
from gencv.engines import (
    ENGINES,
    NetEstimator,
    UnsupportedSettingError,
    engine_used,
    estimator_from_spec,
    get_engine,
)
from gencv.spec import ModelSpec, TrainSpec
from gencv.splits import Fold

ATOL = 1e-6  # float64, dropout off: the stacked members must be the skorch nets, step for step
SEEDS = [11, 12, 13, 14]


def _data(task: str, n: int = 150) -> tuple[np.ndarray, np.ndarray, list[Fold]]:
    if task == "classification":
        X, y = make_classification(n_samples=n, n_features=6, n_informative=4, n_classes=3, random_state=0)
    else:
        X, y = make_regression(n_samples=n, n_features=6, noise=5.0, random_state=0)
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(KFold(4, shuffle=True, random_state=0).split(X))]
    return X, y, folds


def _est(task: str = "classification", model: dict | None = None, **train: object) -> NetEstimator:
    t = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "max_epochs": 3, "schedule": "none", "dtype": "float64",
         "early_stopping": None, **train}
    m = {"hidden": [8, 5], "dropout": 0.0, **(model or {})}
    return estimator_from_spec(ModelSpec(**m), TrainSpec(**t), task=task,  # type: ignore[arg-type]
                               n_classes=3 if task == "classification" else 1)


def _both(est: NetEstimator, task: str) -> tuple[list, list]:
    X, y, folds = _data(task)
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    return ref, got


def _max_weight_diff(ref: list, got: list) -> float:
    diffs = []
    for a, b in zip(ref, got):
        sa, sb = a.estimator.module_.state_dict(), b.estimator.module_.state_dict()
        assert sa.keys() == sb.keys()
        diffs += [float((sa[k] - sb[k]).abs().max()) for k in sa]
    return max(diffs)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_members_equal_the_skorch_nets_in_float64_sgd(task: str) -> None:
    ref, got = _both(_est(task), task)
    assert {next(f.estimator.module_.parameters()).dtype for f in ref + got} == {torch.float64}  # train.dtype
    for a, b in zip(ref, got):  # same init first: the same seeds give the same weights before training
        for k, v in a.estimator.init_state_.items():
            torch.testing.assert_close(b.estimator.init_state_[k], v, atol=0, rtol=0)
    assert _max_weight_diff(ref, got) < ATOL


@pytest.mark.parametrize("train", [
    {"optimizer": "momentum"}, {"optimizer": "nesterov"}, {"optimizer": "adam", "lr": 0.01},
    {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1}, {"weight_decay": 0.01, "l1": 0.001},
    {"optimizer": "adagrad", "weight_decay": 0.01}, {"optimizer": "rmsprop", "lr": 0.005, "weight_decay": 0.01},
    {"optimizer": "nadam", "lr": 0.01, "weight_decay": 0.01},
    {"clip_grad_norm": 0.5}, {"schedule": "cosine", "max_epochs": 5},
    {"schedule": {"kind": "step", "step_size": 2, "gamma": 0.5}, "max_epochs": 5},
    {"schedule": {"kind": "plateau", "patience": 0, "factor": 0.5}, "max_epochs": 8, "lr": 0.3},
    {"schedule": {"kind": "plateau", "patience": 1, "factor": 0.3}, "max_epochs": 8, "optimizer": "adam",
     "lr": 0.05, "early_stopping": {"patience": 5, "valid_fraction": 0.25}},
    {"schedule": {"kind": "plateau", "patience": 0, "factor": 0.5}, "max_epochs": 8, "optimizer": "rmsprop",
     "lr": 0.1},
], ids=str)
def test_members_equal_the_skorch_nets_for_each_supported_setting(train: dict) -> None:
    ref, got = _both(_est(model={"activation": "tanh"}, **train), "classification")
    assert _max_weight_diff(ref, got) < ATOL


def test_history_matches_the_skorch_engine() -> None:
    ref, got = _both(_est(early_stopping={"patience": 2, "valid_fraction": 0.25}), "classification")
    for a, b in zip(ref, got):
        ha, hb = a.estimator.epoch_history(), b.estimator.epoch_history()
        assert len(ha) == len(hb)
        for ra, rb in zip(ha, hb):
            assert ra.keys() == rb.keys()
            for k in ra:
                if k != "seconds":
                    assert rb[k] == pytest.approx(ra[k], abs=1e-9), k
        np.testing.assert_array_equal(a.estimator.fit_positions_, b.estimator.fit_positions_)
        np.testing.assert_array_equal(a.estimator.inner_valid_positions_, b.estimator.inner_valid_positions_)


def test_early_stopping_is_per_member_and_a_stopped_member_does_not_change() -> None:
    est = _est(optimizer="adam", lr=0.05, max_epochs=40, early_stopping={"patience": 2, "valid_fraction": 0.3,
                                                                          "restore_best": False})
    X, y, folds = _data("classification")
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS))
    got = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    stops = [f.estimator.epochs_run_ for f in got]
    assert len(set(stops)) > 1 and max(stops) < 40  # members stopped, at different epochs
    assert stops == [f.estimator.epochs_run_ for f in ref]
    # Each member ends with the weights of its own stop epoch, though the stack ran on after it.
    assert _max_weight_diff(ref, got) < ATOL


def test_restore_best_gives_each_member_its_best_epoch_weights() -> None:
    est = _est(optimizer="adam", lr=0.05, max_epochs=40, early_stopping={"patience": 3, "valid_fraction": 0.3})
    ref, got = _both(est, "classification")
    assert [f.estimator.best_epoch_ for f in got] == [f.estimator.best_epoch_ for f in ref]
    assert any(f.estimator.best_epoch_ < f.estimator.epochs_run_ for f in got)
    assert _max_weight_diff(ref, got) < ATOL


def test_each_member_stops_at_the_target_training_loss_as_the_skorch_net_does() -> None:
    est = _est(optimizer="adam", lr=0.02, max_epochs=60, early_stopping=None, stop_at_train_loss=0.35)
    ref, got = _both(est, "classification")
    stops = [f.estimator.stop_epoch_ for f in got]
    assert all(f.estimator.stop_reached_ for f in got) and len(set(stops)) > 1  # members stopped, each its own epoch
    assert stops == [f.estimator.stop_epoch_ for f in ref]
    assert [f.estimator.epochs_run_ for f in got] == stops
    for a, b in zip(ref, got):
        ha, hb = a.estimator.epoch_history(), b.estimator.epoch_history()
        assert [r["curve_fit_loss"] for r in hb] == pytest.approx([r["curve_fit_loss"] for r in ha], abs=1e-9)
        assert hb[-1]["curve_fit_loss"] <= 0.35 < hb[-2]["curve_fit_loss"]
    assert _max_weight_diff(ref, got) < ATOL
    never = _est(optimizer="sgd", lr=0.001, max_epochs=3, early_stopping=None, stop_at_train_loss=0.01)
    ref, got = _both(never, "classification")
    assert [(f.estimator.stop_reached_, f.estimator.stop_epoch_) for f in got] == [(False, None)] * len(got) \
        == [(f.estimator.stop_reached_, f.estimator.stop_epoch_) for f in ref]


def test_dropout_members_differ_and_are_reproducible() -> None:
    est = _est(model={"dropout": 0.3}, max_epochs=3)
    X, y, folds = _data("classification")
    a = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    b = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    assert _max_weight_diff(a, b) == 0.0
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS))
    assert _max_weight_diff(ref, a) > ATOL  # the masks are the member's own, not skorch's


@pytest.mark.parametrize(("change", "field"), [
    ({"optimizer": "lbfgs"}, "train.optimizer"),
])
def test_unsupported_settings_name_the_setting_and_suggest_skorch(change: dict, field: str) -> None:
    est = _est(**change)
    X, y, folds = _data("classification")
    with pytest.raises(UnsupportedSettingError, match=rf"{field}: got .*engine: skorch"):
        get_engine("batched").fit_folds(est, X, y, folds, SEEDS)


def test_auto_falls_back_to_skorch_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    X, y, folds = _data("classification")
    with caplog.at_level("INFO", logger="gencv.engines.batched"):
        fits = list(get_engine("auto").fit_folds(_est(optimizer="lbfgs"), X, y, folds, SEEDS))
    assert all(f.estimator is not None for f in fits) and "train.optimizer" in caplog.text
    assert set(ENGINES) >= {"skorch", "batched", "auto"}
    assert engine_used("auto", _est(optimizer="lbfgs")) == "skorch"
    assert engine_used("auto", _est()) == "batched" and engine_used("skorch", _est()) == "skorch"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # fold 0's held-out curve sees the huge rows
def test_a_diverging_member_fails_alone() -> None:
    X, y, folds = _data("regression")
    X = X.copy()
    X[folds[0].valid[:3]] = 1e300  # rows every fold but fold 0 trains on (unscaled): those folds overflow
    est = _est("regression", model={"hidden": [8]}, max_epochs=3).set_params(scale="none")
    bat = list(get_engine("batched").fit_folds(est, X, y, folds, SEEDS))
    ref = list(get_engine("skorch").fit_folds(est, X, y, folds, SEEDS))
    ok = [f.error is None for f in bat]
    assert ok == [f.error is None for f in ref] and any(ok) and not all(ok)  # both outcomes occurred
    assert all(type(f.error).__name__ == "DivergenceError" for f in bat if f.error is not None)


def test_cross_validate_with_the_batched_engine_gives_the_same_fold_results() -> None:
    X, y, folds = _data("classification")
    est = _est(early_stopping={"patience": 2, "valid_fraction": 0.25}, max_epochs=4)
    ref = cross_validate(est, X, y, folds, metric="accuracy", seed=0, engine="skorch")
    got = cross_validate(est, X, y, folds, metric="accuracy", seed=0, engine="batched")
    for a, b in zip(ref.folds, got.folds):
        fa, fb = a.flat_metrics(), b.flat_metrics()
        assert fa.keys() == fb.keys()
        for k in fa:
            if k != "fit_seconds":
                assert fb[k] == pytest.approx(fa[k], abs=1e-6), k
        assert len(a.history) == len(b.history)


def test_float32_exports_and_predicts() -> None:
    X, y, folds = _data("classification")
    est = _est(dtype="float32", max_epochs=2)
    fit = next(iter(get_engine("batched").fit_folds(est, X, y, folds[:1], SEEDS[:1])))
    model = fit.estimator
    assert model is not None and next(model.module_.parameters()).dtype == torch.float32
    proba = model.predict_proba(X[:5])
    with torch.no_grad():
        np.testing.assert_allclose(model.to_torch()(torch.as_tensor(X[:5])).numpy(), proba, atol=1e-5)


@pytest.mark.slow
def test_fold_scores_of_the_two_engines_are_statistically_equivalent_over_10_seeds_x_5_folds() -> None:
    """TOST (two one-sided paired t-tests) on the 50 per-fold accuracy differences, margin +-0.02, alpha 0.05.

    float32 and dropout 0.1: the engines agree in distribution, not bit for bit (different dropout masks,
    float32 reduction order). The pairs share a fold, so each difference is the engine's effect alone.
    """
    from scipy import stats

    from gencv.cv import cross_validate
    from gencv.runner import prepare

    from .conftest import tiny

    diffs = []
    for seed in range(10):
        exp = tiny(**{"seed": seed, "data.source": "breast_cancer", "model.hidden": [16], "model.dropout": 0.1,
                      "train.optimizer": "adam", "train.lr": 0.01, "train.max_epochs": 10, "cv.n_splits": 5,
                      "train.early_stopping": None})
        prep = prepare(exp)
        ds = prep.dataset
        scores = {}
        for engine in ("skorch", "batched"):
            res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=exp.seed,
                                 engine=engine)
            scores[engine] = np.array([f.valid_scores["accuracy"] for f in res.folds])
        diffs.append(scores["batched"] - scores["skorch"])
    d = np.concatenate(diffs)
    assert len(d) == 50 and np.any(d != 0)  # the engines are not the same computation (else the test is moot)
    margin, n = 0.02, len(d)
    se = d.std(ddof=1) / np.sqrt(n)
    p_lower = 1 - stats.t.cdf((d.mean() + margin) / se, n - 1)  # H0: mean difference <= -margin
    p_upper = stats.t.cdf((d.mean() - margin) / se, n - 1)  # H0: mean difference >= +margin
    assert max(p_lower, p_upper) < 0.05, (d.mean(), se)


@pytest.mark.parametrize("max_members", [1, 3, None])
def test_stacks_split_into_chunks_train_each_member_as_one_stack_does(max_members: int | None,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    X, y, folds = _data("classification")
    whole = list(get_engine("batched").fit_folds(_est(), X, y, folds, SEEDS))
    with caplog.at_level("INFO", logger="gencv.engines.batched"):
        chunked = list(get_engine("batched").fit_folds(_est(max_members=max_members), X, y, folds, SEEDS))
    assert _max_weight_diff(whole, chunked) == 0.0  # members never interact: chunks change nothing
    expected = {1: "4 folds in 4 stacks of at most 1 (train.max_members)",
                3: "4 folds in 2 stacks of at most 3 (train.max_members)", None: None}[max_members]
    assert (expected in caplog.text) if expected else "stacks of at most" not in caplog.text


def test_the_memory_budget_splits_a_stack_that_would_not_fit(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import gencv.engines.batched as batched

    X, y, folds = _data("classification")
    monkeypatch.setattr(batched, "MEMORY_BUDGET", 30_000)  # bytes: two members of this data (13 kB each)
    with caplog.at_level("INFO", logger="gencv.engines.batched"):
        fits = list(get_engine("batched").fit_folds(_est(), X, y, folds, SEEDS))
    assert all(f.estimator is not None for f in fits)
    assert "4 folds in 2 stacks of at most 2 (a memory budget of 0.03 MB)" in caplog.text
