"""Scoring metrics: scikit-learn functions, each declaring its task, direction and input."""

from __future__ import annotations

import warnings
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
    bounds: tuple[float, float] = (0.0, 1.0)  # the values the metric can take
    # The same number in plain numpy, for per-epoch learning curves, where sklearn's input checks
    # cost more than the metric (tests hold it to sklearn's value); None: use `func`. Reported
    # scores (`score_all`) always come from the scikit-learn function `func`.
    fast: Callable[..., float] | None = None

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


def _fast_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(y == p))


def _fast_balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    # mean recall over the classes present in y_true (sklearn drops classes seen only in y_pred)
    classes, y_codes = np.unique(y, return_inverse=True)
    hits = np.bincount(y_codes, weights=(y == p).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / np.bincount(y_codes, minlength=len(classes))))


def _fast_prf(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """Macro precision, recall and F1 (zero_division=0) over the labels in y_true or y_pred, as sklearn averages them."""
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    yc, pc = codes[:n], codes[n:]
    tp = np.bincount(yc[yc == pc], minlength=k).astype(np.float64)
    true_n = np.bincount(yc, minlength=k).astype(np.float64)
    pred_n = np.bincount(pc, minlength=k).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(true_n > 0, tp / true_n, 0.0)
        f1 = np.where(true_n + pred_n > 0, 2 * tp / (true_n + pred_n), 0.0)  # = 2tp / (2tp + fp + fn)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: ties count one half, the same number as the trapezoidal ROC area."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(np.asarray(score, np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _fast_roc_auc(y: np.ndarray, proba: np.ndarray, labels: Sequence[int]) -> float:
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return _binary_auc(y == present[-1], proba[:, 1])
    if len(present) < proba.shape[1]:
        return float("nan")
    # one-vs-rest, macro: the unweighted mean over classes (column j of proba is labels[j])
    return float(np.mean([_binary_auc(y == c, proba[:, j]) for j, c in enumerate(labels)]))


def _fast_rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, np.float64) - p) ** 2)))


def _fast_mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, np.float64) - p)))


def _fast_r2(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, np.float64)
    if len(y) < 2:
        return float("nan")
    ss_res, ss_tot = float(np.sum((y - p) ** 2)), float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def _fast_log_loss(y: np.ndarray, proba: np.ndarray, labels: Sequence[int]) -> float:
    eps = np.finfo(proba.dtype).eps
    picked = np.clip(proba, eps, 1 - eps)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(picked)))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", "classification", True, False, skm.accuracy_score, fast=_fast_accuracy),
        Metric("balanced_accuracy", "classification", True, False, skm.balanced_accuracy_score,
               fast=_fast_balanced_accuracy),
        Metric(
            "precision_macro", "classification", True, False,
            lambda y, p: skm.precision_score(y, p, average="macro", zero_division=0),
            fast=lambda y, p: _fast_prf(y, p)[0],
        ),
        Metric(
            "recall_macro", "classification", True, False,
            lambda y, p: skm.recall_score(y, p, average="macro", zero_division=0),
            fast=lambda y, p: _fast_prf(y, p)[1],
        ),
        Metric("f1_macro", "classification", True, False, lambda y, p: skm.f1_score(y, p, average="macro", zero_division=0),
               fast=lambda y, p: _fast_prf(y, p)[2]),
        Metric("log_loss", "classification", False, True, _log_loss, (0.0, np.inf), fast=_fast_log_loss),
        Metric("roc_auc", "classification", True, True, _roc_auc, fast=_fast_roc_auc),
        Metric("rmse", "regression", False, False, _rmse, (0.0, np.inf), fast=_fast_rmse),
        Metric("mae", "regression", False, False, skm.mean_absolute_error, (0.0, np.inf), fast=_fast_mae),
        Metric("r2", "regression", True, False, skm.r2_score, (-np.inf, 1.0), fast=_fast_r2),
    ]
}


_PRF_INDEX = {"precision_macro": 0, "recall_macro": 1, "f1_macro": 2}


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
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True), warnings.catch_warnings():
        # one held-out row (leave-one-out): balanced accuracy's confusion matrix has one or two labels, and the
        # score (the recall of the true class) is still right; sklearn's warnings would print once per fold
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        prf: tuple[float, float, float] | None = None
        for m in metrics_for_task(task):
            if m.name in _PRF_INDEX:  # the three macro scores from one pass (what each score function does inside)
                if prf is None:
                    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
                    prf = (float(p), float(r), float(f))
                out[m.name] = prf[_PRF_INDEX[m.name]]
            elif m.needs_proba:
                if proba is None:
                    continue
                out[m.name] = float(m.func(y_true, proba, labels))
            else:
                out[m.name] = float(m.func(y_true, y_pred))
    return out
