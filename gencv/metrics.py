"""Scoring metrics: scikit-learn functions, each declaring its task, direction and input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn import metrics as skm

from gencv.errors import SpecError

__all__ = ["METRICS", "Metric", "metrics_for_task", "score_all"]


@dataclass(frozen=True)
class Metric:
    """A metric: `func(y_true, y_pred_or_proba)`, its task, direction and input kind."""

    name: str
    task: str  # "classification" | "regression"
    higher_is_better: bool
    needs_proba: bool
    func: Callable[..., float]

    @property
    def direction(self) -> str:
        """Optuna's direction for this metric."""
        return "maximize" if self.higher_is_better else "minimize"


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(skm.mean_squared_error(y, p)))


def _log_loss(y: np.ndarray, proba: np.ndarray, labels: Sequence[int]) -> float:
    return float(skm.log_loss(y, proba, labels=list(labels)))


def _roc_auc(y: np.ndarray, proba: np.ndarray, labels: Sequence[int]) -> float:
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")  # undefined on a single-class fold; recorded as missing
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    if len(present) < proba.shape[1]:
        return float("nan")  # one-vs-rest AUC undefined when a class is absent from the fold
    return float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=list(labels)))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", "classification", True, False, skm.accuracy_score),
        Metric("balanced_accuracy", "classification", True, False, skm.balanced_accuracy_score),
        Metric(
            "precision_macro", "classification", True, False,
            lambda y, p: skm.precision_score(y, p, average="macro", zero_division=0),
        ),
        Metric(
            "recall_macro", "classification", True, False,
            lambda y, p: skm.recall_score(y, p, average="macro", zero_division=0),
        ),
        Metric("f1_macro", "classification", True, False, lambda y, p: skm.f1_score(y, p, average="macro", zero_division=0)),
        Metric("log_loss", "classification", False, True, _log_loss),
        Metric("roc_auc", "classification", True, True, _roc_auc),
        Metric("rmse", "regression", False, False, _rmse),
        Metric("mae", "regression", False, False, skm.mean_absolute_error),
        Metric("r2", "regression", True, False, skm.r2_score),
    ]
}


def metrics_for_task(task: str) -> list[Metric]:
    """All metrics that apply to a task."""
    return [m for m in METRICS.values() if m.task == task]


def check_metric_for_task(name: str, task: str) -> Metric:
    """Return the metric, or raise SpecError if it does not fit the task."""
    m = METRICS[name]
    if m.task != task:
        allowed = ", ".join(x.name for x in metrics_for_task(task))
        raise SpecError(f"metric: got {name!r}, a {m.task} metric, but the data is a {task} task; use one of {allowed}")
    return m


def score_all(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, labels: Sequence[int] = ()
) -> dict[str, float]:
    """Every metric of the task on one set of predictions."""
    out: dict[str, float] = {}
    # Inputs come from our own predictions on validated data: skip sklearn's repeated
    # parameter validation and finiteness scans (they cost more than the metrics themselves).
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for m in metrics_for_task(task):
            if m.needs_proba:
                if proba is None:
                    continue
                out[m.name] = float(m.func(y_true, proba, labels))
            else:
                out[m.name] = float(m.func(y_true, y_pred))
    return out
