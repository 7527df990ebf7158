from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from gencv.cv import FoldResult, cross_validate, gaps
from gencv.engines import NetClassifier
from gencv.errors import DivergenceError
from gencv.runner import prepare
from gencv.seeds import derive_seed

from .conftest import tiny


def test_gap_signs_on_a_hand_made_case() -> None:
    g = gaps({"accuracy": 0.9, "log_loss": 0.2, "rmse": 1.0}, {"accuracy": 0.7, "log_loss": 0.5, "rmse": 1.5}, 0.2, 0.5)
    assert g == pytest.approx({"accuracy": 0.2, "log_loss": 0.3, "rmse": 0.5, "loss": 0.3}, abs=1e-12)
    assert gaps({"r2": 0.8}, {"r2": 0.9}, 1.0, 0.9) == pytest.approx({"r2": -0.1, "loss": -0.1})


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, "fold", 1) == derive_seed(0, "fold", 1)
    seeds = {derive_seed(s, "fold", i) for s in range(3) for i in range(5)}
    assert len(seeds) == 15


def test_fold_scores_are_what_their_names_say() -> None:
    prep = prepare(tiny(**{"model.dropout": 0.5}))
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=0,
                         X_test=prep.X_test, y_test=prep.y_test, keep_estimators=True)
    assert len(res.folds) == 3 and res.n_failed == 0
    for f, fold in zip(res.folds, prep.folds):
        est = f.estimator
        assert est is not None
        # the train score is on the rows the network was fitted on: the training fold minus its early-stopping split
        assert f.inner_valid_idx is not None
        fitted = np.setdiff1d(fold.train, f.inner_valid_idx)
        assert f.n_fit == len(fitted) == f.n_train - len(f.inner_valid_idx) and f.n_fit < f.n_train
        pred_tr = est.predict(ds.X[fitted])
        assert np.array_equal(pred_tr, est.predict(ds.X[fitted]))  # eval mode: dropout off
        assert f.train_scores["accuracy"] == pytest.approx(accuracy_score(ds.y[fitted], pred_tr), abs=1e-12)
        # (losses are float32 means: row order changes the last bits)
        assert f.train_loss == pytest.approx(est.loss(ds.X[fitted], ds.y[fitted]), rel=1e-6)
        # ... and the early-stopping split is scored on its own, beside it
        assert f.es_scores["accuracy"] == pytest.approx(
            accuracy_score(ds.y[f.inner_valid_idx], est.predict(ds.X[f.inner_valid_idx])), abs=1e-12)
        assert f.es_loss == pytest.approx(est.loss(ds.X[f.inner_valid_idx], ds.y[f.inner_valid_idx]), rel=1e-6)
        assert {"es_accuracy", "es_loss"} <= set(f.flat_metrics())
        assert f.valid_scores["accuracy"] == pytest.approx(
            accuracy_score(ds.y[fold.valid], est.predict(ds.X[fold.valid])), abs=1e-12)
        assert f.test_scores["accuracy"] == pytest.approx(accuracy_score(prep.y_test, est.predict(prep.X_test)), abs=1e-12)
        assert f.gaps["accuracy"] == pytest.approx(f.train_scores["accuracy"] - f.valid_scores["accuracy"], abs=1e-12)
        assert f.gaps["loss"] == pytest.approx(f.valid_loss - f.train_loss, abs=1e-12)
        assert len(f.history) == f.epochs_run and 1 <= f.best_epoch <= f.epochs_run
        assert set(f.inner_valid_idx) <= set(fold.train)
        assert not set(f.inner_valid_idx) & set(fold.valid) and not set(f.inner_valid_idx) & set(prep.test_idx)
        assert {"curve_train_loss", "curve_es_loss", "curve_valid_loss", "curve_valid_accuracy"} <= set(f.history[0])
    assert res.mean_score() == pytest.approx(np.mean([f.valid_scores["accuracy"] for f in res.folds]))


def test_time_series_early_stopping_validates_on_the_end_of_the_training_window() -> None:
    prep = prepare(tiny(**{"data.source": "synthetic_timeseries", "cv.kind": "rolling", "metric": "rmse",
                           "data.lags": 5, "cv.gap": 2}))
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="rmse", seed=0)
    for f, fold in zip(res.folds, prep.folds):
        assert fold.train.max() + 2 < fold.valid.min()
        n_es = len(f.inner_valid_idx)
        assert np.array_equal(f.inner_valid_idx, fold.train[-n_es:])


class _FailingEstimator(NetClassifier):
    """Diverges on one chosen fold seed."""

    def fit(self, X: Any, y: Any, **kw: Any) -> _FailingEstimator:
        if self.random_state == derive_seed(0, "fold", 1):
            raise DivergenceError("training loss became nan at epoch 2, batch 1", epoch=2, batch=1)
        return super().fit(X, y, **kw)


def test_a_failed_fold_is_reported_and_the_others_continue() -> None:
    prep = prepare(tiny())
    est = _FailingEstimator(**prep.estimator.get_params())
    res = cross_validate(est, prep.dataset.X, prep.dataset.y, prep.folds, metric="accuracy", seed=0)
    assert [f.status for f in res.folds] == ["ok", "failed", "ok"]
    assert res.n_failed == 1 and "diverged: training loss became nan" in res.folds[1].reason
    assert len(res.ok_folds) == 2 and np.isfinite(res.mean_score())


def test_same_seed_same_results_and_resumed_folds_are_reused() -> None:
    prep = prepare(tiny())
    ds = prep.dataset
    a = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=0)
    b = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=0)
    assert [f.flat_metrics() | {"fit_seconds": 0} for f in a.folds] == [f.flat_metrics() | {"fit_seconds": 0} for f in b.folds]
    restored = FoldResult.from_json(a.folds[0].to_json())
    seen: list[int] = []
    c = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=0, done={0: restored},
                       on_fold_end=lambda r, pos: seen.append(r.index))
    assert c.folds[0] is restored and seen == [0, 1, 2]
    assert c.folds[2].valid_scores == a.folds[2].valid_scores


def test_lag_windows_with_a_horizon_never_train_on_targets_past_a_held_out_origin() -> None:
    # horizon 3: window i's target lies 2 rows after window i+2's last lag, so 2 rows must separate
    # every training block from the held-out block after it (test set, CV folds, early stopping).
    exp = tiny(**{"data.source": "synthetic_timeseries", "cv.kind": "rolling", "metric": "rmse", "data.lags": 5,
                  "data.horizon": 3, "cv.gap": 0, "cv.n_splits": 3})
    prep = prepare(exp)
    assert prep.dataset.min_gap == 2
    assert prep.cv_idx.max() + 2 < prep.test_idx.min()
    for fold in prep.folds:
        assert fold.train.max() + 2 < fold.valid.min()
    from gencv.engines.skorch_net import InnerSplit

    est = prep.estimator
    assert est.time_ordered and est.time_gap == 2
    split = InnerSplit(0.2, stratified=False, time_ordered=True, seed=0, gap=est.time_gap)
    tr, va = split.positions(len(prep.folds[0].train), None)
    assert va.max() == len(prep.folds[0].train) - 1 and tr.max() + 2 < va.min()  # last block, 2 rows left out
    ds = prep.dataset
    res = cross_validate(est, ds.X, ds.y, prep.folds[:1], metric="rmse", seed=0)
    assert np.array_equal(res.folds[0].inner_valid_idx, prep.folds[0].train[va])
    # horizon 1 needs no gap: nothing is dropped
    prep1 = prepare(exp.with_overrides({"data.horizon": 1}))
    assert prep1.dataset.min_gap == 0 and prep1.cv_idx.max() + 1 == prep1.test_idx.min()


def test_rolling_cv_treats_rows_as_time_ordered_without_a_time_column(tmp_path: Any) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    p = tmp_path / "series.csv"
    pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80), "y": rng.normal(size=80)}).to_csv(p, index=False)
    prep = prepare(tiny(**{"data.source": f"csv:{p}", "data.target": "y", "cv.kind": "rolling", "metric": "rmse"}))
    assert np.array_equal(prep.test_idx, np.arange(64, 80))  # the latest block, not a random sample
    assert prep.estimator.time_ordered  # early stopping validates on the end of each training window
    for fold in prep.folds:
        assert fold.train.max() < fold.valid.min()


def test_every_epoch_has_its_curve_point_and_best_epoch_is_the_restored_one() -> None:
    # Early stopping fires (patience 2, min_delta large enough to count most epochs as misses).
    exp = tiny(**{"train.max_epochs": 40, "train.early_stopping.patience": 2, "train.early_stopping.min_delta": 0.01,
                  "metric": "balanced_accuracy"})
    prep = prepare(exp)
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="balanced_accuracy", seed=0,
                         keep_estimators=True)
    for f in res.folds:
        assert f.epochs_run < 40  # stopped early
        assert all({"curve_valid_loss", "curve_valid_balanced_accuracy"} <= set(row) for row in f.history)
        stopper = dict(f.estimator.net_.callbacks_)["early_stopping"]
        assert f.best_epoch == stopper.best_epoch_
        es = [row["curve_es_loss"] for row in f.history]
        # best by min_delta: no later epoch improved on it by more than min_delta
        assert all(v > es[f.best_epoch - 1] - 0.01 for v in es[f.best_epoch:])
    # the primary metric's curve is that metric: the last point equals the fold's score when no restore moved weights
    from sklearn.metrics import balanced_accuracy_score

    exp2 = exp.with_overrides({"train.early_stopping": None, "train.max_epochs": 3})
    prep2 = prepare(exp2)
    res2 = cross_validate(prep2.estimator, ds.X, ds.y, prep2.folds, metric="balanced_accuracy", seed=0,
                          keep_estimators=True)
    for f, fold in zip(res2.folds, prep2.folds):
        want = balanced_accuracy_score(ds.y[fold.valid], f.estimator.predict(ds.X[fold.valid]))
        assert f.history[-1]["curve_valid_balanced_accuracy"] == pytest.approx(want, abs=1e-12)
        assert f.valid_scores["balanced_accuracy"] == pytest.approx(want, abs=1e-12)


def test_regression_curve_is_in_target_units() -> None:
    exp = tiny(**{"data.source": "diabetes", "cv.kind": "kfold", "metric": "mae", "train.early_stopping": None,
                  "train.max_epochs": 3})
    prep = prepare(exp)
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="mae", seed=0)
    for f in res.folds:
        assert f.history[-1]["curve_valid_mae"] == pytest.approx(f.valid_scores["mae"], rel=1e-5)


@pytest.mark.parametrize("metric", ["f1_macro", "log_loss", "roc_auc"])
def test_curve_in_each_metric_ends_at_the_reported_score(metric: str) -> None:
    # per epoch a numpy version of the metric; its last point is sklearn's valid score for the final weights
    exp = tiny(**{"train.early_stopping": None, "train.max_epochs": 3, "metric": metric})
    prep = prepare(exp)
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric=metric, seed=0)
    for f in res.folds:
        assert f.history[-1][f"curve_valid_{metric}"] == pytest.approx(f.valid_scores[metric], rel=1e-5, abs=1e-6)


def test_train_score_and_measures_leave_out_the_early_stopping_rows() -> None:
    """The gap is train (fitted rows) minus held-out; measures see only the fitted rows (README: what each number means)."""
    exp = tiny(**{"train.early_stopping.valid_fraction": 0.3}, measures=["norms"], measure_options={"sample_size": None})
    prep = prepare(exp)
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=0, measures=exp.measures,
                         measure_config=None, keep_estimators=True)
    for f, fold in zip(res.folds, prep.folds):
        fitted = np.setdiff1d(fold.train, f.inner_valid_idx)
        assert f.measures["measure_sample_size"] == len(fitted) < len(fold.train)
        everything = f.estimator.loss(ds.X[fold.train], ds.y[fold.train])
        assert f.train_loss == pytest.approx(f.estimator.loss(ds.X[fitted], ds.y[fitted]), rel=1e-6)
        assert f.train_loss != pytest.approx(everything, rel=1e-4)  # the old number (fold incl. early-stopping rows)


def test_grouped_early_stopping_holds_out_whole_groups() -> None:
    """Early stopping on grouped data must not validate on groups it trains on (nor may a grouped holdout)."""
    exp = tiny(**{"data.source": "synthetic_grouped", "cv.kind": "group", "cv.n_splits": 3, "metric": "accuracy",
                  "train.early_stopping.valid_fraction": 0.25})
    prep = prepare(exp)
    ds = prep.dataset
    assert ds.groups is not None
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric="accuracy", seed=0, groups=ds.groups)
    for f, fold in zip(res.folds, prep.folds):
        assert f.ok, f.reason
        es_groups = set(ds.groups[f.inner_valid_idx])
        fitted_groups = set(ds.groups[np.setdiff1d(fold.train, f.inner_valid_idx)])
        assert es_groups and fitted_groups and not es_groups & fitted_groups
    holdout = prepare(tiny(**{"data.source": "synthetic_grouped", "cv.kind": "holdout", "cv.test_fraction": 0.3}))
    (fold,) = holdout.folds
    assert not set(holdout.dataset.groups[fold.train]) & set(holdout.dataset.groups[fold.valid])


@pytest.mark.parametrize("case", ["quickstart", "regression", "time_series"])
def test_fold_numbers_are_unchanged_for_the_same_seed(case: str) -> None:
    """Every fold's scores, losses and curve, exactly as recorded on the code before `NetClassifier`/`NetRegressor`."""
    import json

    from .cv_reference import CASES, REFERENCE, fold_numbers

    assert fold_numbers(CASES[case]) == json.loads(REFERENCE.read_text())[case]


@pytest.mark.parametrize("engine", ["skorch", "batched"])
@pytest.mark.parametrize("value, reachable", [(0.55, True), (1e-6, False)])
def test_stop_at_train_loss_stops_at_the_first_epoch_at_or_below_it(value: float, reachable: bool, engine: str) -> None:
    exp = tiny(**{"train.early_stopping": None, "train.stop_at_train_loss": value, "train.max_epochs": 40,
                  "model.dropout": 0.5})
    if not reachable:
        exp = exp.with_overrides({"train.max_epochs": 4})
    prep = prepare(exp)
    ds = prep.dataset
    res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds[:2], metric="accuracy", seed=0, keep_estimators=True,
                         engine=engine)
    for f, fold in zip(res.folds, prep.folds):
        assert f.ok and f.estimator is not None
        curve = [row["curve_fit_loss"] for row in f.history]
        assert len(curve) == f.epochs_run
        # the recorded loss is the eval-mode data loss on the fitted rows (dropout 0.5 would change it)
        assert curve[-1] == pytest.approx(f.estimator.loss(ds.X[fold.train], ds.y[fold.train]), rel=1e-5)
        assert f.train_loss == pytest.approx(curve[-1], rel=1e-5)
        if reachable:
            assert f.stop_reached == 1 and f.stop_epoch == f.epochs_run < 40
            assert curve[-1] <= value and all(c > value for c in curve[:-1])
            assert f.flat_metrics()["stop_reached"] == 1.0 and f.flat_metrics()["stop_epoch"] == f.epochs_run
        else:
            assert f.stop_reached == 0 and f.stop_epoch is None and f.epochs_run == 4
            assert "stop_epoch" not in f.flat_metrics() and f.flat_metrics()["stop_reached"] == 0.0
