"""Study reports: Optuna plots as PNG, the measure-vs-gap Kendall table across trials, a scatter plot."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gencv.stats import granulated_kendall, kendall_tau
from gencv.tuning.space import Dimension

__all__ = ["MIN_IMPORTANCE_TRIALS", "measure_gap_report", "plot_measures_vs_gap_trials", "study_plots"]

log = logging.getLogger(__name__)

#: fewest completed trials a parameter-importance plot is drawn from: below it, fANOVA's importances
#: are mostly noise (with 3 trials any ranking is possible)
MIN_IMPORTANCE_TRIALS = 10


def study_plots(study: Any, out_dir: Path, *, min_importance_trials: int = MIN_IMPORTANCE_TRIALS) -> list[Path]:
    """Optimization history, parameter importances and slice plots (matplotlib PNG); skips what cannot be drawn.

    The importance plot says how many completed trials it rests on, and is skipped (logged) below
    `min_importance_trials`.
    """
    from gencv.report import pyplot

    plt = pyplot()
    import optuna
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    for name, fn in (("optimization_history", ovm.plot_optimization_history),
                     ("param_importances", ovm.plot_param_importances),
                     ("slice", ovm.plot_slice)):
        if name == "param_importances" and n_complete < min_importance_trials:
            log.info("study plot param_importances skipped: %d completed trial(s), fewer than the %d it needs",
                     n_complete, min_importance_trials)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            first = np.ravel(np.asarray(ax, dtype=object))[0]
            fig = first.figure
            if name == "param_importances":
                first.set_title(f"Hyperparameter importances (fANOVA), from {n_complete} completed trials", loc="left")
            fig.set_size_inches(max(fig.get_size_inches()[0], 6.0), max(fig.get_size_inches()[1], 4.0))
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
        except Exception as exc:  # e.g. importances need >= 2 completed trials with varying params
            log.info("study plot %s skipped: %s", name, exc)
            plt.close("all")
    return written


def _bins(values: Sequence[Any], dim: Dimension | None, n_bins: int = 3) -> list[Any]:
    """Discretise a numeric hyperparameter into quantile bins (log scale for log dimensions)."""
    vals = list(values)
    if dim is None or dim.kind == "categorical" or len(set(map(repr, vals))) <= n_bins + 1:
        return [repr(v) for v in vals]
    x = np.asarray(vals, dtype=float)
    if dim.log:
        x = np.log(np.clip(x, 1e-300, None))
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return [int(b) for b in np.searchsorted(edges, x, side="right")]


def measure_gap_report(records: Sequence[Any], dims: Sequence[Dimension], metric: str) -> pd.DataFrame:
    """Per measure: Kendall tau with the gap across completed trials, and the granulated tau per hyperparameter.

    `records` are TrialRecords with fold-mean `measures` and `gap` (primary metric). Granulated tau
    (Jiang et al. 2020) groups trials whose other hyperparameters fall in the same bin (quantile
    bins for numeric ones, exact values on a grid), so with a random or TPE search it is an
    approximation; on a grid it is exact.
    """
    rows = [r for r in records if r.measures and r.gap is not None and np.isfinite(r.gap)]
    if len(rows) < 3:
        return pd.DataFrame(columns=["measure", "tau", "p_value", "n_trials", "granulated_tau"])
    from gencv.measures.config import is_diagnostic

    names = sorted({k for r in rows for k in r.measures if not is_diagnostic(k)})
    gap = [float(r.gap) for r in rows]
    by_path = {d.path: d for d in dims}
    paths = [d.path for d in dims]
    binned = {p: _bins([r.params.get(p) for r in rows], by_path.get(p)) for p in paths}
    out = []
    for name in names:
        m = [float(r.measures.get(name, np.nan)) for r in rows]
        tau, p, n = kendall_tau(m, gap)
        row: dict[str, Any] = {"measure": name, "tau": tau, "p_value": p, "n_trials": n}
        gran = _granulated(m, gap, binned, [r.params for r in rows], paths)
        for path in paths:
            row[f"psi[{path}]"] = gran.per_param[path]
            row[f"groups[{path}]"] = gran.n_groups[path]
        row["granulated_tau"] = gran.overall
        out.append(row)
    df = pd.DataFrame(out)
    df.attrs["metric"] = metric
    return df


def _granulated(m: list[float], gap: list[float], binned: dict[str, list[Any]], params: list[dict[str, Any]],
                paths: list[str]) -> Any:
    """granulated_kendall where the 'others' are binned but the varying parameter keeps its raw values."""
    from gencv.stats import GranulatedTau

    per: dict[str, float] = {}
    counts: dict[str, int] = {}
    for path in paths:
        cols = {p: (binned[p] if p != path else [repr(pr.get(path)) for pr in params]) for p in paths}
        g = granulated_kendall(m, gap, cols)
        per[path], counts[path] = g.per_param[path], g.n_groups[path]
    defined = [v for v in per.values() if np.isfinite(v)]
    return GranulatedTau(per, counts, float(np.mean(defined)) if defined else float("nan"))


def plot_measures_vs_gap_trials(records: Sequence[Any], report: pd.DataFrame, path: Path, metric: str) -> list[str]:
    """One scatter per measure that varies over trials: fold-mean measure vs fold-mean gap, one point per
    completed trial, in a grid that grows; returns the measures plotted (none: no file)."""
    rows = [r for r in records if r.measures and r.gap is not None and np.isfinite(r.gap)]
    if not rows or report.empty:
        return []
    from gencv.report import scatter_grid, varying_measures

    listed = set(report["measure"])
    names = [k for k in varying_measures([r.measures for r in rows]) if k in listed]
    if not names:
        return []
    tau = dict(zip(report["measure"], report["tau"]))
    scatter_grid({k: [r.measures[k] for r in rows] for k in names}, [r.gap for r in rows], path,
                 ylabel=f"gap ({metric})", titles={k: f"tau = {tau[k]:.2f}" for k in names},
                 title=f"Measure vs generalization gap, one point per completed trial ({len(rows)} trials, fold means)")
    return names
