from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from gencv.errors import SpecError
from gencv.metrics import METRICS, check_metric_for_task, score_all


def test_classification_scores_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    pred = proba.argmax(1)
    s = score_all("classification", y, pred, proba, [0, 1, 2])
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert s["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"), abs=1e-12)
    assert s["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"), abs=1e-12)
    assert s["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert s["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-12)
    assert s["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)


def test_macro_scores_when_a_class_is_never_predicted() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 1, 1])  # class 2 never predicted: its precision is 0 (zero_division=0)
    s = score_all("classification", y, pred, None, [0, 1, 2])
    assert s["precision_macro"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3, abs=1e-12)
    assert s["recall_macro"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-12)
    assert s["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert "roc_auc" not in s and "log_loss" not in s  # no probabilities, no probability metrics


def test_binary_auc_uses_positive_column_and_regression_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    s = score_all("classification", y, proba.argmax(1), proba, [0, 1])
    assert s["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    yt, yp = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0])
    r = score_all("regression", yt, yp, None)
    assert r["rmse"] == pytest.approx(np.sqrt(np.mean((yt - yp) ** 2)), abs=1e-12)
    assert r["mae"] == pytest.approx(0.5, abs=1e-12)
    assert r["r2"] == pytest.approx(skm.r2_score(yt, yp), abs=1e-12)


def test_directions_and_task_check() -> None:
    assert METRICS["accuracy"].direction == "maximize"
    assert METRICS["rmse"].direction == "minimize"
    assert METRICS["log_loss"].higher_is_better is False
    with pytest.raises(SpecError, match="metric: got 'rmse', a regression metric"):
        check_metric_for_task("rmse", "classification")


@pytest.mark.parametrize("seed", range(12))
def test_fast_curve_metrics_equal_sklearn(seed: int) -> None:
    # The numpy versions used per epoch give sklearn's numbers, edge cases included.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    y = rng.integers(0, 4, n)
    proba = rng.dirichlet(np.ones(4) * 0.3, n)
    proba[0] = [1.0, 0.0, 0.0, 0.0]  # an exact 0/1 probability: both clip it the same way
    pred = proba.argmax(1) if seed % 2 else np.full(n, 3)  # odd seeds: a class predicted that may be absent
    labels = [0, 1, 2, 3]
    fast = {k: m.fast for k, m in METRICS.items() if m.fast is not None}
    assert set(fast) == set(METRICS)  # every metric has its curve version
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fast["accuracy"](y, pred) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
        assert fast["balanced_accuracy"](y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
        assert fast["log_loss"](y, proba, labels) == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-10)
        # macro precision/recall/F1 over the labels of y_true and y_pred, zero_division=0
        for name, ref in (("precision_macro", skm.precision_score), ("recall_macro", skm.recall_score),
                          ("f1_macro", skm.f1_score)):
            assert fast[name](y, pred) == pytest.approx(ref(y, pred, average="macro", zero_division=0), abs=1e-12)
        # ROC AUC with ties (rounded scores): one-vs-rest macro, and binary on the positive column
        tied = np.round(proba, 1)
        tied = tied / tied.sum(1, keepdims=True)
        if len(np.unique(y)) == 4:
            assert fast["roc_auc"](y, tied, labels) == pytest.approx(
                skm.roc_auc_score(y, tied, multi_class="ovr", labels=labels), abs=1e-12)
        else:
            assert np.isnan(fast["roc_auc"](y, tied, labels))  # a class absent: one-vs-rest undefined
        yb = (y > 1).astype(int)
        pb = np.stack([1 - tied[:, 3], tied[:, 3]], 1)
        if 0 < yb.sum() < n:
            assert fast["roc_auc"](yb, pb, [0, 1]) == pytest.approx(skm.roc_auc_score(yb, pb[:, 1]), abs=1e-12)
        yt, yp = rng.normal(size=n), rng.normal(size=n)
        for name, ref in (("rmse", lambda a, b: np.sqrt(skm.mean_squared_error(a, b))),
                          ("mae", skm.mean_absolute_error), ("r2", skm.r2_score)):
            assert fast[name](yt, yp) == pytest.approx(ref(yt, yp), rel=1e-10, abs=1e-12), name
        const = np.full(n, 2.0)
        assert fast["r2"](const, const) == skm.r2_score(const, const) == 1.0
        assert fast["r2"](const, yp) == skm.r2_score(const, yp) == 0.0


def test_auc_is_missing_where_one_vs_rest_is_undefined() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    auc = METRICS["roc_auc"].fast
    assert auc is not None
    assert np.isnan(auc(np.array([0, 1, 0, 1]), proba, [0, 1, 2]))  # class 2 absent from the fold
    assert np.isnan(auc(np.array([1, 1, 1, 1]), proba[:, :2], [0, 1]))  # a single class
    assert auc(np.array([0, 1, 0, 1]), proba[:, :2], [0, 1]) == 1.0  # binary: the positive column ranks them


@pytest.mark.parametrize(("pred", "expected"), [(1, 1.0), (0, 0.0)])
def test_one_held_out_row_is_scored_without_a_warning_per_fold(pred: int, expected: float) -> None:
    import warnings

    from gencv.metrics import score_all

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # leave-one-out scores hundreds of one-row folds
        out = score_all("classification", np.array([1]), np.array([pred]), np.array([[1 - pred, pred]], float), [0, 1])
    assert out["accuracy"] == out["balanced_accuracy"] == expected
