"""The pruning sweep's table, plots, markdown and MLflow runs (prune run -> one run per method and level -> folds)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gencv.cv import FoldResult
from gencv.metrics import METRICS
from gencv.pruning.finetune import TIMING_WARMUP
from gencv.spec import Experiment
from gencv.studies.prune import (
    BASELINE,
    PruneOutcome,
    PruneSettings,
    compare_with_baseline,
    level_summary,
)
from gencv.tracking import NullTracker, Tracker

__all__ = ["log_prune", "measure_columns", "plot_prune", "prune_markdown", "summarize_prune"]

Records = dict[tuple[str, float], list[tuple[FoldResult, dict[str, float]]]]
_FACTS = ("sparsity", "n_params", "n_params_nonzero", "units_removed_fraction", "finetune_epochs_run",
          "infer_ms_b1", "infer_ms_b1_unpruned", "infer_ms_b256", "infer_ms_b256_unpruned", "infer_repeats")


def _measure_keys(records: Records) -> list[str]:
    """The measures the folds report (e.g. hessian_top_1), not their diagnostics (iterations, probes, ...)."""
    from gencv.measures.config import is_diagnostic

    keys: set[str] = set()
    for recs in records.values():
        for r, _ in recs:
            keys |= {k for k in r.measures if not is_diagnostic(k)}
    return sorted(keys)


def summarize_prune(exp: Experiment, settings: PruneSettings, records: Records, digest: str,
                    notes: list[str]) -> PruneOutcome:
    """One row per (variant, level): means and intervals, the pruning facts, the tests against level 0."""
    metric = exp.metric
    tests, more = compare_with_baseline(records, metric, digest)
    notes = list(notes) + more
    rows, fold_rows = [], []
    measures = _measure_keys(records)
    for (label, level), recs in records.items():
        row: dict[str, Any] = {"method": label, "level": level, "folds_ok": sum(r.ok for r, _ in recs)}
        for key in (f"valid_{metric}", f"train_{metric}", f"gap_{metric}", "gap_loss", f"test_{metric}", *measures):
            s = level_summary(recs, key)
            row |= {f"{key}_mean": s["mean"], f"{key}_ci_low": s["ci_low"], f"{key}_ci_high": s["ci_high"]}
        for key in _FACTS:
            vals = [f[key] for r, f in recs if r.ok and key in f]
            if vals:
                row[f"{key}_mean"] = float(np.mean(vals))
        t = tests.get((label, level))
        if t is not None:
            pair, p_holm = t
            row |= {"diff_vs_baseline": pair.mean_diff, "p_corrected": pair.corrected_p, "p_holm": p_holm,
                    "P_better": pair.p_a_better, "P_equivalent": pair.p_equivalent, "P_worse": pair.p_b_better}
        rows.append(row)
        for r, f in recs:
            fold_rows.append({"method": label, "level": level, "fold": r.index, "status": r.status,
                              **r.flat_metrics(), **f})
    return PruneOutcome(exp, settings, pd.DataFrame(fold_rows), pd.DataFrame(rows), notes=notes)


def _lines(outcome: PruneOutcome) -> list[str]:
    return [label for label, _, _ in outcome.settings.variants]


def _points(outcome: PruneOutcome, label: str) -> pd.DataFrame:
    """The variant's rows with the baseline as its level-0 point."""
    t = outcome.table
    return pd.concat([t[t["method"] == BASELINE], t[t["method"] == label]]).sort_values("level")


def plot_prune(outcome: PruneOutcome, directory: Path) -> list[Path]:
    """Held-out score, gap and each measure against sparsity: one line per method, 95% intervals, fold points."""
    from gencv.report import pyplot

    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    metric = outcome.experiment.metric
    measured = measure_columns(outcome.table)  # hessian_top_1 first when measured, then up to 3 more
    keys = [f"valid_{metric}", f"gap_{metric}"] + sorted(measured, key=lambda k: k != "hessian_top_1")[:4]
    levels = [0.0, *outcome.settings.levels]
    x_of = {lv: i for i, lv in enumerate(levels)}  # even spacing: 0.9 and 0.95 stay apart
    cols = min(3, len(keys))
    rows = int(np.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.9 * rows), squeeze=False)
    lines = _lines(outcome)
    width = 0.3
    for ax, key in zip(axes.ravel(), keys):
        for j, label in enumerate(lines):
            off = (j - (len(lines) - 1) / 2) * width / max(1, len(lines) - 1) if len(lines) > 1 else 0.0
            pts = _points(outcome, label)
            x = np.array([x_of[lv] for lv in pts["level"]]) + off
            mean = pts[f"{key}_mean"].to_numpy(dtype=float)
            lo = np.nan_to_num(mean - pts[f"{key}_ci_low"].to_numpy(dtype=float))
            hi = np.nan_to_num(pts[f"{key}_ci_high"].to_numpy(dtype=float) - mean)
            ax.errorbar(x, mean, yerr=[lo, hi], marker="o", ms=4, capsize=3, label=label, color=f"C{j}", zorder=3)
            f = outcome.folds
            sub = f[(f["method"] == label) | (f["method"] == BASELINE)] if key in f else f.iloc[0:0]
            if len(sub):
                ax.scatter(np.array([x_of[lv] for lv in sub["level"]]) + off, sub[key], s=8, color=f"C{j}",
                           alpha=0.35, zorder=2)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"{lv:g}" for lv in levels])
        ax.set_xlabel("sparsity level (fraction of weights / units removed)", fontsize=8)
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    for ax in axes.ravel()[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"{outcome.experiment.name}: pruning sweep (points: folds; bars: mean and 95% interval; level 0: "
                 "unpruned, fine-tuned equally)", fontsize=10)
    fig.tight_layout()
    path = directory / "prune_levels.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def measure_columns(table: pd.DataFrame) -> list[str]:
    """The measures summarized in a sweep's table (`KEY_mean` columns besides scores, gaps and pruning facts)."""
    skip = ("valid_", "train_", "gap_", "test_", "es_")
    return [c.removesuffix("_ci_low") for c in table.columns if c.endswith("_ci_low") and not c.startswith(skip)]


def prune_markdown(outcome: PruneOutcome) -> str:
    """The table, what was compared how, and the notes, as markdown (MLflow artifact)."""
    metric = outcome.experiment.metric
    s = outcome.settings
    direction = "higher" if METRICS[metric].higher_is_better else "lower"
    head = (f"Methods {', '.join(s.methods)}; levels {', '.join(f'{v:g}' for v in s.levels)}; fine-tuning "
             f"{s.epochs(outcome.experiment)} epoch(s) per round, {s.iterative} round(s); OBD Hessian diagonal "
             f"{'exact' if s.hessian_probes == 0 else f'from {s.hessian_probes} Rademacher probes'}. Metric {metric} "
             f"({direction} is better). Each (method, level) is compared with the unpruned network fine-tuned for "
             "the same epochs, on the same folds: corrected resampled t-test (p Holm-corrected across methods and "
             "levels) and Bayesian correlated t-test (P better / equivalent / worse, ROPE 0.01).")
    if "infer_repeats_mean" in outcome.table:
        head += (f" Inference times (neuron, channel): median ms per forward pass over "
                 f"{outcome.table['infer_repeats_mean'].max():.0f} timed passes after {TIMING_WARMUP} untimed ones, "
                 "one CPU thread, the shrunk and the unpruned network timed in turns.")
    lines = [f"# Pruning sweep {outcome.experiment.name}", "", head, ""]
    cols = ["method", "level", "sparsity_mean", "n_params_mean", f"valid_{metric}_mean", f"gap_{metric}_mean",
            f"test_{metric}_mean", "diff_vs_baseline", "p_holm", "P_better", "P_equivalent", "P_worse",
            "infer_ms_b1_mean", "infer_ms_b1_unpruned_mean", "infer_ms_b256_mean", "infer_ms_b256_unpruned_mean"]
    cols += [f"{k}_mean" for k in measure_columns(outcome.table)]
    table = outcome.table[[c for c in cols if c in outcome.table]]
    lines.append(table.to_markdown(index=False, floatfmt=".4g"))
    lines += [""] + [f"- note: {n}" for n in outcome.notes]
    return "\n".join(lines) + "\n"


def log_prune(tracker: Tracker, parent: str, outcome: PruneOutcome, records: Records, tags: dict[str, str]) -> None:
    """A run per (method, level) with its fold runs below it, then the parent's table, plots and summary.

    `tags`: the runs' reproducibility tags (`runner.run_tags`, with the folds digest): a (method, level) run
    is a `cv` run, so `gencv compare` can pair it with any run on the same folds.
    """
    if isinstance(tracker, NullTracker):
        return
    exp = outcome.experiment
    for _, row in outcome.table.iterrows():
        label, level = row["method"], float(row["level"])
        run = tracker.start_run(exp.name, f"{label}@{level:g}", parent=parent, tags={
            **tags, "gencv.kind": "cv", "gencv.prune_method": label, "gencv.prune_level": f"{level:g}"})
        tracker.log_params(run, {"prune.method": label, "prune.level": level, "metric": exp.metric})
        tracker.log_metrics(run, {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.floating))
                                  and not isinstance(v, bool) and np.isfinite(v)})
        for res, facts in records[(label, level)]:
            fold_run = tracker.start_run(exp.name, f"fold-{res.index}", parent=run, tags={
                "gencv.kind": "fold", "gencv.fold": str(res.index), "gencv.seed": str(res.seed),
                "gencv.status": res.status})
            tracker.log_all(fold_run, params={"fold": res.index, "n_train": res.n_train, "n_fit": res.n_fit,
                                              "n_valid": res.n_valid},
                            metrics={**res.flat_metrics(), **{k: float(v) for k, v in facts.items()}})
            tracker.end_run(fold_run, "FINISHED" if res.ok else "FAILED")
        tracker.end_run(run, "FINISHED")
    metrics = {}
    for _, row in outcome.table.iterrows():
        for key in (f"valid_{exp.metric}_mean", f"gap_{exp.metric}_mean", "p_holm"):
            v = row.get(key)
            if v is not None and np.isfinite(v):
                metrics[f"{row['method']}_{row['level']:g}_{key}".replace("+", "_")] = float(v)
    tracker.log_metrics(parent, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        outcome.table.to_csv(d / "prune_levels.csv", index=False)
        outcome.folds.to_csv(d / "prune_folds.csv", index=False)
        for p in (d / "prune_levels.csv", d / "prune_folds.csv"):
            tracker.log_artifact(parent, p)
        for path in plot_prune(outcome, d / "plots"):
            tracker.log_artifact(parent, path, "plots")
        (d / "summary.md").write_text(prune_markdown(outcome))
        tracker.log_artifact(parent, d / "summary.md")
        tracker.log_text(parent, json.dumps(outcome.notes), "notes.json")
