from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gencv.cv import CVResult, FoldResult
from gencv.report import fold_table, summarize, summary_metrics, summary_table, value_bounds


def _fold(i: int, train: float, valid: float, status: str = "ok") -> FoldResult:
    return FoldResult(index=i, seed=i, n_train=40, n_valid=10, status=status,
                      reason="" if status == "ok" else "loss became nan at epoch 3",
                      train_scores={"accuracy": train}, valid_scores={"accuracy": valid},
                      gaps={"accuracy": train - valid, "loss": 0.1 * i},
                      train_loss=0.2, valid_loss=0.2 + 0.1 * i, epochs_run=5, best_epoch=4)


def test_summarize_is_the_t_interval_of_the_mean() -> None:
    v = [0.8, 0.85, 0.9, 0.7, 0.75]
    s = summarize(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert s["mean"] == pytest.approx(0.8, abs=1e-12)
    assert s["std"] == pytest.approx(np.std(v, ddof=1), abs=1e-12)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert s["n"] == 5
    nan_dropped = summarize([0.5, float("nan"), 0.7])
    assert nan_dropped["n"] == 2 and nan_dropped["mean"] == pytest.approx(0.6)
    assert summarize([])["n"] == 0 and np.isnan(summarize([])["mean"])


def test_intervals_stay_inside_what_the_metric_can_take() -> None:
    s = summarize([1.0, 1.0, 0.9, 1.0, 1.0], bounds=value_bounds("test_accuracy"))
    assert s["ci_high"] == 1.0 and s["ci_low"] < s["mean"] < 1.0
    assert value_bounds("valid_accuracy") == value_bounds("es_accuracy") == (0.0, 1.0)
    assert value_bounds("es_loss") == (0.0, np.inf)
    assert value_bounds("gap_accuracy") == (-1.0, 1.0)
    assert value_bounds("train_loss") == (0.0, np.inf)
    assert value_bounds("test_rmse") == (0.0, np.inf)
    assert value_bounds("valid_r2") == (-np.inf, 1.0)
    assert value_bounds("gap_loss") == (-np.inf, np.inf)
    assert value_bounds("hessian_top") == (-np.inf, np.inf)


def test_tables_summarise_only_the_successful_folds() -> None:
    result = CVResult([_fold(0, 0.9, 0.8), _fold(1, 1.0, 0.7), _fold(2, 0.5, 0.4, status="failed")],
                      metric="accuracy", task="classification", seed=0)
    table = fold_table(result)
    assert table["status"].tolist() == ["ok", "ok", "failed"]
    assert table["gap_accuracy"].tolist() == pytest.approx([0.1, 0.3, 0.1])
    summ = summary_table(result).set_index("metric")
    assert summ.loc["valid_accuracy", "mean"] == pytest.approx(0.75)
    assert summ.loc["gap_accuracy", "mean"] == pytest.approx(0.2)
    assert summ.loc["gap_accuracy", "n"] == 2
    assert summ.loc["train_accuracy", "ci_high"] == 1.0  # 0.95 +- 0.64 clipped
    flat = summary_metrics(result)
    assert flat["n_folds"] == 3 and flat["n_failed_folds"] == 1
    assert flat["valid_accuracy_mean"] == pytest.approx(0.75)
