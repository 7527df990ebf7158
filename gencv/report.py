"""Reports: fold table, summary statistics with intervals, PNG plots, markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from gencv.cv import CVResult, curve_sample
from gencv.measures.config import is_diagnostic
from gencv.metrics import METRICS

__all__ = [
    "confusion_counts", "fold_table", "per_class_table", "plot_confusion_matrix",
    "plot_fold_scores", "plot_learning_curves", "plot_measures_vs_gap", "scatter_grid", "summarize",
    "summary_markdown", "summary_table", "value_bounds", "varying_measures",
]


def value_bounds(key: str) -> tuple[float, float]:
    """The values a flat metric key can take: `valid_accuracy` in [0, 1], `gap_accuracy` in [-1, 1],
    `train_loss` and `test_rmse` >= 0; unbounded (or unknown, such as measures) otherwise."""
    prefix, _, name = key.partition("_")
    if name == "loss" and prefix in ("train", "es", "valid", "test"):
        return (0.0, np.inf)
    metric = METRICS.get(name)
    if metric is None or prefix not in ("train", "es", "valid", "test", "gap"):
        return (-np.inf, np.inf)
    lo, hi = metric.bounds
    return (lo - hi, hi - lo) if prefix == "gap" else (lo, hi)


def summarize(values: Sequence[float], confidence: float = 0.95,
              bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict[str, float]:
    """Mean, sample std and a t-interval of the mean over folds (NaNs dropped), clipped to `bounds`
    (an accuracy interval never reaches past 1).

    The interval treats folds as independent, which they are not (training sets overlap):
    it is a descriptive spread, usually too narrow; see stats.corrected_ttest for comparisons.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
    lo, hi = bounds
    return {"mean": mean, "std": std, "ci_low": max(mean - half, lo), "ci_high": min(mean + half, hi), "n": n}


def fold_table(result: CVResult) -> pd.DataFrame:
    """One row per fold: primary train/valid/test score, gap, losses, epochs, status."""
    m = result.metric
    rows = []
    for f in result.folds:
        rows.append({
            "fold": f.index,
            "status": f.status,
            f"train_{m}": f.train_scores.get(m, np.nan),
            f"es_{m}": f.es_scores.get(m, np.nan),
            f"valid_{m}": f.valid_scores.get(m, np.nan),
            f"test_{m}": f.test_scores.get(m, np.nan),
            f"gap_{m}": f.gaps.get(m, np.nan),
            "train_loss": f.train_loss,
            "es_loss": f.es_loss,
            "valid_loss": f.valid_loss,
            "gap_loss": f.gaps.get("loss", np.nan),
            "epochs_run": f.epochs_run,
            "best_epoch": f.best_epoch,
            **({"stop_reached": f.stop_reached, "stop_epoch": f.stop_epoch} if f.stop_reached is not None else {}),
            "fit_seconds": round(f.fit_seconds, 3),
            "reason": f.reason,
            **{k: v for k, v in f.measures.items()},
        })
    return pd.DataFrame(rows)


def summary_table(result: CVResult) -> pd.DataFrame:
    """Per flat metric (every score, gap, loss and measure): mean, std, 95% interval, n folds."""
    keys: list[str] = []
    for f in result.ok_folds:
        for k in f.flat_metrics():
            if k not in keys and k not in ("fit_seconds",):
                keys.append(k)
    rows = [{"metric": k, **summarize(result.values(k), bounds=value_bounds(k))} for k in keys]
    return pd.DataFrame(rows, columns=["metric", "mean", "std", "ci_low", "ci_high", "n"])


def summary_metrics(result: CVResult) -> dict[str, float]:
    """Flat summary for the parent run: <metric>_mean, _std, _ci_low, _ci_high; plus fold counts."""
    out: dict[str, float] = {"n_folds": float(len(result.folds)), "n_failed_folds": float(result.n_failed)}
    for _, row in summary_table(result).iterrows():
        for stat in ("mean", "std", "ci_low", "ci_high"):
            if np.isfinite(row[stat]):
                out[f"{row['metric']}_{stat}"] = float(row[stat])
    return out


def summary_markdown(result: CVResult, *, title: str, test_scores: dict[str, float] | None = None,
                     notes: Sequence[str] = (), summary: pd.DataFrame | None = None) -> str:
    """A short markdown report: fold table, summary of the primary metric and gap, refit test score
    (`summary`: `summary_table(result)` when already made; leave-one-out's takes a second)."""
    m = result.metric
    direction = "higher" if METRICS[m].higher_is_better else "lower"
    lines = [f"# {title}", "", f"Primary metric: **{m}** ({direction} is better). Folds: {len(result.folds)}, "
             f"failed: {result.n_failed}.", ""]
    table = fold_table(result).drop(columns=["reason"])
    lines += [table.to_markdown(index=False, floatfmt=".4f"), ""]
    summ = summary_table(result) if summary is None else summary
    keep = summ[summ["metric"].isin([f"train_{m}", f"valid_{m}", f"test_{m}", f"gap_{m}", "gap_loss"]) |
                summ["metric"].isin(next(iter([f.measures.keys() for f in result.ok_folds]), []))]
    lines += ["## Summary over folds (mean, std, 95% t-interval)", "", keep.to_markdown(index=False, floatfmt=".4f"), ""]
    if test_scores:
        lines += ["## Refit on all non-test data, scored on the held-out test set", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in test_scores.items()] + [""]
    failed = [f for f in result.folds if not f.ok]
    if failed:
        lines += ["## Failed folds", ""] + [f"- fold {f.index}: {f.reason}" for f in failed] + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines.append("The interval treats folds as independent; overlapping training sets make it optimistic.")
    return "\n".join(lines)


def pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _at_epoch(history: Sequence[dict[str, float]], epoch: int, key: str) -> float:
    """The history's `key` at `epoch` (NaN when that epoch or key is missing)."""
    return next((float(r.get(key, np.nan)) for r in history if int(r.get("epoch", -1)) == epoch), np.nan)


def plot_learning_curves(result: CVResult, path: str | Path, *, title: str = "Learning curves",
                         max_legend_folds: int = 10, max_folds: int = 30) -> Path:
    """Train, early-stopping and held-out loss per epoch (left) and the held-out score (right), one colour
    per fold; a star marks each fold's best (early-stopping) epoch. One legend below both panels names
    the folds (up to `max_legend_folds`) and the line styles. Above `max_folds` folds (leave-one-out's
    hundreds), `max_legend_folds` evenly spaced folds are drawn, and the median over all folds in black."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    folds = [f for f in result.ok_folds if f.history]
    medians = len(folds) > max_folds
    if medians:
        _plot_medians(axes, folds)
        title = f"{title} ({max_legend_folds} of {len(folds)} folds; black: median of all)"
        folds = [folds[i] for i in curve_sample(len(folds), max_legend_folds)]
    fold_handles = []
    has_es = has_score = False
    for f in folds:
        ep = [r["epoch"] for r in f.history]
        line = axes[0].plot(ep, [r.get("curve_train_loss", np.nan) for r in f.history], label=f"fold {f.index}")[0]
        colour = line.get_color()
        fold_handles.append(line)
        if any("curve_es_loss" in r for r in f.history):
            has_es = True
            axes[0].plot(ep, [r.get("curve_es_loss", np.nan) for r in f.history], ":", color=colour, linewidth=1)
        axes[0].plot(ep, [r.get("curve_valid_loss", np.nan) for r in f.history], "--", color=colour)
        best = int(f.best_epoch or 0)
        if best > 0:  # the epoch whose weights were kept
            axes[0].plot([best], [_at_epoch(f.history, best, "curve_valid_loss")], "*", color=colour, markersize=11,
                         markeredgecolor="black", zorder=4)
        score_key = next((k for k in f.history[0] if k.startswith("curve_valid_") and k != "curve_valid_loss"), None)
        if score_key:
            has_score = True
            axes[1].plot(ep, [r.get(score_key, np.nan) for r in f.history], color=colour)
            if best > 0:
                axes[1].plot([best], [_at_epoch(f.history, best, score_key)], "*", color=colour, markersize=11,
                             markeredgecolor="black", zorder=4)
            axes[1].set_ylabel(score_key.removeprefix("curve_valid_") + " (held-out fold)")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[1].set_xlabel("epoch")
    axes[0].set_title(title)
    axes[1].set_title("Held-out score per epoch" if has_score else "(no held-out score recorded)")
    styles = [Line2D([], [], color="grey", label="train loss (fitted rows)")]
    if medians:
        styles.append(Line2D([], [], color="black", linewidth=2.5, label="median over all folds"))
    if has_es:
        styles.append(Line2D([], [], color="grey", linestyle=":", label="early-stopping split loss"))
    styles += [Line2D([], [], color="grey", linestyle="--", label="held-out fold loss"),
               Line2D([], [], color="grey", marker="*", linestyle="", markersize=11, markeredgecolor="black",
                      label="best epoch (early stopping)")]
    # Two rows under both panels: the line styles, then the folds' colours.
    fig.legend(handles=styles, loc="lower center", ncol=len(styles), fontsize=8, frameon=False)
    shown = fold_handles if len(fold_handles) <= max_legend_folds else []
    if shown:
        fig.legend(handles=shown, loc="lower center", bbox_to_anchor=(0.5, 0.055), ncol=len(shown), fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, 0.12 if shown else 0.07, 1, 1))
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_medians(axes: Any, folds: Sequence[Any]) -> None:
    """The median over `folds` of the train and held-out loss (left) and the held-out score (right), per epoch."""
    keys = ("curve_train_loss", "curve_valid_loss")
    score_key = next((k for k in folds[0].history[0] if k.startswith("curve_valid_") and k != "curve_valid_loss"),
                     None)
    epochs = sorted({int(r["epoch"]) for f in folds for r in f.history})
    at = {k: {e: [] for e in epochs} for k in (*keys, score_key) if k}
    for f in folds:
        for r in f.history:
            for k, per in at.items():
                if k in r and np.isfinite(r[k]):
                    per[int(r["epoch"])].append(float(r[k]))
    for k, per in at.items():
        ax, style = (axes[1], "-") if k == score_key else (axes[0], "--" if k == "curve_valid_loss" else "-")
        ax.plot(epochs, [np.median(per[e]) if per[e] else np.nan for e in epochs], style, color="black",
                linewidth=2.5, zorder=5)


def plot_fold_scores(result: CVResult, path: str | Path) -> Path:
    """Train vs held-out primary score per fold, with the gap drawn between them."""
    plt = pyplot()
    m = result.metric
    folds = result.ok_folds
    x = np.arange(len(folds))
    tr = [f.train_scores.get(m, np.nan) for f in folds]
    va = [f.valid_scores.get(m, np.nan) for f in folds]
    fig, ax = plt.subplots(figsize=(min(max(5, 0.5 * len(folds) + 3), 14), 4))  # leave-one-out: 14 in, not 230
    ax.vlines(x, np.minimum(tr, va), np.maximum(tr, va), color="grey", alpha=0.6, label="gap")
    ax.scatter(x, tr, label=f"train {m}", zorder=3)
    ax.scatter(x, va, label=f"held-out {m}", zorder=3)
    if any(f.test_scores for f in folds):
        ax.scatter(x, [f.test_scores.get(m, np.nan) for f in folds], marker="x", label=f"test {m}", zorder=3)
    if len(folds) <= 30:
        ax.set_xticks(x, [str(f.index) for f in folds])
    ax.set_xlabel("fold" if len(folds) <= 30 else "fold (position among the finished folds)")
    ax.set_ylabel(m)
    ax.set_title(f"Fold scores and generalization gap ({m})")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def varying_measures(rows: Sequence[Mapping[str, float]]) -> list[str]:
    """Measures worth a scatter: finite in every row, not bookkeeping, and not the same in all rows.

    `rows` are per-fold (or per-trial) measure dicts; the order is the first row's.
    """
    if not rows:
        return []
    names = []
    for k in rows[0]:
        if is_diagnostic(k):  # iteration counts, standard errors, flags: not measures of the network
            continue
        v = np.array([r.get(k, np.nan) for r in rows], dtype=float)
        if np.all(np.isfinite(v)) and np.ptp(v) > 1e-12 * max(1.0, float(np.abs(v).max())):
            names.append(k)
    return names


def scatter_grid(xs: Mapping[str, Sequence[float]], y: Sequence[float], path: str | Path, *, ylabel: str,
                 title: str, titles: Mapping[str, str] | None = None, cols: int = 4) -> Path:
    """One scatter per entry of `xs` against `y`, in a grid of `cols` columns and as many rows as needed."""
    plt = pyplot()
    names = list(xs)
    cols = min(cols, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.6), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.scatter(xs[name], y, s=16)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if titles and name in titles:
            ax.set_title(titles[name], fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9 if cols <= 2 else 12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.0 * rows + 0.6)))  # room for the title
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_measures_vs_gap(result: CVResult, path: str | Path) -> list[str]:
    """One scatter per measure that varies over folds against the fold's generalization gap (primary
    metric), in a grid that grows with their number; returns the measures plotted (none: no file)."""
    folds = [f for f in result.ok_folds if f.measures]
    names = varying_measures([f.measures for f in folds])
    if not names:
        return []
    m = result.metric
    scatter_grid({k: [f.measures[k] for f in folds] for k in names}, [f.gaps.get(m, np.nan) for f in folds], path,
                 ylabel=f"gap ({m})", title=f"Measures vs generalization gap, one point per fold ({len(folds)} folds)")
    return names


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (sklearn's `precision_recall_fscore_support`), by label.

    `y_true`, `y_pred` are class codes 0..len(classes)-1; a class never predicted gets precision 0.
    """
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return pd.DataFrame({"class": [str(c) for c in classes], "precision": p, "recall": r, "f1": f, "support": s})


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts (rows: true class code, columns: predicted) and the same divided by row totals."""
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    totals = counts.sum(axis=1, keepdims=True)
    return counts, np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], path: str | Path,
                          *, title: str = "Confusion matrix, held-out folds") -> Path:
    """Counts and row-normalised rates (recall per true class) in one heatmap, class labels on the axes."""
    counts, rates = confusion_counts(y_true, y_pred, len(classes))
    k = len(classes)
    plt = pyplot()
    side = min(max(4.5, 0.7 * k + 2.5), 16)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="rate (row-normalised)")
    names = [str(c) for c in classes]
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if
                  max(map(len, names)) > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    fontsize = 10 if k <= 10 else max(5, 10 - (k - 10) // 3)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=fontsize,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(f"{title} (n={int(counts.sum())})\ncell: count and share of the true class")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
