"""`gencv sweep`: a factor studied level by level, every level one cross-validation on the same folds.

Same folds make every comparison paired: each level is compared with the baseline level by the
corrected resampled t-test and the Bayesian correlated t-test (`gencv.studies.compare`), p-values
Holm-corrected across levels; each measure is rank-correlated with the gap across levels and folds.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from gencv.errors import GencvError, SpecError
from gencv.measures.config import is_diagnostic
from gencv.metrics import METRICS
from gencv.report import summarize, value_bounds
from gencv.runner import RunOutcome, make_estimator, prepare, run_experiment, run_tags
from gencv.spec import Experiment, parse_overrides
from gencv.splits import folds_digest
from gencv.stats import granulated_kendall, holm, kendall_tau
from gencv.studies.compare import RunScores, compare_runs
from gencv.tracking import MlflowTracker, NullTracker, Tracker

__all__ = ["Level", "SweepOutcome", "SweepProgress", "levels_of", "parse_grid", "run_sweep"]

log = logging.getLogger(__name__)

#: spec sections a level may not change: they decide the folds, so levels would not be paired.
_FIXED = ("seed", "name", "cv", "data.source", "data.target", "data.features", "data.group", "data.time",
          "data.test_size", "data.classes", "data.lags", "data.horizon", "data.n_samples", "tune", "sweep", "metric")


@dataclass(frozen=True)
class Level:
    """One combination of the grid's values."""

    index: int
    values: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{p}={_short(v)}" for p, v in self.values.items())


class SweepProgress(Protocol):
    """Progress events of a sweep (the CLI renders them)."""

    def level_start(self, level: Level, n_levels: int) -> Any: ...  # returns a fold Progress, or None
    def level_end(self, level: Level, outcome: RunOutcome, reused: bool) -> None: ...


class _NoProgress:
    def level_start(self, level: Level, n_levels: int) -> Any:
        return None

    def level_end(self, level: Level, outcome: RunOutcome, reused: bool) -> None:
        pass


@dataclass
class SweepOutcome:
    """Per-level CV results, the comparisons with the baseline, and the measure-gap correlations."""

    experiment: Experiment
    levels: list[Level]
    baseline: int
    outcomes: list[RunOutcome]
    table: pd.DataFrame  # one row per level: mean, CI of the held-out score, gap, measures; tests vs baseline
    correlations: pd.DataFrame  # per measure: Kendall tau with the gap over levels x folds (+ granulated)
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`--grid PATH=V1,V2,...` (values parsed as YAML, e.g. `model.hidden=[32],[64,64]`) -> {path: levels}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"--grid: got {item!r}; use PATH=V1,V2,... e.g. --grid model.dropout=0,0.2,0.5")
        path, _, values = item.partition("=")
        parts = _split_levels(values)
        if not parts:
            raise SpecError(f"--grid {path}: no levels given; use e.g. --grid {path}=0,0.2")
        grid[path.strip()] = [parse_overrides([f"x={p}"])["x"] for p in parts]
    return grid


def _split_levels(values: str) -> list[str]:
    """Split on commas outside brackets: `[32],[64,64]` -> ['[32]', '[64,64]']."""
    parts, depth, cur = [], 0, ""
    for ch in values:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def levels_of(exp: Experiment, grid: Mapping[str, Sequence[Any]],
              baseline: Mapping[str, Any] | None = None) -> tuple[list[Level], int, list[Experiment]]:
    """Every combination of the grid as a level, the baseline's position, and each level's experiment.

    Levels may not change what decides the folds (seed, cv, the data and its test split): those
    would make the comparison unpaired. Every level's spec is validated before anything trains.
    """
    if not grid:
        raise SpecError("sweep.grid: empty; give levels with --grid PATH=V1,V2 or a `sweep: {grid: ...}` section")
    for path in grid:
        if any(path == f or path.startswith(f + ".") for f in _FIXED):
            raise SpecError(f"sweep.grid.{path}: a level may not change {path}: it decides the folds (or the "
                            "study itself), so levels would not be compared on the same folds; sweep training "
                            "choices (model.*, train.*, data.scale, measures) instead")
    paths = list(grid)
    levels = [Level(i, dict(zip(paths, combo))) for i, combo in enumerate(itertools.product(*grid.values()))]
    exps = []
    for level in levels:
        try:
            exps.append(exp.with_overrides(level.values))
        except SpecError as exc:
            raise SpecError(f"sweep level {level.label}: {exc}") from None
    base = 0
    if baseline is not None:
        wanted = {k: baseline[k] for k in baseline}
        matches = [lv.index for lv in levels if all(lv.values.get(k) == v for k, v in wanted.items())]
        if len(matches) != 1:
            raise SpecError(f"sweep.baseline: got {dict(baseline)}, which matches {len(matches)} levels; name one "
                            f"level, e.g. {levels[0].values}")
        base = matches[0]
    return levels, base, exps


def _check_engines(levels: Sequence[Level], exps: Sequence[Experiment], prep: Any) -> None:
    """A level that `train.engine: batched` cannot train is an error before any level trains (not after the
    levels before it)."""
    from gencv.engines.batched import unsupported_setting

    for level, level_exp in zip(levels, exps):
        if level_exp.train.engine != "batched":
            continue
        est = make_estimator(level_exp, prep.dataset, module=prep.module, base=prep.estimator.base)
        if (why := unsupported_setting(est)) is not None:
            raise SpecError(f"sweep level {level.label}: {why}; use train.engine: skorch (or auto, which falls back "
                            "for the levels it cannot stack)")


def _scores(outcome: RunOutcome, metric: str, label: str, digest: str) -> RunScores:
    folds = [f for f in outcome.cv.ok_folds if np.isfinite(f.valid_scores.get(metric, np.nan))]
    return RunScores(outcome.run_id or label, label, metric, {f.index: f.valid_scores[metric] for f in folds},
                     float(np.mean([f.n_train for f in folds])) if folds else 1.0,
                     float(np.mean([f.n_valid for f in folds])) if folds else 1.0,
                     tags={"gencv.folds_digest": digest})


def _finished_levels(tracker: Tracker, sweep_run: str) -> dict[str, tuple[str, str]]:
    """Level label -> (run id, status) of the level runs already under a sweep run."""
    if not isinstance(tracker, MlflowTracker):
        raise GencvError("--resume needs tracking on (it reads the finished levels from MLflow)")
    client = tracker.client
    try:
        run = client.get_run(sweep_run)
    except Exception as exc:
        raise GencvError(f"--resume: run {sweep_run!r} not found ({str(exc).splitlines()[0]}); pass the sweep "
                         "run id printed by `gencv sweep`") from None
    if run.data.tags.get("gencv.kind") != "sweep":
        raise GencvError(f"--resume: run {sweep_run} is not a sweep run; pass the id `gencv sweep` printed")
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{sweep_run}' and tags.`gencv.kind` = 'cv'",
                                  max_results=10000)
    out: dict[str, tuple[str, str]] = {}
    for c in children:
        label = c.data.tags.get("gencv.sweep_level")
        if label is not None and (label not in out or c.info.status == "FINISHED"):
            out[label] = (c.info.run_id, c.info.status)
    return out


def run_sweep(
    exp: Experiment,
    grid: Mapping[str, Sequence[Any]],
    *,
    baseline: Mapping[str, Any] | None = None,
    tracker: Tracker | None = None,
    progress: SweepProgress | None = None,
    resume: str | None = None,
    refit: bool = False,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat_interval: int = 30,
) -> SweepOutcome:
    """Cross-validate every level of the grid on the same folds; compare each with the baseline level.

    Parameters
    ----------
    grid : dotted spec path -> its levels; every combination is a level.
    baseline : the level the others are compared with (default: the first combination).
    resume : a sweep run id: levels that finished are read back, interrupted ones resume their folds.
    refit : also refit every level on all non-test data (off: a sweep compares cross-validations).
    storage : an Optuna storage URL: the levels become a queue that several workers share
        (`gencv.studies.sweep_queue`); run the same call on each worker. Rerunning it resumes.
    study_name : the sweep's study in `storage` (default: spec name and a digest of spec and grid).
    heartbeat_interval : seconds between a shared level's heartbeats; a level whose worker stops
        beating for twice as long is re-queued.
    """
    tracker = tracker or NullTracker()
    progress = progress or _NoProgress()
    based = [p for p in grid if p == "model.base" or p.startswith("model.base.")]
    if storage is not None and based:  # a shared sweep's workers train from the one base `prepare` loads
        raise SpecError(f"sweep.grid.{based[0]}: a shared sweep (--storage) trains every level from the spec's "
                        "own model.base; sweep the base without --storage (each level then loads its own)")
    levels, base, exps = levels_of(exp, grid, baseline)
    uri = getattr(tracker, "tracking_uri", None)  # where model.base's run or registered model is
    prep = prepare(exp, tracking_uri=uri)  # the folds every level shares (levels may not change what decides them)
    _check_engines(levels, exps, prep)
    digest = folds_digest(prep.folds)
    if storage is not None:
        if resume:
            raise GencvError("sweep: --resume reads a sweep run; with --storage the study remembers the finished "
                             "levels: rerun the same command (same --study) instead")
        return _run_shared(exp, grid, levels, base, exps, prep, digest, tracker, progress, refit, storage,
                           study_name, heartbeat_interval)
    done = _finished_levels(tracker, resume) if resume else {}
    if resume:
        sweep_run = resume
        tracker.client.update_run(sweep_run, status="RUNNING")  # type: ignore[attr-defined]
    else:
        sweep_run = _start_sweep_run(tracker, exp, prep, grid, levels, base, {})
    outcomes: list[RunOutcome] = []
    status = "FAILED"
    try:
        for level, level_exp in zip(levels, exps):
            outcomes.append(_run_level(level, level_exp, len(levels), done.get(level.label), tracker, progress,
                                       refit, sweep_run))
        result = _summarize(exp, levels, base, outcomes, digest)
        result.run_id = None if isinstance(tracker, NullTracker) else sweep_run
        _log_sweep(tracker, sweep_run, result)
        status = "FINISHED"
        return result
    except KeyboardInterrupt as exc:
        status = "KILLED"
        if not isinstance(tracker, NullTracker):
            exc.gencv_run_id = sweep_run  # type: ignore[attr-defined]
        raise
    finally:
        tracker.end_run(sweep_run, status)
        _flush(tracker)


def _flush(tracker: Tracker) -> None:
    flush = getattr(tracker, "flush", None)
    if callable(flush):
        flush()


def _start_sweep_run(tracker: Tracker, exp: Experiment, prep: Any, grid: Mapping[str, Sequence[Any]],
                     levels: list[Level], base: int, tags: Mapping[str, str]) -> str:
    """The sweep's MLflow run (its levels' parent): spec, grid and baseline as params."""
    sweep_run = tracker.start_run(exp.name, f"{exp.name}-sweep", tags={
        **run_tags(exp, prep.dataset, prep.folds), "gencv.kind": "sweep",
        "gencv.sweep_paths": ",".join(grid)[:5000], **dict(tags)})
    tracker.log_params(sweep_run, {**exp.flat_params(), **{f"grid.{p}": json.dumps(v) for p, v in grid.items()},
                                   "n_levels": len(levels), "baseline": levels[base].label})
    tracker.log_text(sweep_run, exp.to_yaml(), "spec.yaml")
    resolve = getattr(tracker, "resolve", None)
    if callable(resolve):  # MLflow's id now, for the level runs' parent tag and the resume hint
        sweep_run = resolve(sweep_run)
    return sweep_run


def _run_level(level: Level, level_exp: Experiment, n_levels: int, prior: tuple[str, str] | None, tracker: Tracker,
               progress: SweepProgress, refit: bool, sweep_run: str) -> RunOutcome:
    """One level's cross-validation as a child of the sweep run; `prior` (run id, status) is resumed or reused."""
    fold_progress = progress.level_start(level, n_levels)
    reused = prior is not None and prior[1] == "FINISHED"
    prepared = prepare(level_exp, tracking_uri=getattr(tracker, "tracking_uri", None))  # its own model.base
    outcome = run_experiment(
        level_exp, tracker=tracker, progress=fold_progress, refit=refit, prepared=prepared,
        resume=prior[0] if prior is not None else None, parent_run=sweep_run, run_name=level.label,
        tags={"gencv.sweep_level": level.label, "gencv.sweep_index": str(level.index)},
    )
    progress.level_end(level, outcome, reused)
    return outcome


def _run_shared(exp: Experiment, grid: Mapping[str, Sequence[Any]], levels: list[Level], base: int,
                exps: list[Experiment], prep: Any, digest: str, tracker: Tracker, progress: SweepProgress,
                refit: bool, storage: str, study_name: str | None, heartbeat_interval: int) -> SweepOutcome:
    """This worker's share of a sweep whose levels wait in an Optuna storage; the last one out reports."""
    from gencv.studies.sweep_queue import SweepQueue, default_sweep_study_name, sweep_digest
    from gencv.tuning.storage import Heartbeat, make_storage

    labels = [lv.label for lv in levels]
    store = make_storage(storage, heartbeat_interval=heartbeat_interval)
    name = study_name or default_sweep_study_name(exp, sweep_digest(exp, labels, base))
    queue, sweep_run = SweepQueue.open(
        exp, labels, base, store, name, tracker,
        lambda: _start_sweep_run(tracker, exp, prep, grid, levels, base, {"gencv.sweep_study": name}))
    ran: dict[int, RunOutcome] = {}
    try:
        while (claim := queue.claim()) is not None:
            level = levels[claim.level]
            prior = _finished_levels(tracker, sweep_run).get(level.label)
            try:
                with Heartbeat(store, claim.trial_id):
                    outcome = _run_level(level, exps[level.index], len(levels), prior, tracker, progress, refit,
                                         sweep_run)
            except KeyboardInterrupt:
                queue.stopped(claim, interrupted=True)
                raise
            except BaseException:
                queue.stopped(claim, interrupted=False)
                raise
            queue.done(claim, outcome.cv.mean_score(), outcome.run_id)
            ran[level.index] = outcome
    except KeyboardInterrupt as exc:
        exc.gencv_run_id = sweep_run  # type: ignore[attr-defined]
        if not queue.state()["running"]:
            tracker.end_run(sweep_run, "KILLED")
        _flush(tracker)
        raise
    state = queue.state()
    if state["running"] or state["waiting"]:
        _flush(tracker)
        busy = [labels[i] for i in state["running"] + state["waiting"]]
        return SweepOutcome(exp, levels, base, list(ran.values()), pd.DataFrame(), pd.DataFrame(), run_id=sweep_run,
                            notes=[f"this worker ran {len(ran)} level(s); still running or waiting in other "
                                   f"workers: {', '.join(busy)}. The last worker out writes the sweep's report to "
                                   f"run {sweep_run} (study {name})"])
    if state["failed"]:
        _flush(tracker)
        bad = ", ".join(labels[i] for i in state["failed"])
        raise GencvError(f"sweep (study {name}): level(s) {bad} failed on every try; their level runs under "
                         f"sweep run {sweep_run} say why. Fix the cause and start the sweep under another --study")
    finished = _finished_levels(tracker, sweep_run)
    outcomes = []
    for level, level_exp in zip(levels, exps):
        outcomes.append(ran.get(level.index) or _run_level(level, level_exp, len(levels), finished.get(level.label),
                                                           tracker, progress, refit, sweep_run))
    result = _summarize(exp, levels, base, outcomes, digest)
    result.run_id = sweep_run
    if queue.claim_report():
        _log_sweep(tracker, sweep_run, result)
        tracker.end_run(sweep_run, "FINISHED")
    _flush(tracker)
    return result


def _summarize(exp: Experiment, levels: list[Level], base: int, outcomes: list[RunOutcome],
               digest: str) -> SweepOutcome:
    metric = exp.metric
    notes: list[str] = []
    scores = [_scores(o, metric, lv.label, digest) for lv, o in zip(levels, outcomes)]
    tests: dict[int, Any] = {}
    for lv in levels:
        if lv.index == base:
            continue
        try:
            (pair,) = compare_runs([scores[lv.index], scores[base]]).pairs
            tests[lv.index] = pair
        except GencvError as exc:
            notes.append(f"level {lv.label}: not compared with the baseline: {exc}")
    adjusted = dict(zip(tests, holm([p.corrected_p for p in tests.values()])))
    rows = []
    measure_keys = _varying_measures(outcomes)
    for lv, o in zip(levels, outcomes):
        row: dict[str, Any] = {"level": lv.label, **{p: _short(v) for p, v in lv.values.items()},
                               "baseline": lv.index == base, "folds_ok": len(o.cv.ok_folds)}
        for key in (f"valid_{metric}", f"train_{metric}", f"gap_{metric}", "gap_loss", f"test_{metric}"):
            s = summarize(o.cv.values(key), bounds=value_bounds(key))
            row |= {f"{key}_mean": s["mean"], f"{key}_ci_low": s["ci_low"], f"{key}_ci_high": s["ci_high"]}
        reached = [f.stop_reached for f in o.cv.ok_folds if f.stop_reached is not None]
        if reached:  # train.stop_at_train_loss: levels compare minima at equal training loss only if all got there
            row["folds_at_target_loss"] = int(sum(reached))
            if sum(reached) < len(reached):
                notes.append(f"level {lv.label}: {len(reached) - sum(reached)} of {len(reached)} folds ended at "
                             "max_epochs before train.stop_at_train_loss; their minima are not at the target loss "
                             "(raise train.max_epochs or train.lr)")
        for k in measure_keys:
            vals = o.cv.values(k)
            row[f"{k}_mean"] = float(np.mean(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else float("nan")
        p = tests.get(lv.index)
        if p is not None:
            row |= {"diff_vs_baseline": p.mean_diff, "p_corrected": p.corrected_p, "p_holm": adjusted[lv.index],
                    "P_better": p.p_a_better, "P_equivalent": p.p_equivalent, "P_worse": p.p_b_better}
        rows.append(row)
    table = pd.DataFrame(rows)
    correlations = _correlations(levels, outcomes, metric, measure_keys)
    if len(levels) > 1 and all(len(o.cv.ok_folds) < 2 for o in outcomes):
        notes.append("fewer than 2 successful folds per level: no paired test possible")
    return SweepOutcome(exp, levels, base, outcomes, table, correlations, notes=notes)


def _varying_measures(outcomes: Sequence[RunOutcome]) -> list[str]:
    """Measures every level has that vary across levels and folds (no constants, diagnostics or counts).

    A per-layer norm named by its layer's position exists only where the levels share an architecture.
    """
    per_level = [{k for f in o.cv.ok_folds for k in f.measures} for o in outcomes if o.cv.ok_folds]
    common = set.intersection(*per_level) if per_level else set()
    keep = []
    for k in sorted(common):
        if is_diagnostic(k):
            continue
        vals = np.concatenate([o.cv.values(k) for o in outcomes])
        vals = vals[np.isfinite(vals)]
        if len(vals) > 1 and np.ptp(vals) > 0:
            keep.append(k)
    return keep


def _correlations(levels: list[Level], outcomes: list[RunOutcome], metric: str, measure_keys: list[str]) -> pd.DataFrame:
    """Kendall tau of each measure with the gap over all (level, fold) points; granulated when >= 2 factors."""
    rows = []
    gap_key = f"gap_{metric}"
    for key in measure_keys:
        m, g, params = [], [], {p: [] for p in levels[0].values}
        for lv, o in zip(levels, outcomes):
            for f in o.cv.ok_folds:
                m.append(f.measures.get(key, np.nan))
                g.append(f.gaps.get(metric, np.nan))
                for p, v in lv.values.items():
                    params[p].append(v)
        tau, pval, n = kendall_tau(m, g)
        row = {"measure": key, "vs": gap_key, "tau": tau, "p_value": pval, "n_points": n}
        if len(params) >= 2:
            row["granulated_tau"] = granulated_kendall(m, g, params).overall
        rows.append(row)
    return pd.DataFrame(rows)


def _log_sweep(tracker: Tracker, run_id: str, result: SweepOutcome) -> None:
    if isinstance(tracker, NullTracker):
        return
    metric = result.experiment.metric
    metrics: dict[str, float] = {}
    for _, row in result.table.iterrows():
        i = result.levels[[lv.label for lv in result.levels].index(row["level"])].index
        for key in (f"valid_{metric}_mean", f"gap_{metric}_mean", "p_holm", "P_better"):
            v = row.get(key)
            if v is not None and np.isfinite(v):
                metrics[f"level{i}_{key}"] = float(v)
    tracker.log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        result.table.to_csv(d / "levels.csv", index=False)
        tracker.log_artifact(run_id, d / "levels.csv")
        if not result.correlations.empty:
            result.correlations.to_csv(d / "measures_vs_gap.csv", index=False)
            tracker.log_artifact(run_id, d / "measures_vs_gap.csv")
        for path in plot_levels(result, d / "plots"):
            tracker.log_artifact(run_id, path, "plots")
        (d / "summary.md").write_text(summary_markdown(result))
        tracker.log_artifact(run_id, d / "summary.md")


def plot_levels(result: SweepOutcome, directory: Path) -> list[Path]:
    """Held-out score, gap and each measure against the level: fold points, mean and 95% interval."""
    from gencv.report import pyplot

    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    metric = result.experiment.metric
    keys = [f"valid_{metric}", f"gap_{metric}"]
    keys += _varying_measures(result.outcomes)
    paths = []
    labels = [", ".join(_short(v) for v in lv.values.values()) for lv in result.levels]
    axis = ", ".join(result.levels[0].values)
    per_page = 6
    for page, start in enumerate(range(0, len(keys), per_page)):
        chunk = keys[start:start + per_page]
        cols = min(3, len(chunk))
        rows = int(np.ceil(len(chunk) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
        for ax, key in zip(axes.ravel(), chunk):
            x = np.arange(len(labels))
            for i, o in enumerate(result.outcomes):
                vals = o.cv.values(key)
                ax.scatter(np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)), vals, s=12, color="0.55",
                           zorder=2)
            summaries = [summarize(o.cv.values(key), bounds=value_bounds(key)) for o in result.outcomes]
            means = np.array([s["mean"] for s in summaries])
            lo = means - np.array([s["ci_low"] for s in summaries])
            hi = np.array([s["ci_high"] for s in summaries]) - means
            ax.errorbar(x, means, yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], color="C0", marker="o", capsize=4,
                        zorder=3)
            ax.axvline(result.baseline, color="C1", lw=0.8, ls="--")
            ax.set_xticks(x)
            ax.set_xticklabels(labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center",
                               fontsize=8)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel(axis, fontsize=8)
        for ax in axes.ravel()[len(chunk):]:
            ax.set_visible(False)
        fig.suptitle(f"{result.experiment.name}: per level (grey: folds; blue: mean and 95% interval; "
                     f"dashed: baseline)", fontsize=10)
        fig.tight_layout()
        path = directory / f"levels_{page + 1}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def summary_markdown(result: SweepOutcome) -> str:
    """The sweep's table and notes as markdown (MLflow artifact)."""
    metric = result.experiment.metric
    direction = "higher" if METRICS[metric].higher_is_better else "lower"
    lines = [f"# Sweep {result.experiment.name}", "",
             f"Levels: {len(result.levels)}; baseline: {result.levels[result.baseline].label}; metric {metric} "
             f"({direction} is better). Every level is cross-validated on the same folds; each is compared with the "
             "baseline by the corrected resampled t-test (p Holm-corrected across levels) and the Bayesian "
             "correlated t-test (P better / equivalent / worse, ROPE 0.01 or 1% of the baseline).", ""]
    cols = ["level", f"valid_{metric}_mean", f"gap_{metric}_mean", "diff_vs_baseline", "p_holm", "P_better",
            "P_equivalent", "P_worse"]
    table = result.table[[c for c in cols if c in result.table]]
    lines.append(table.to_markdown(index=False, floatfmt=".4f"))
    if not result.correlations.empty:
        lines += ["", "## Measures vs gap (Kendall tau over levels x folds)", "",
                  result.correlations.to_markdown(index=False, floatfmt=".3f")]
    lines += [""] + [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
