from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gencv.cv import CVResult, FoldResult
from gencv.report import (
    confusion_counts,
    fold_table,
    per_class_table,
    plot_confusion_matrix,
    summarize,
    summary_metrics,
    summary_table,
    value_bounds,
)


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


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_confusion_counts_and_per_class_table_match_sklearn(n_classes: int, tmp_path: Path) -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(n_classes)
    y_true = rng.integers(0, n_classes, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n_classes, 200))
    y_pred[y_pred == n_classes - 1] = 0  # a class never predicted: precision 0, not a warning or NaN
    classes = [f"class {c}" for c in range(n_classes)]
    counts, rates = confusion_counts(y_true, y_pred, n_classes)
    np.testing.assert_array_equal(counts, confusion_matrix(y_true, y_pred, labels=list(range(n_classes))))
    np.testing.assert_allclose(rates.sum(axis=1), 1.0, atol=1e-12)
    table = per_class_table(y_true, y_pred, classes)
    ref = precision_recall_fscore_support(y_true, y_pred, labels=list(range(n_classes)), zero_division=0)
    assert list(table["class"]) == classes
    for col, values in zip(("precision", "recall", "f1", "support"), ref):
        np.testing.assert_allclose(table[col], values, atol=1e-12, err_msg=col)
    assert plot_confusion_matrix(y_true, y_pred, classes, tmp_path / "cm.png").stat().st_size > 0


def _measured_fold(i: int, n_measures: int) -> FoldResult:
    f = _fold(i, 0.9 + 0.01 * i, 0.8)
    f.history = [{"epoch": e, "curve_train_loss": 1 / e, "curve_es_loss": 1.1 / e + 0.01 * e,
                  "curve_valid_loss": 1.2 / e, "curve_valid_accuracy": 0.5 + 0.04 * e} for e in range(1, 6)]
    f.best_epoch = 3 + i % 2
    f.measures = {f"varies_{k}": float(k * i + i * i) for k in range(n_measures)}
    f.measures |= {"norm_l2": 5.0 + i, "dist_from_init": 2.0 + 0.3 * i,
                   "hessian_top_converged": 1.0, "constant": 3.0,  # the same in every fold
                   "hessian_trace_se": 0.1 * i, "hessian_top_iterations": float(i), "pacbayes_evals": 30.0 + i}
    return f


def test_measures_vs_gap_plots_every_varying_measure_and_no_constant_or_bookkeeping(tmp_path: Path) -> None:
    from gencv.report import plot_measures_vs_gap, varying_measures

    result = CVResult(folds=[_measured_fold(i, 15) for i in range(4)], metric="accuracy", task="classification", seed=0)
    plotted = plot_measures_vs_gap(result, tmp_path / "m.png")
    assert plotted == [f"varies_{k}" for k in range(15)] + ["norm_l2", "dist_from_init"]  # 17 panels: no cap at 12
    assert (tmp_path / "m.png").stat().st_size > 0
    assert varying_measures([{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": float("nan")}]) == []  # constant; not finite
    flat = CVResult(folds=[_fold(i, 0.9, 0.8) for i in range(3)], metric="accuracy", task="classification", seed=0)
    assert plot_measures_vs_gap(flat, tmp_path / "none.png") == [] and not (tmp_path / "none.png").exists()


def test_learning_curves_draw_one_fold_or_many(tmp_path: Path) -> None:
    from gencv.report import plot_learning_curves

    folds = [_measured_fold(i, 1) for i in range(12)]  # more folds than the legend names
    for n in (1, 12):
        result = CVResult(folds=folds[:n], metric="accuracy", task="classification", seed=0)
        assert plot_learning_curves(result, tmp_path / f"lc{n}.png", title=f"{n} folds").stat().st_size > 0


def test_importance_plot_needs_enough_completed_trials(tmp_path: Path) -> None:
    import optuna

    from gencv.tuning.report import MIN_IMPORTANCE_TRIALS, study_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("a", -1, 1) - 0.2) ** 2 + 0.1 * t.suggest_float("b", -1, 1), n_trials=3)
    names = {p.name for p in study_plots(study, tmp_path / "three")}
    assert MIN_IMPORTANCE_TRIALS == 10 and names == {"optimization_history.png", "slice.png"}
    names = {p.name for p in study_plots(study, tmp_path / "low_bar", min_importance_trials=3)}
    assert "param_importances.png" in names


def test_trial_measure_plot_skips_constant_measures(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import pandas as pd

    from gencv.tuning.report import plot_measures_vs_gap_trials

    records = [SimpleNamespace(measures={"norm_l2": 1.0 + i, "flat": 2.0, "dist_from_init": 0.5 * i * i},
                               gap=0.1 * i, params={}) for i in range(4)]
    report = pd.DataFrame({"measure": ["dist_from_init", "flat", "norm_l2"], "tau": [1.0, np.nan, 1.0]})
    assert plot_measures_vs_gap_trials(records, report, tmp_path / "t.png", "accuracy") == ["norm_l2", "dist_from_init"]
    assert (tmp_path / "t.png").stat().st_size > 0
