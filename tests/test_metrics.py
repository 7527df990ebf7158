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
    assert s["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert s["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-12)
    assert s["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)


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
