"""Hyperparameter tuning with Optuna over the same cross-validation as `gencv run`.

One trial = one configuration = the mean primary metric over the spec's CV folds, each fold
reported as an intermediate value so a pruner can stop a hopeless trial early. Studies live in an
Optuna storage (SQLite by default, PostgreSQL to share one study between worker processes);
every trial, and every fold of it, is an MLflow run under the study run.

Trial budget: `n_trials` is the study's TOTAL of COMPLETE + PRUNED trials, whichever worker ran
them. FAILED trials do not count (they are bounded by `tune.max_consecutive_failures`); a trial
whose worker died is failed by heartbeat and re-queued with the same parameters, and its re-run
counts once. Workers take the study lock to count and ask atomically, so the total is exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from gencv._tuning_report import measure_gap_report, plot_measures_vs_gap_trials, study_plots
from gencv._tuning_space import Dimension, build_space, grid_search_space, overrides_from_params, suggest
from gencv._tuning_storage import (DEFAULT_STORAGE, MAX_RETRY, Heartbeat, make_storage, redact_url, storage_kind,
                                   study_lock)
from gencv.cv import FoldResult, cross_validate, derive_seed, fit_and_score
from gencv.errors import GencvError, SpecError, Terminated
from gencv.metrics import METRICS
from gencv.report import summarize
from gencv.runner import Prepared, _measure_config, _refit, make_estimator, prepare, run_tags
from gencv.spec import Experiment
from gencv.splits import Fold, make_folds
from gencv.tracking import MlflowTracker, NullTracker, Tracker

__all__ = [
    "DEFAULT_STORAGE",
    "NestedEstimate",
    "NestedFold",
    "TrialRecord",
    "TuneOutcome",
    "TuneProgress",
    "TuningError",
    "build_space",
    "outcome_json",
    "tune_experiment",
]

log = logging.getLogger(__name__)


class TuningError(GencvError, RuntimeError):
    """The study cannot go on (too many consecutive failures, a study of another spec...)."""


# --------------------------------------------------------------------------- results


@dataclass
class TrialRecord:
    """One trial as the study stored it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None
    params: dict[str, Any]
    folds_run: list[int] = field(default_factory=list)
    fold_scores: dict[int, float] = field(default_factory=dict)
    reason: str = ""
    measures: dict[str, float] = field(default_factory=dict)
    gap: float | None = None
    run_id: str | None = None
    penalized: bool = False
    seconds: float | None = None
    study: str = ""

    @classmethod
    def from_frozen(cls, t: Any, dims: Sequence[Dimension]) -> TrialRecord:
        ua = t.user_attrs
        dur = t.duration.total_seconds() if t.duration is not None else None
        return cls(
            number=t.number, state=t.state.name, value=t.value, params=overrides_from_params(t.params, list(dims)),
            folds_run=list(ua.get("gencv.folds_run", [])),
            fold_scores={int(k): float(v) for k, v in ua.get("gencv.fold_scores", {}).items()},
            reason=str(ua.get("gencv.reason", "")), measures=dict(ua.get("gencv.measures", {})),
            gap=ua.get("gencv.gap"), run_id=ua.get("gencv.run_id"), penalized=bool(ua.get("gencv.penalized", False)),
            seconds=dur,
        )

    @classmethod
    def of_study(cls, study: Any, dims: Sequence[Dimension]) -> list[TrialRecord]:
        out = [cls.from_frozen(t, dims) for t in study.get_trials(deepcopy=False)]
        for r in out:
            r.study = study.study_name
        return out


@dataclass
class NestedFold:
    """One outer fold of nested CV: the indices it used, the inner winner and its outer score."""

    index: int
    outer_train: np.ndarray
    outer_test: np.ndarray
    inner_folds: list[Fold]
    study_name: str
    best_params: dict[str, Any]
    best_inner_value: float
    outer_score: float
    outer_result: FoldResult | None = None
    n_trials: int = 0


@dataclass
class NestedEstimate:
    """Nested CV: the estimate to quote, the inner best scores it is compared with, and the optimism."""

    folds: list[NestedFold]
    metric: str
    estimate: dict[str, float]  # summarize() of the outer scores: mean, std, ci_low, ci_high, n
    inner_best: dict[str, float]  # summarize() of each outer fold's best inner CV score
    optimism: float  # inner best minus nested estimate, signed so that > 0 means 'inner best flatters'
    final_params: dict[str, Any] = field(default_factory=dict)  # the configuration refit on all non-test data
    final_outer_folds: list[int] = field(default_factory=list)  # the outer folds whose winner it is


@dataclass
class TuneOutcome:
    """What `tune_experiment` found."""

    experiment: Experiment
    study_name: str
    storage: str  # redacted URL
    direction: str
    metric: str
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    refit_test_scores: dict[str, float] = field(default_factory=dict)
    nested: NestedEstimate | None = None
    measure_report: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    finalized: bool = True
    refit_estimator: Any = None

    @property
    def counts(self) -> dict[str, int]:
        return _state_counts(self.trials)

    @property
    def best_value(self) -> float | None:
        return None if self.best is None else self.best.value

    @property
    def best_overrides(self) -> dict[str, Any]:
        return {} if self.best is None else dict(self.best.params)

    def trials_table(self) -> pd.DataFrame:
        """One row per trial: number, state, value, params, folds run, reason."""
        rows = []
        for t in self.trials:
            rows.append({"study": t.study, "trial": t.number, "state": t.state, "value": t.value,
                         **{f"param {k}": v for k, v in t.params.items()}, "folds_run": len(t.folds_run),
                         "penalized": t.penalized, "reason": t.reason, "seconds": t.seconds})
        return pd.DataFrame(rows)


class TuneProgress(Protocol):
    """Study progress events; the CLI renders them, the library only emits them."""

    def study_start(self, study_name: str, n_trials: int, n_done: int, label: str) -> None: ...
    def trial_start(self, number: int, params: Mapping[str, Any]) -> None: ...
    def fold_end(self, number: int, position: int, n_folds: int, result: FoldResult) -> None: ...
    def trial_end(self, record: TrialRecord, counts: Mapping[str, int], best: float | None) -> None: ...


class _NoProgress:
    def study_start(self, study_name: str, n_trials: int, n_done: int, label: str) -> None:
        pass

    def trial_start(self, number: int, params: Mapping[str, Any]) -> None:
        pass

    def fold_end(self, number: int, position: int, n_folds: int, result: FoldResult) -> None:
        pass

    def trial_end(self, record: TrialRecord, counts: Mapping[str, int], best: float | None) -> None:
        pass


# --------------------------------------------------------------------------- internals


class _Diverged(Exception):
    pass


class _FoldFailed(Exception):
    pass


_COUNTED = ("COMPLETE", "PRUNED")


def _state_counts(trials: Sequence[TrialRecord]) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        out[t.state] = out.get(t.state, 0) + 1
    return out


def _study_counts(study: Any) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _study_digest(exp: Experiment) -> str:
    """Digest of what makes trials comparable: the spec without the study's budget settings.

    `tune.pruner_options` is left out: it changes which trials stop early, not what a completed
    trial's value means, and leaving it out keeps studies made before the option existed resumable
    (and an explicitly written default equal to an omitted one).
    """
    import hashlib

    raw = exp.model_dump(mode="json")
    for k in ("trials", "timeout", "max_consecutive_failures", "nested", "pruner_options"):
        (raw.get("tune") or {}).pop(k, None)
    raw.pop("name", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def _make_sampler(exp: Experiment, dims: list[Dimension], seed: int) -> Any:
    import optuna

    kind = exp.tune.sampler if exp.tune else "tpe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several samplers are flagged experimental
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if kind == "cmaes":
            try:
                import cmaes  # noqa: F401  (Optuna imports it lazily, at the second trial)
            except ImportError:
                raise GencvError("tune.sampler=cmaes needs the `cmaes` package: pip install cmaes "
                                 "(or choose another tune.sampler: tpe, random, gp, grid)") from None
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if kind == "grid":
            return _GridSampler(grid_search_space(dims), seed=seed)
        return optuna.samplers.TPESampler(seed=seed)


def _grid_sampler_class() -> Any:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without `study.stop()` in after_trial (our ask/tell loop checks
        `is_exhausted` itself; `stop` outside `optimize` raises)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def _GridSampler(search_space: Mapping[str, Sequence[Any]], seed: int) -> Any:
    return _grid_sampler_class()(dict(search_space), seed=seed)


def _make_pruner(kind: str, n_folds: int, opts: Mapping[str, float], cv_field: str = "cv") -> Any:
    """Optuna's pruner for `tune.pruner`; `opts` is `TuneSpec.pruner_settings()` (spec options over defaults).

    Median and hyperband see step = folds done (1 .. n_folds); a trial can only be pruned before
    its last fold, so hyperband's smallest budget must leave at least one fold after it.
    """
    import optuna

    # (With a single fold no pruner can stop anything; that is not an error of the options.)
    if kind == "hyperband" and n_folds > 1 and int(opts["min_resource"]) > n_folds - 1:
        raise SpecError(f"tune.pruner_options.min_resource: got {int(opts['min_resource'])}, but a trial has "
                        f"{n_folds} folds ({cv_field}) and can only be pruned before its last one; use a value "
                        f"from 1 to {n_folds - 1}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "wilcoxon":
            from gencv.pruning import FastWilcoxonPruner  # Optuna's, with a numpy p-value

            return FastWilcoxonPruner(p_threshold=float(opts["p_threshold"]),
                                      n_startup_steps=int(opts["n_startup_steps"]))
        if kind == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=int(opts["n_startup_trials"]),
                                               n_warmup_steps=int(opts["n_warmup_steps"]))
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=int(opts["min_resource"]),
                                                  max_resource=max(n_folds, 2),
                                                  reduction_factor=int(opts["reduction_factor"]))
        return optuna.pruners.NopPruner()


def _penalty(metric: str, y: np.ndarray, task: str, completed: Sequence[float]) -> float:
    """A finite, clearly bad objective value for a diverged trial, in the metric's direction.

    Bounded metrics get their worst possible value; unbounded ones the worse of a trivial
    predictor's score (mean / class prior) and the worst completed trial, pushed further out.
    """
    m = METRICS[metric]
    if metric in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"):
        return 0.0
    finite = [v for v in completed if v is not None and np.isfinite(v)]
    y = np.asarray(y, dtype=float)
    if metric == "r2":
        base = 0.0
        worst = min([base, *finite])
        return float(worst - 1.0 - abs(worst))
    if metric == "rmse":
        base = float(np.std(y)) or 1.0
    elif metric == "mae":
        base = float(np.mean(np.abs(y - np.median(y)))) or 1.0
    elif metric == "log_loss":
        _, counts = np.unique(y, return_counts=True)
        p = counts / counts.sum()
        base = float(-(p * np.log(p)).sum()) or 1.0
    else:  # pragma: no cover - every registered metric is handled above
        base = 1.0
    worst = max([base, *finite]) if not m.higher_is_better else min([base, *finite])
    return float(2.0 * abs(worst) + 1.0) if not m.higher_is_better else float(-2.0 * abs(worst) - 1.0)


@dataclass
class _Ctx:
    """What every trial of one study needs (built once)."""

    exp: Experiment
    prep: Prepared
    dims: list[Dimension]
    folds: list[Fold]
    tracker: Tracker
    study_run: str
    study_name: str
    storage: Any
    progress: Any
    heartbeat_interval: int
    measure_config: Any
    label: str = "study"
    consecutive_failures: int = 0


def _real_id(tracker: Tracker, run_id: str) -> str:
    """MLflow's run id (an asynchronous tracker hands out provisional ids until the run is written)."""
    resolve = getattr(tracker, "resolve", None)
    return str(resolve(run_id)) if callable(resolve) else run_id


def _flush(tracker: Tracker) -> None:
    flush = getattr(tracker, "flush", None)
    if callable(flush):
        flush()


def _fold_order(exp: Experiment, number: int, n: int) -> list[int]:
    rng = np.random.default_rng(derive_seed(exp.seed, "trial", number, "fold_order"))
    return [int(i) for i in rng.permutation(n)]


def _run_trial(ctx: _Ctx, study: Any, trial: Any) -> TrialRecord:
    """Cross-validate one configuration; tell the study how it ended; log it as a child run."""
    with Heartbeat(ctx.storage, trial._trial_id):
        return _run_trial_body(ctx, study, trial)


def _run_trial_body(ctx: _Ctx, study: Any, trial: Any) -> TrialRecord:
    import optuna
    from optuna.trial import TrialState

    exp, ds = ctx.exp, ctx.prep.dataset
    metric = exp.metric
    number = trial.number
    t0 = time.perf_counter()
    try:  # samplers compute their proposal lazily, at the first suggestion
        overrides = suggest(trial, ctx.dims)
    except Exception as exc:
        raise _sampler_failed(ctx, study, [trial._trial_id], exc) from exc
    ctx.progress.trial_start(number, overrides)
    tags = {"gencv.kind": "trial", "gencv.trial": str(number), "gencv.study": ctx.study_name}
    retried = ctx.storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
    if retried is not None:
        tags["gencv.retry_of"] = str(retried)
    run_id = _real_id(ctx.tracker, ctx.tracker.start_run(exp.name, f"trial-{number}", parent=ctx.study_run, tags=tags))
    trial.set_user_attr("gencv.run_id", run_id)
    trial.set_user_attr("gencv.worker", f"{socket.gethostname()}:{os.getpid()}")
    ctx.tracker.log_params(run_id, {**overrides, "trial": number})
    order = _fold_order(exp, number, len(ctx.folds))
    wilcoxon = exp.tune is not None and exp.tune.pruner == "wilcoxon"
    scores: dict[int, float] = {}
    ran: list[int] = []
    fold_results: list[FoldResult] = []

    def on_fold_end(res: FoldResult, pos: int) -> None:
        fold_results.append(res)
        ctx.progress.fold_end(number, pos, len(ctx.folds), res)
        if not res.ok:
            if res.reason.startswith("diverged"):
                raise _Diverged(f"fold {res.index} {res.reason}")
            raise _FoldFailed(f"fold {res.index} failed: {res.reason}")
        score = res.valid_scores.get(metric, float("nan"))
        if not np.isfinite(score):
            raise _FoldFailed(f"fold {res.index}: {metric} is undefined on this fold ({score})")
        scores[res.index] = float(score)
        ran.append(res.index)
        if wilcoxon:  # Wilcoxon pairs folds across trials: step = fold id, value = that fold's score
            trial.report(float(score), res.index)
        else:  # median / hyperband compare running means at the same number of folds done (1, 2, ...)
            trial.report(float(np.mean(list(scores.values()))), pos + 1)
        if pos < len(ctx.folds) - 1 and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {pos + 1} of {len(ctx.folds)} folds "
                                     f"(running mean {metric} {np.mean(list(scores.values())):.4f})")

    state, value, reason, penalized = TrialState.COMPLETE, None, "", False
    try:
        trial_exp = exp.with_overrides(overrides)
        est = make_estimator(trial_exp, ds)
        cv = cross_validate(est, ds.X, ds.y, ctx.folds, metric=metric, seed=exp.seed,
                            measures=exp.measures, measure_config=ctx.measure_config, tracker=ctx.tracker,
                            experiment=exp.name, parent_run=run_id, on_fold_end=on_fold_end, fold_order=order)
        value = float(np.mean([scores[i] for i in sorted(scores)]))
        _set_measures(trial, cv.ok_folds, metric)
    except optuna.TrialPruned as exc:
        state, reason = TrialState.PRUNED, str(exc)
    except _Diverged as exc:
        reason = str(exc)
        if exp.tune is not None and exp.tune.divergence == "penalty":
            done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            value = _penalty(metric, ds.y[_train_idx(ctx.folds)], ds.task, done)
            penalized = True
            reason += f"; penalised with {metric} = {value:.4g}"
        else:
            state = TrialState.PRUNED
            reason += "; pruned (tune.divergence=prune)"
    except _FoldFailed as exc:
        state, reason = TrialState.FAIL, str(exc)
    except (KeyboardInterrupt, SystemExit) as exc:
        why = "SIGTERM" if isinstance(exc, Terminated) else type(exc).__name__
        _finish_trial(ctx, study, trial, run_id, TrialState.FAIL, None,
                      f"interrupted ({why}); re-queued as a WAITING trial with the same parameters",
                      ran, scores, False, mlflow_status="KILLED")
        _requeue(study, ctx.storage.get_trial(trial._trial_id))
        raise
    except Exception as exc:  # one configuration failing must not end the study
        state, reason = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
        log.debug("trial %d failed", number, exc_info=True)
    rec = _finish_trial(ctx, study, trial, run_id, state, value, reason, ran, scores, penalized)
    rec.seconds = time.perf_counter() - t0
    return rec


def _train_idx(folds: Sequence[Fold]) -> np.ndarray:
    """Every index some fold trains on: the labels a study may look at (never an outer test fold)."""
    return np.unique(np.concatenate([np.asarray(f.train) for f in folds]))


def _requeue(study: Any, frozen: Any) -> None:
    """Queue a WAITING copy of an interrupted trial (same parameters) the way Optuna's
    `RetryHeartbeatStaleTrialCallback` re-queues a dead worker's trial (`failed_trial`,
    `retry_history` system attributes, at most `MAX_RETRY` re-runs), so the next worker that asks,
    or this study resumed, runs it. The copy starts without the interrupted run's user attributes."""
    import optuna

    attrs: dict[str, Any] = {"failed_trial": frozen.number, **frozen.system_attrs}
    attrs["retry_history"] = [*attrs.get("retry_history", []), frozen.number]
    if len(attrs["retry_history"]) > MAX_RETRY:
        log.warning("trial %d was interrupted; its configuration already ran %d times, so it is not re-queued",
                    frozen.number, len(attrs["retry_history"]))
        return
    try:
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=frozen.params,
                                                  distributions=frozen.distributions, system_attrs=attrs))
    except Exception as exc:  # clean-up after an interrupt: never hide the interrupt itself
        log.warning("trial %d was interrupted and could not be re-queued: %s", frozen.number, exc)


def _set_measures(trial: Any, folds: Sequence[FoldResult], metric: str) -> None:
    """Fold means of each measure and of the gap, stored on the trial for the cross-trial report."""
    with_measures = [f for f in folds if f.measures]
    if not with_measures:
        return
    names = sorted({k for f in with_measures for k in f.measures})
    means = {}
    for k in names:
        vals = np.array([f.measures.get(k, np.nan) for f in with_measures], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            means[k] = float(vals.mean())
    gaps = np.array([f.gaps.get(metric, np.nan) for f in with_measures], dtype=float)
    gaps = gaps[np.isfinite(gaps)]
    trial.set_user_attr("gencv.measures", means)
    if len(gaps):
        trial.set_user_attr("gencv.gap", float(gaps.mean()))


def _finish_trial(ctx: _Ctx, study: Any, trial: Any, run_id: str, state: Any, value: float | None, reason: str,
                  ran: list[int], scores: dict[int, float], penalized: bool,
                  mlflow_status: str | None = None) -> TrialRecord:
    from optuna.trial import TrialState

    metric = ctx.exp.metric
    trial.set_user_attr("gencv.folds_run", ran)
    trial.set_user_attr("gencv.fold_scores", {str(k): v for k, v in scores.items()})
    trial.set_user_attr("gencv.penalized", penalized)
    if reason:
        trial.set_user_attr("gencv.reason", reason[:2000])
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    metrics = {f"fold_{i}_valid_{metric}": v for i, v in scores.items()}
    metrics["n_folds_run"] = float(len(ran))
    if scores:
        metrics[f"valid_{metric}_mean"] = float(np.mean(list(scores.values())))
    if value is not None:
        metrics["objective"] = float(value)
    ctx.tracker.log_metrics(run_id, metrics)
    tags = {"gencv.state": state.name, "gencv.folds_run": ",".join(map(str, ran))}
    if reason:
        tags["gencv.reason"] = reason[:5000]
    if penalized:
        tags["gencv.penalized"] = "true"
    ctx.tracker.set_tags(run_id, tags)
    status = mlflow_status or ("FAILED" if state == TrialState.FAIL else "FINISHED")
    ctx.tracker.end_run(run_id, status)
    frozen = ctx.storage.get_trial(trial._trial_id)
    rec = TrialRecord.from_frozen(frozen, ctx.dims)
    rec.study = ctx.study_name
    if state == TrialState.FAIL:
        ctx.consecutive_failures += 1
        log.warning("trial %d failed: %s", trial.number, reason)
    else:
        ctx.consecutive_failures = 0
    return rec


def _best_value(study: Any) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


def _ask(ctx: _Ctx, study: Any) -> Any:
    """`study.ask()`; a sampler that fails here (a missing package, a bug) fails the trial it was
    creating, never leaves it RUNNING, and stops the study with a clear error."""
    from optuna.trial import TrialState

    before = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return study.ask()
    except Exception as exc:
        new = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t._trial_id not in before]  # the trial this ask created (or took from the queue)
        raise _sampler_failed(ctx, study, new, exc) from exc


def _sampler_failed(ctx: _Ctx, study: Any, trial_ids: Sequence[int], exc: Exception) -> TuningError:
    """Fail the trials a sampler could not fill (re-queue a queued re-run's configuration); the error to raise.

    A sampler error is not one configuration's bad luck: every later trial would hit it too, so
    the study stops, with the cause, instead of failing trial after trial.
    """
    from optuna.trial import TrialState

    sampler = ctx.exp.tune.sampler if ctx.exp.tune else "tpe"
    reason = f"the {sampler} sampler failed to propose a configuration: {type(exc).__name__}: {exc}"
    for trial_id in trial_ids:
        ctx.storage.set_trial_user_attr(trial_id, "gencv.reason", reason[:2000])
        ctx.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        frozen = ctx.storage.get_trial(trial_id)
        if "failed_trial" in frozen.system_attrs:  # a queued re-run: keep its configuration queued
            _requeue(study, frozen)
    log.debug("sampler failure", exc_info=exc)
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    hint = f" Install the missing package: pip install {missing}." if missing else ""
    return TuningError(f"{ctx.label}: {reason}.{hint} Or choose another tune.sampler (tpe, random, gp, cmaes, "
                       "grid); the study is kept (this trial marked FAIL) and can be resumed with --study")


def _optimize(ctx: _Ctx, study: Any, n_trials: int, timeout: float | None, max_failures: int) -> None:
    """This worker's loop: under the study lock, count and ask; run the trial; stop at the study's total.

    When the budget is taken but other workers still run trials, wait: if one of them dies, its
    trial is failed by heartbeat and re-queued, and this worker runs it.
    """
    import optuna

    t0 = time.monotonic()
    poll = max(0.5, min(float(ctx.heartbeat_interval), 5.0))
    grace = float(getattr(ctx.storage, "grace_period", None) or 2 * ctx.heartbeat_interval)
    # A RUNNING trial that never beat (its worker died between ask and the first heartbeat) is
    # never failed by Optuna; stop waiting for others once the study has not moved for this long.
    wait_limit = 3 * grace + 60.0
    last_state: tuple[int, ...] = ()
    last_change = time.monotonic()
    warned_sqlite = False
    while True:
        if timeout is not None and time.monotonic() - t0 >= timeout:
            log.info("%s: timeout of %.0f s reached", ctx.label, timeout)
            return
        trial = None
        with study_lock(ctx.storage, study.study_name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
            counts = _study_counts(study)
            taken = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"]
            exhausted = isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study)
            if counts["RUNNING"] and not warned_sqlite and storage_kind(str(getattr(ctx.storage, "url", ""))) == "sqlite":
                warned_sqlite = True  # this worker runs nothing now: another process does
                log.warning("%s: another worker is running trials of this study in the SQLite storage %s (or one "
                            "died less than a heartbeat grace period ago); SQLite is for one worker (workers "
                            "contend for one file lock and can fail with 'database is locked'); use a "
                            "postgresql:// storage to share a study", ctx.label, redact_url(str(ctx.storage.url)))
            if counts["WAITING"] > 0 or (taken < n_trials and not exhausted):
                trial = _ask(ctx, study)
                # Beat at once: a RUNNING trial without any heartbeat is never detected as stale.
                Heartbeat(ctx.storage, trial._trial_id).beat_once()
        if trial is None:
            if counts["RUNNING"] == 0:
                return
            state = tuple(counts.values())
            if state != last_state:
                last_state, last_change = state, time.monotonic()
            elif time.monotonic() - last_change > wait_limit:
                log.warning("%s: %d trial(s) of other workers have been RUNNING without any change for %.0f s; "
                            "this worker stops waiting for them (their workers finish the study)",
                            ctx.label, counts["RUNNING"], wait_limit)
                return
            time.sleep(poll)
            continue
        rec = _run_trial(ctx, study, trial)
        counts = _study_counts(study)
        ctx.progress.trial_end(rec, counts, _best_value(study))
        if ctx.consecutive_failures >= max_failures:
            raise TuningError(
                f"{ctx.label}: {ctx.consecutive_failures} consecutive trials failed "
                f"(tune.max_consecutive_failures={max_failures}); last reason: {rec.reason}. "
                "Fix the cause, or narrow tune.space; the study is kept and can be resumed with --study"
            )


def _open_study(exp: Experiment, dims: list[Dimension], storage: Any, name: str, sampler_seed: int,
                n_folds: int, *, must_exist: bool = False, cv_field: str = "cv") -> Any:
    """Create or load study `name`; check it belongs to this spec; seed its sampler.

    The sampler's seed also depends on how many trials the study already holds: a resumed study
    re-created with the first session's seed would propose the first session's configurations again.
    """
    import optuna

    direction = METRICS[exp.metric].direction
    pruner = (_make_pruner(exp.tune.pruner, n_folds, exp.tune.pruner_settings(), cv_field) if exp.tune
              else _make_pruner("none", n_folds, {}))
    sampler = _make_sampler(exp, dims, sampler_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    n_before = len(study.get_trials(deepcopy=False))
    if n_before:
        study.sampler = _make_sampler(exp, dims, derive_seed(sampler_seed, "resume", n_before))
    if study.direction.name.lower() != direction:
        raise TuningError(f"--study {name}: the stored study {study.direction.name.lower()}s, but metric "
                          f"{exp.metric!r} needs {direction}; use another study name")
    digest = _study_digest(exp)
    stored = study.user_attrs.get("gencv.spec_digest")
    if stored is None:
        study.set_user_attr("gencv.spec_digest", digest)
        study.set_user_attr("gencv.metric", exp.metric)
        study.set_user_attr("gencv.space", {d.path: d.kind for d in dims})
    elif stored != digest:
        raise TuningError(f"--study {name}: that study was run with another spec or search space "
                          f"(digest {stored}, this spec {digest}); its trials are not comparable. "
                          "Use the same spec and --set values, or another --study name")
    return study


def _study_run(tracker: Tracker, exp: Experiment, study: Any, store: Any, storage_url: str, label: str,
               tags: Mapping[str, str], parent: str | None = None) -> str:
    """The study's MLflow run, shared by every worker: created once (under the study lock), then reused."""
    key = "gencv.mlflow_run_id"
    with study_lock(store, study.study_name):
        if isinstance(tracker, MlflowTracker):
            existing = study.user_attrs.get(key)
            if existing and study.user_attrs.get("gencv.tracking_uri") == redact_url(tracker.tracking_uri):
                try:
                    tracker.client.get_run(existing)
                    tracker.client.update_run(existing, status="RUNNING")
                    return str(existing)
                except Exception:
                    log.info("study run %s not found in %s; starting a new one", existing, tracker.tracking_uri)
        run_id = _real_id(tracker, tracker.start_run(exp.name, label, parent=parent, tags=tags))
        if isinstance(tracker, MlflowTracker):
            study.set_user_attr(key, run_id)
            study.set_user_attr("gencv.tracking_uri", redact_url(tracker.tracking_uri))
            tracker.log_params(run_id, {**exp.flat_params(), "study": study.study_name,
                                        "storage": redact_url(storage_url)})
    return run_id


def _claim_finalize(study: Any, store: Any) -> bool:
    """True for exactly one worker once no trial runs or waits (the last one out writes the report)."""
    with study_lock(store, study.study_name):
        counts = _study_counts(study)
        if counts["RUNNING"] or counts["WAITING"]:
            return False
        total = sum(counts.values())
        if study.user_attrs.get("gencv.finalized_at") == total:
            return False
        study.set_user_attr("gencv.finalized_at", total)
        return True


def _records(study: Any, dims: list[Dimension]) -> list[TrialRecord]:
    return TrialRecord.of_study(study, dims)


def _best_record(study: Any, dims: list[Dimension]) -> TrialRecord | None:
    try:
        best = study.best_trial
    except ValueError:
        return None
    rec = TrialRecord.from_frozen(best, dims)
    return None if rec.penalized else rec


def _close_dead_trial_runs(tracker: Tracker, records: Sequence[TrialRecord]) -> None:
    """MLflow runs of trials whose worker died are still RUNNING, and so is the fold run it was in:
    mark them FAILED with the reason."""
    reason = "worker stopped sending heartbeats (killed?); the trial was re-queued with the same parameters"
    for r in records:
        if r.state == "FAIL" and r.run_id and not r.reason:
            for child in _running_children(tracker, r.run_id):
                tracker.set_tags(child, {"gencv.reason": reason})
                tracker.end_run(child, "FAILED")
            tracker.set_tags(r.run_id, {"gencv.state": "FAIL", "gencv.reason": reason})
            tracker.end_run(r.run_id, "FAILED")


def _running_children(tracker: Tracker, run_id: str) -> list[str]:
    """Ids of the RUNNING child runs of `run_id` (MLflow trackers only; others record nothing to close)."""
    client = getattr(tracker, "client", None)
    if client is None:
        return []
    try:
        exp_id = client.get_run(run_id).info.experiment_id
        runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=1000)
    except Exception as exc:  # the report must not fail on a run another process deleted
        log.info("cannot list the fold runs of dead trial run %s: %s", run_id, exc)
        return []
    return [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def _tag_best(tracker: Tracker, study: Any, best: TrialRecord | None) -> None:
    prev = study.user_attrs.get("gencv.best_run_id")
    if prev and (best is None or prev != best.run_id):
        tracker.set_tags(prev, {"gencv.best_trial": "false"})
    if best is not None and best.run_id:
        tracker.set_tags(best.run_id, {"gencv.best_trial": "true"})
        study.set_user_attr("gencv.best_run_id", best.run_id)


# --------------------------------------------------------------------------- public API


def tune_experiment(
    exp: Experiment,
    *,
    tracker: Tracker | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    nested: bool | None = None,
    progress: TuneProgress | None = None,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    refit: bool = True,
    prepared: Prepared | None = None,
) -> TuneOutcome:
    """Tune `exp.tune.space` by cross-validation; refit the best configuration; log everything.

    Parameters
    ----------
    storage : Optuna storage URL; default sqlite:///mlruns/optuna.db; a postgresql:// URL lets
        several processes share the study; ':memory:' keeps nothing.
    study_name : resume (or join) this study; default: a new name from the spec name and time.
    n_trials : the study's total of COMPLETE + PRUNED trials (default tune.trials); in nested mode,
        per outer fold.
    timeout : seconds this worker keeps starting trials (default tune.timeout).
    nested : nested CV (default tune.nested): tune inside each outer training fold, score the
        outer test fold once with the refit winner; then refit the configuration that won the most
        outer folds on all non-test data. One worker per nested study (a second is refused).
    heartbeat_interval, grace_period : seconds; a RUNNING trial without a heartbeat for
        `grace_period` (default 2 x interval) is failed and re-queued.
    """
    if exp.tune is None:
        raise SpecError("tune: the spec has no tune section; add one with a space, e.g. "
                        "tune: {trials: 20, space: {train.lr: {low: 1.0e-4, high: 1.0e-1, log: true}}}")
    dims = build_space(exp)  # every space error before any data is loaded or any net trained
    tune = exp.tune
    n_trials = int(n_trials if n_trials is not None else tune.trials)
    if n_trials < 1:
        raise GencvError(f"--trials: got {n_trials}; use a positive number of trials")
    timeout = timeout if timeout is not None else tune.timeout
    nested = tune.nested if nested is None else nested
    tracker = tracker or NullTracker()
    progress = progress or _NoProgress()
    prep = prepared or prepare(exp)
    storage_url = storage or DEFAULT_STORAGE
    store = make_storage(storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    kind = storage_kind(storage_url)
    if study_name is None:
        study_name = f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" + ("-nested" if nested else "")
    # One seed per study, from the spec; workers sharing a study (non-SQLite storage) each get
    # their own stream, or they would propose the same configurations.
    worker_key = os.getpid() if kind not in ("sqlite", "memory") else 0
    ctx_args = dict(exp=exp, prep=prep, dims=dims, tracker=tracker, storage=store, progress=progress,
                    heartbeat_interval=heartbeat_interval, measure_config=_measure_config(exp))
    tags = {**run_tags(exp, prep.dataset), "gencv.kind": "study", "gencv.study": study_name,
            "gencv.storage": redact_url(storage_url), "gencv.nested": str(bool(nested)).lower(),
            "gencv.sampler": tune.sampler, "gencv.pruner": tune.pruner}
    if nested:
        return _tune_nested(exp, prep, dims, store, storage_url, study_name, n_trials, timeout, tracker, progress,
                            tags, ctx_args, worker_key, refit)
    # (A second worker on SQLite is warned about by _optimize, whenever it shows up.)
    study = _open_study(exp, dims, store, study_name, derive_seed(exp.seed, "sampler", worker_key), len(prep.folds))
    run_id = _study_run(tracker, exp, study, store, storage_url, study_name, tags)
    ctx = _Ctx(folds=prep.folds, study_run=run_id, study_name=study_name, label=f"study {study_name}", **ctx_args)
    counts = _study_counts(study)
    progress.study_start(study_name, n_trials, counts["COMPLETE"] + counts["PRUNED"], "trials")
    try:
        _optimize(ctx, study, n_trials, timeout, tune.max_consecutive_failures)
    except KeyboardInterrupt:
        if _study_counts(study)["RUNNING"] == 0:
            tracker.end_run(run_id, "KILLED")
        _flush(tracker)
        raise
    except TuningError as exc:
        tracker.set_tags(run_id, {"gencv.stopped": str(exc)[:5000]})
        tracker.end_run(run_id, "FAILED")
        _flush(tracker)
        raise
    return _finalize_flat(ctx, study, n_trials, refit)


def _finalize_flat(ctx: _Ctx, study: Any, n_trials: int, refit: bool) -> TuneOutcome:
    exp, tracker, run_id = ctx.exp, ctx.tracker, ctx.study_run
    records = _records(study, ctx.dims)
    best = _best_record(study, ctx.dims)
    outcome = TuneOutcome(exp, study.study_name, redact_url(str(getattr(ctx.storage, "url", ":memory:"))),
                          METRICS[exp.metric].direction, exp.metric, records, best,
                          run_id=None if isinstance(tracker, NullTracker) else run_id)
    counts = outcome.counts
    if best is None:
        outcome.notes.append("no trial completed: nothing to refit; see the failed trials' reasons")
    else:
        outcome.notes.append(
            f"the best CV {exp.metric} ({best.value:.4f}, trial {best.number}) is optimistic: it is the best of "
            f"{counts['COMPLETE']} completed trials scored on the same folds it was selected on. Quote the refit "
            "model's held-out test score, or run with --nested for an unbiased estimate of the tuning procedure")
    if counts["COMPLETE"] + counts["PRUNED"] < n_trials:
        outcome.notes.append(f"the study has {counts['COMPLETE'] + counts['PRUNED']} of {n_trials} trials "
                             "(timeout, exhausted grid, or stopped); resume with --study " + study.study_name)
    if not _claim_finalize(study, ctx.storage):
        outcome.finalized = False
        outcome.notes.append("another worker is finishing this study (refit, plots, report); this worker only ran trials")
        _flush(tracker)
        return outcome
    _close_dead_trial_runs(tracker, records)
    _tag_best(tracker, study, best)
    summary = {"n_trials": float(len(records)), **{f"n_{k.lower()}": float(v) for k, v in counts.items()}}
    if best is not None and best.value is not None:
        summary[f"best_valid_{exp.metric}"] = float(best.value)
        summary["best_trial"] = float(best.number)
        tracker.log_params(run_id, {f"best.{k}": v for k, v in best.params.items()})
    tracker.log_metrics(run_id, summary)
    if exp.measures:
        outcome.measure_report = measure_gap_report([r for r in records if r.state == "COMPLETE" and not r.penalized],
                                                    ctx.dims, exp.metric)
    status = "FINISHED"
    try:
        if refit and best is not None:
            best_exp = exp.with_overrides(best.params)
            outcome.refit_estimator, outcome.refit_test_scores = _refit(best_exp, ctx.prep, tracker, run_id)
        _log_study_artifacts(tracker, run_id, study, outcome)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)
        _flush(tracker)
    return outcome


def _log_study_artifacts(tracker: Tracker, run_id: str, study: Any, outcome: TuneOutcome) -> None:
    if isinstance(tracker, NullTracker):
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(outcome.experiment.to_yaml())
        outcome.trials_table().to_csv(d / "trials.csv", index=False)
        (d / "summary.md").write_text(summary_markdown(outcome))
        plots = d / "plots"
        study_plots(study, plots)
        if outcome.measure_report is not None and not outcome.measure_report.empty:
            outcome.measure_report.to_csv(d / "measures_vs_gap.csv", index=False)
            records = [r for r in outcome.trials if r.state == "COMPLETE" and not r.penalized]
            plot_measures_vs_gap_trials(records, outcome.measure_report, plots / "measures_vs_gap_trials.png",
                                        outcome.metric)
        for p in d.iterdir():
            if p.is_dir() and not any(p.iterdir()):
                continue
            tracker.log_artifact(run_id, p, p.name if p.is_dir() else None)


def _tune_nested(exp: Experiment, prep: Prepared, dims: list[Dimension], store: Any, storage_url: str,
                 study_name: str, n_trials: int, timeout: float | None, tracker: Tracker, progress: Any,
                 tags: Mapping[str, str], ctx_args: dict[str, Any], worker_key: int, refit: bool) -> TuneOutcome:
    """Nested CV: for each outer fold, tune on inner folds of its training part, refit, score its test part once.

    Then the final model: the configuration that won the most outer folds (ties: the best mean inner
    CV score; both chosen without any outer test score) refit on all non-test data and scored once
    on the held-out test set. One worker per nested study: a second one is refused with a clear error.
    """
    assert exp.tune is not None
    ds = prep.dataset
    metric = exp.metric
    sign = 1.0 if METRICS[metric].higher_is_better else -1.0
    _check_nested_alone(store, study_name)  # before any run is created or any outer fold refit again
    root_run = _real_id(tracker, tracker.start_run(exp.name, study_name, tags=tags))
    tracker.log_params(root_run, {**exp.flat_params(), "study": study_name, "storage": redact_url(storage_url)})
    folds_out: list[NestedFold] = []
    all_records: list[TrialRecord] = []
    studies: list[tuple[int, Any]] = []
    winners: dict[int, TrialRecord] = {}
    status = "FAILED"
    try:
        for outer in prep.folds:
            k = outer.index
            inner = make_folds(exp.tune.inner_cv, y=ds.y, task=ds.task, seed=derive_seed(exp.seed, "inner_cv", k),
                               indices=outer.train, groups=ds.groups, is_time_series=ds.is_time_series,
                               min_gap=ds.min_gap, field="tune.inner_cv")
            name = f"{study_name}-outer{k}"
            study = _open_study(exp, dims, store, name, derive_seed(exp.seed, "sampler", "outer", k, worker_key),
                                len(inner), cv_field="tune.inner_cv")
            _check_nested_alone(store, study_name, study)
            studies.append((k, study))
            outer_run = tracker.start_run(exp.name, f"outer-{k}", parent=root_run,
                                          tags={"gencv.kind": "outer_fold", "gencv.fold": str(k),
                                                "gencv.study": name})
            ctx = _Ctx(folds=inner, study_run=outer_run, study_name=name, label=f"outer fold {k}", **ctx_args)
            counts = _study_counts(study)
            progress.study_start(name, n_trials, counts["COMPLETE"] + counts["PRUNED"], f"outer {k} trials")
            try:
                _optimize(ctx, study, n_trials, timeout, exp.tune.max_consecutive_failures)
            except BaseException:
                tracker.end_run(outer_run, "KILLED")
                raise
            records = _records(study, dims)
            all_records += records
            best = _best_record(study, dims)
            _tag_best(tracker, study, best)
            if best is None or best.value is None:
                tracker.end_run(outer_run, "FAILED")
                raise TuningError(f"outer fold {k}: no inner trial completed, so there is no winner to refit; "
                                  "see the trials' reasons (gencv.reason tags)")
            best.study = name
            winners[k] = best
            winner = exp.with_overrides(best.params)
            est = make_estimator(winner, ds)
            res = fit_and_score(est, ds.X, ds.y, Fold(k, outer.train, outer.valid), metric=metric,
                                seed=derive_seed(exp.seed, "outer", k), measures=exp.measures,
                                measure_config=ctx.measure_config)
            score = res.valid_scores.get(metric, float("nan")) if res.ok else float("nan")
            tracker.log_params(outer_run, {f"best.{p}": v for p, v in best.params.items()})
            tracker.log_metrics(outer_run, {f"outer_test_{metric}": score, f"best_inner_{metric}": float(best.value),
                                            "n_trials": float(len(records)), "best_trial": float(best.number)})
            tracker.set_tags(outer_run, {"gencv.status": res.status, **({"gencv.reason": res.reason} if res.reason else {})})
            tracker.end_run(outer_run, "FINISHED" if res.ok else "FAILED")
            res.estimator = None
            folds_out.append(NestedFold(k, outer.train, outer.valid, inner, name, dict(best.params),
                                        float(best.value), float(score), res, len(records)))
        outer_scores = [f.outer_score for f in folds_out]
        inner_best = [f.best_inner_value for f in folds_out]
        est_summary = summarize(outer_scores, bounds=METRICS[metric].bounds)
        inner_summary = summarize(inner_best, bounds=METRICS[metric].bounds)
        optimism = sign * (inner_summary["mean"] - est_summary["mean"])
        chosen = _nested_choice(folds_out, higher_is_better=sign > 0)
        nested_est = NestedEstimate(folds_out, metric, est_summary, inner_summary, float(optimism),
                                    final_params=dict(folds_out[chosen[0]].best_params),
                                    final_outer_folds=[folds_out[i].index for i in chosen])
        final = winners[folds_out[chosen[0]].index]
        outcome = TuneOutcome(exp, study_name, redact_url(storage_url), METRICS[metric].direction, metric,
                              all_records, final, nested=nested_est,
                              run_id=None if isinstance(tracker, NullTracker) else root_run)
        outcome.notes.append(
            f"nested CV estimate of the tuning procedure: {metric} {est_summary['mean']:.4f} "
            f"(95% interval {est_summary['ci_low']:.4f} to {est_summary['ci_high']:.4f}, {est_summary['n']} outer folds); "
            f"the inner best CV scores average {inner_summary['mean']:.4f}, an optimism of {optimism:+.4f}")
        outcome.notes.append(
            f"final model: the configuration chosen by outer folds {nested_est.final_outer_folds} "
            f"(of {len(folds_out)}; most outer wins, ties broken by the best inner CV score, no outer test score "
            "used) refit on all non-test data; quote the nested estimate for the procedure and the held-out "
            "test score for this model")
        failed_outer = [f.index for f in folds_out if not np.isfinite(f.outer_score)]
        if failed_outer:
            outcome.notes.append(f"outer folds {failed_outer} failed when refitting the winner; the estimate uses the others")
        metrics = {f"nested_{metric}_{k}": float(v) for k, v in est_summary.items() if k != "n"}
        metrics |= {f"inner_best_{metric}_mean": inner_summary["mean"], "optimism": float(optimism)}
        tracker.log_metrics(root_run, metrics)
        tracker.log_params(root_run, {f"final.{p}": v for p, v in nested_est.final_params.items()})
        tracker.set_tags(root_run, {"gencv.final_from_outer_folds": ",".join(map(str, nested_est.final_outer_folds))})
        _close_dead_trial_runs(tracker, all_records)
        if exp.measures:
            outcome.measure_report = measure_gap_report(
                [r for r in all_records if r.state == "COMPLETE" and not r.penalized], dims, metric)
        if refit:
            outcome.refit_estimator, outcome.refit_test_scores = _refit(
                exp.with_overrides(nested_est.final_params), prep, tracker, root_run)
        _log_nested_artifacts(tracker, root_run, outcome, studies)
        status = "FINISHED"
        return outcome
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(root_run, status)
        _flush(tracker)


def _nested_choice(folds: Sequence[NestedFold], higher_is_better: bool) -> list[int]:
    """Positions (in `folds`) of the outer folds whose winner is refit as the final model.

    The configuration that won the most outer folds; ties (always, in a continuous space) go to the
    best mean inner CV score. Outer test scores are never looked at, so the held-out test set
    stays the only score of the final model.
    """
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(folds):
        groups.setdefault(json.dumps(f.best_params, sort_keys=True, default=str), []).append(i)
    sign = 1.0 if higher_is_better else -1.0

    def rank(members: list[int]) -> tuple[int, float, int]:
        return len(members), sign * float(np.mean([folds[i].best_inner_value for i in members])), -members[0]

    return max(groups.values(), key=rank)


def _check_nested_alone(store: Any, study_name: str, study: Any = None) -> None:
    """Nested mode is for one worker: refuse a study whose outer-fold studies have trials RUNNING elsewhere.

    Outer folds run one after another and each worker would refit every outer winner and write its
    own run tree, so a second worker would repeat work rather than share it. Trials of a dead worker
    are failed (and re-queued) by heartbeat first, so a crashed run can be resumed.
    """
    import optuna

    if study is None:
        prefix = f"{study_name}-outer"
        names = [s.study_name for s in store.get_all_studies() if s.study_name.startswith(prefix)
                 and s.study_name[len(prefix):].isdigit()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in sorted(names):
                _check_nested_alone(store, study_name, optuna.load_study(study_name=name, storage=store,
                                                                         sampler=optuna.samplers.RandomSampler()))
        return
    with study_lock(store, study.study_name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    if running:
        who = sorted({str(t.user_attrs.get("gencv.worker", "unknown")) for t in running})
        grace = getattr(store, "grace_period", None)
        raise TuningError(
            f"--nested: study {study.study_name} has {len(running)} trial(s) RUNNING in another worker "
            f"({', '.join(who)}); nested mode runs one worker per study (each worker would refit every outer "
            "fold again). Wait for that worker to finish, or use another --study name; to share the work of one "
            "study between workers, tune without --nested. If that worker died, its trials are failed and "
            f"re-queued once its last heartbeat is older than {f'{grace} s' if grace else 'the grace period'}; "
            "run this again then")


def _log_nested_artifacts(tracker: Tracker, run_id: str, outcome: TuneOutcome,
                          studies: Sequence[tuple[int, Any]]) -> None:
    if isinstance(tracker, NullTracker) or outcome.nested is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(outcome.experiment.to_yaml())
        pd.DataFrame([{"outer_fold": f.index, "n_train": len(f.outer_train), "n_test": len(f.outer_test),
                       "best_inner": f.best_inner_value, "outer_score": f.outer_score, "study": f.study_name,
                       "final": f.index in outcome.nested.final_outer_folds,
                       **{f"param {k}": v for k, v in f.best_params.items()}} for f in outcome.nested.folds]
                     ).to_csv(d / "nested.csv", index=False)
        outcome.trials_table().to_csv(d / "trials.csv", index=False)
        (d / "summary.md").write_text(summary_markdown(outcome))
        plots = d / "plots"
        for k, study in studies:  # one set of Optuna plots per outer fold's study
            study_plots(study, plots / f"outer{k}")
        if outcome.measure_report is not None and not outcome.measure_report.empty:
            outcome.measure_report.to_csv(d / "measures_vs_gap.csv", index=False)
            records = [r for r in outcome.trials if r.state == "COMPLETE" and not r.penalized]
            plots.mkdir(exist_ok=True)
            plot_measures_vs_gap_trials(records, outcome.measure_report, plots / "measures_vs_gap_trials.png",
                                        outcome.metric)
        for p in d.iterdir():
            if p.is_dir() and not any(p.rglob("*.png")):
                continue
            tracker.log_artifact(run_id, p, p.name if p.is_dir() else None)


def summary_markdown(outcome: TuneOutcome) -> str:
    """A short markdown report of a study (or a nested study)."""
    m = outcome.metric
    lines = [f"# Tuning {outcome.experiment.name}: study {outcome.study_name}", "",
             f"Primary metric **{m}** ({outcome.direction}); storage `{outcome.storage}`.", ""]
    c = outcome.counts
    lines.append(f"Trials: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed.")
    lines.append("")
    if outcome.nested is not None:
        e, ib = outcome.nested.estimate, outcome.nested.inner_best
        lines += ["## Nested CV", "",
                  f"- nested estimate: {e['mean']:.4f} ± {e['std']:.4f} (95% interval {e['ci_low']:.4f} – {e['ci_high']:.4f})",
                  f"- mean best inner CV score: {ib['mean']:.4f}",
                  f"- optimism (inner best − nested, signed): {outcome.nested.optimism:+.4f}", ""]
    if outcome.nested is not None:
        n = outcome.nested
        lines += ["## Final model", "",
                  f"- the winner of outer folds {n.final_outer_folds} (most outer wins, ties by the best inner CV "
                  "score), refit on all non-test data"]
        lines += [f"- `{k}` = {v}" for k, v in n.final_params.items()] + [""]
    elif outcome.best is not None:
        lines += ["## Best trial", "", f"- trial {outcome.best.number}: {m} {outcome.best.value:.4f}"]
        lines += [f"- `{k}` = {v}" for k, v in outcome.best.params.items()] + [""]
    if outcome.refit_test_scores:
        lines += ["## Refit of the best configuration, held-out test set", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in outcome.refit_test_scores.items()] + [""]
    table = outcome.trials_table()
    if not table.empty:
        lines += ["## Trials", "", table.drop(columns=["reason"]).to_markdown(index=False, floatfmt=".4g"), ""]
    if outcome.measure_report is not None and not outcome.measure_report.empty:
        lines += ["## Measures vs generalization gap across trials (Kendall tau)", "",
                  outcome.measure_report.to_markdown(index=False, floatfmt=".3f"), ""]
    if outcome.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in outcome.notes] + [""]
    return "\n".join(lines)


def outcome_json(outcome: TuneOutcome) -> dict[str, Any]:
    """A JSON-serialisable summary for `--json` output."""

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        return x

    nested = None
    if outcome.nested is not None:
        nested = {"estimate": outcome.nested.estimate, "inner_best": outcome.nested.inner_best,
                  "optimism": outcome.nested.optimism, "final_params": outcome.nested.final_params,
                  "final_outer_folds": outcome.nested.final_outer_folds,
                  "folds": [{"index": f.index, "best_params": f.best_params, "best_inner": f.best_inner_value,
                             "outer_score": f.outer_score, "n_train": len(f.outer_train), "n_test": len(f.outer_test),
                             "study": f.study_name} for f in outcome.nested.folds]}
    return clean({
        "study": outcome.study_name, "storage": outcome.storage, "metric": outcome.metric,
        "direction": outcome.direction, "run_id": outcome.run_id, "counts": outcome.counts,
        "best": None if outcome.best is None else {"trial": outcome.best.number, "value": outcome.best.value,
                                                   "params": outcome.best.params, "study": outcome.best.study},
        "refit_test_scores": outcome.refit_test_scores, "nested": nested, "finalized": outcome.finalized,
        "trials": [{"study": t.study, "trial": t.number, "state": t.state, "value": t.value, "params": t.params,
                    "folds_run": t.folds_run, "reason": t.reason, "penalized": t.penalized} for t in outcome.trials],
        "measure_report": None if outcome.measure_report is None else outcome.measure_report.to_dict(orient="records"),
        "notes": outcome.notes,
    })
