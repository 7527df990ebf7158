"""The trial loop: ask, cross-validate one configuration fold by fold, report, tell; failures and divergence."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gencv.cv import FoldResult, cross_validate
from gencv.engines import engine_used
from gencv.errors import Terminated
from gencv.metrics import METRICS
from gencv.runner import Prepared, make_estimator
from gencv.seeds import derive_seed
from gencv.spec import Experiment
from gencv.splits import Fold, folds_digest
from gencv.tracking import Tracker
from gencv.tuning.records import TrialRecord, TuningError, study_counts
from gencv.tuning.space import Dimension, suggest
from gencv.tuning.storage import (
    MAX_RETRY,
    Heartbeat,
    redact_url,
    storage_kind,
    study_lock,
)

log = logging.getLogger(__name__)


class _Diverged(Exception):
    pass


class _FoldFailed(Exception):
    pass


def divergence_penalty(metric: str, y: np.ndarray, task: str, completed: Sequence[float]) -> float:
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
class TrialContext:
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


def real_run_id(tracker: Tracker, run_id: str) -> str:
    """MLflow's run id (an asynchronous tracker hands out provisional ids until the run is written)."""
    resolve = getattr(tracker, "resolve", None)
    return str(resolve(run_id)) if callable(resolve) else run_id


def flush_tracker(tracker: Tracker) -> None:
    flush = getattr(tracker, "flush", None)
    if callable(flush):
        flush()


def worker_id() -> str:
    """host:pid: the worker a trial ran in (`gencv.worker`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fold_order(exp: Experiment, number: int, n: int) -> list[int]:
    rng = np.random.default_rng(derive_seed(exp.seed, "trial", number, "fold_order"))
    return [int(i) for i in rng.permutation(n)]


def _run_trial(ctx: TrialContext, study: Any, trial: Any, engine: Any = None, population: str = "") -> TrialRecord:
    """Cross-validate one configuration; tell the study how it ended; log it as a child run.

    `engine`: the engine that hands back this trial's folds (a population's `PrefitEngine`: trained
    already, so fold-level pruning would save nothing and is skipped); default the spec's `train.engine`.
    """
    with Heartbeat(ctx.storage, trial._trial_id):
        return _run_trial_body(ctx, study, trial, engine, population)


def _run_trial_body(ctx: TrialContext, study: Any, trial: Any, engine: Any = None, population: str = "") -> TrialRecord:
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
    tags = {"gencv.kind": "trial", "gencv.trial": str(number), "gencv.study": ctx.study_name,
            "gencv.folds_digest": folds_digest(ctx.folds), "gencv.engine": exp.train.engine if engine is None
            else engine.name, "gencv.data_digest": ctx.prep.dataset.digest, "gencv.seed": str(exp.seed)}
    if population:
        tags["gencv.population"] = population
    retried = ctx.storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
    if retried is not None:
        tags["gencv.retry_of"] = str(retried)
    run_id = real_run_id(ctx.tracker, ctx.tracker.start_run(exp.name, f"trial-{number}", parent=ctx.study_run, tags=tags))
    trial.set_user_attr("gencv.run_id", run_id)
    worker = worker_id()
    trial.set_user_attr("gencv.worker", worker)
    seed = study.user_attrs.get(f"gencv.sampler_seed.{worker}")  # set when this worker joined (open_study)
    if seed is not None:
        trial.set_user_attr("gencv.sampler_seed", seed)
    ctx.tracker.log_params(run_id, {**overrides, "trial": number})
    order = fold_order(exp, number, len(ctx.folds))
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
        if engine is None and pos < len(ctx.folds) - 1 and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {pos + 1} of {len(ctx.folds)} folds "
                                     f"(running mean {metric} {np.mean(list(scores.values())):.4f})")

    state, value, reason, penalized = TrialState.COMPLETE, None, "", False
    try:
        trial_exp = exp.with_overrides(overrides)
        est = make_estimator(trial_exp, ds, module=ctx.prep.module, base=ctx.prep.estimator.base)
        if engine is None and (trial_exp.train.engine != exp.train.engine or exp.train.engine == "auto"):
            ctx.tracker.set_tags(run_id, {"gencv.engine": engine_used(trial_exp.train.engine, est)})
        cv = cross_validate(est, ds.X, ds.y, ctx.folds, metric=metric, seed=exp.seed,
                            measures=exp.measures, measure_config=ctx.measure_config, tracker=ctx.tracker,
                            experiment=exp.name, parent_run=run_id, on_fold_end=on_fold_end, fold_order=order,
                            groups=ds.groups, engine=trial_exp.train.engine if engine is None else engine,
                            train_fraction=trial_exp.data.train_fraction, data=ctx.prep.data_ref)
        value = float(np.mean([scores[i] for i in sorted(scores)]))
        if (pruned := getattr(engine, "pruned", None)) is not None:  # tune.population_pruning stopped its members
            raise optuna.TrialPruned(f"population pruning: stopped at epoch {pruned[0]} of {trial_exp.train.max_epochs}"
                                     f", its mean held-out loss {pruned[1]:.4g} above the population's median "
                                     f"{pruned[2]:.4g}")
        _set_measures(trial, cv.ok_folds, metric)
    except optuna.TrialPruned as exc:
        state, reason = TrialState.PRUNED, str(exc)
    except _Diverged as exc:
        reason = str(exc)
        if exp.tune is not None and exp.tune.divergence == "penalty":
            done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            value = divergence_penalty(metric, ds.y[_train_idx(ctx.folds)], ds.task, done)
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


def _finish_trial(ctx: TrialContext, study: Any, trial: Any, run_id: str, state: Any, value: float | None, reason: str,
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


def _ask(ctx: TrialContext, study: Any) -> Any:
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


def _sampler_failed(ctx: TrialContext, study: Any, trial_ids: Sequence[int], exc: Exception) -> TuningError:
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


def optimize(ctx: TrialContext, study: Any, n_trials: int, timeout: float | None, max_failures: int) -> None:
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
        batch: list[Any] = []
        try:
            with study_lock(ctx.storage, study.study_name):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(study)
                counts = study_counts(study)
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
                    batch = [trial, *_ask_more(ctx, study, n_trials, counts["WAITING"] - 1, taken + 1)]
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
            records = _run_batch(ctx, study, batch) if len(batch) > 1 else iter([_run_trial(ctx, study, trial)])
        except (KeyboardInterrupt, SystemExit):  # asked but not yet under _run_trial's own handling: re-queued
            _abandon(ctx, study, batch or ([trial] if trial is not None else []), "interrupted as it started")
            raise
        try:
            for rec in records:
                counts = study_counts(study)
                ctx.progress.trial_end(rec, counts, _best_value(study))
                if ctx.consecutive_failures >= max_failures:
                    raise TuningError(
                        f"{ctx.label}: {ctx.consecutive_failures} consecutive trials failed "
                        f"(tune.max_consecutive_failures={max_failures}); last reason: {rec.reason}. "
                        "Fix the cause, or narrow tune.space; the study is kept and can be resumed with --study"
                    )
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()  # a batch stopped early re-queues the trials it did not score


def _ask_more(ctx: TrialContext, study: Any, n_trials: int, waiting: int, taken: int) -> list[Any]:
    """Up to `tune.batch_trials - 1` more trials (queued ones first), within the study's budget; beaten once."""
    import optuna

    n = (ctx.exp.tune.batch_trials if ctx.exp.tune is not None else 1) - 1
    more: list[Any] = []
    while len(more) < n:
        grid = isinstance(study.sampler, optuna.samplers.GridSampler)
        if waiting <= 0 and (taken >= n_trials or (grid and study.sampler.is_exhausted(study))):
            break
        trial = _ask(ctx, study)
        Heartbeat(ctx.storage, trial._trial_id).beat_once()
        more.append(trial)
        waiting, taken = waiting - 1, taken + 1  # a queued trial asked is RUNNING now, as a new one is
    return more


def _run_batch(ctx: TrialContext, study: Any, trials: list[Any]) -> Iterator[TrialRecord]:
    """`tune.batch_trials`: train the asked trials together, then score, record and tell each one.

    Trials whose configuration the batched engine supports train as one population (trials x folds,
    `BatchedEngine.fit_population`: stacks by architecture and batch size, per-member lr, weight decay,
    L1, dropout and patience); each is then cross-validated from its trained members exactly as
    `_run_trial` records a trial alone (fold runs, fold scores, divergence of a member failing its trial
    only). Fold-level pruning is skipped for them: every fold has trained already. The other trials
    run one by one, with the reason logged. Yields each trial's record as it is told.
    """
    from gencv.engines import BatchedEngine, PrefitEngine
    from gencv.engines.batched import unsupported_setting

    with Heartbeat(ctx.storage, [t._trial_id for t in trials]):  # every trial of the batch, until its turn
        exp, ds = ctx.exp, ctx.prep.dataset
        try:
            overrides = [suggest(t, ctx.dims) for t in trials]
        except Exception as exc:
            raise _sampler_failed(ctx, study, [t._trial_id for t in trials], exc) from exc
        ests: dict[int, Any] = {}
        for j, (trial, values) in enumerate(zip(trials, overrides)):
            try:
                trial_exp = exp.with_overrides(values)
                est = make_estimator(trial_exp, ds, module=ctx.prep.module, base=ctx.prep.estimator.base)
                why = unsupported_setting(est) or ("data.train_fraction below 1 (folds are subsampled per trial)"
                                                   if trial_exp.data.train_fraction < 1 else None)
            except Exception as exc:  # the trial run alone reports (and fails on) the same error
                why = f"{type(exc).__name__}: {exc}"
            if why is None:
                ests[j] = est
            else:
                log.info("%s: trial %d runs alone, not in the population: %s", ctx.label, trial.number, why)
        fits: dict[int, list[Any]] = {}
        if ests:
            seeds = [derive_seed(exp.seed, "fold", i) for i in range(len(ctx.folds))]  # cross_validate's fold seeds
            try:
                out = BatchedEngine().fit_population(list(ests.values()), ds.X, ds.y, ctx.folds, seeds,
                                                     groups=ds.groups, prune=exp.tune.population_pruning
                                                     if exp.tune is not None else "none")
                fits = dict(zip(ests, out))
            except (KeyboardInterrupt, SystemExit):
                _abandon(ctx, study, trials, "interrupted while its population trained")
                raise
            except Exception as exc:  # not one member's failure (those are per fold): the trials run alone
                log.warning("%s: the population of trials %s failed (%s: %s); running them one by one", ctx.label,
                            [trials[j].number for j in ests], type(exc).__name__, exc)
        label = f"trials {','.join(str(trials[j].number) for j in fits)} ({len(fits)} x {len(ctx.folds)} folds)"
        try:
            for j, trial in enumerate(trials):
                prefit = PrefitEngine(fits[j]) if j in fits else None
                yield _run_trial(ctx, study, trial, prefit, label if j in fits else "")
        except (KeyboardInterrupt, SystemExit, GeneratorExit):  # an interrupted trial re-queued itself; the rest:
            _abandon(ctx, study, trials, "its batch stopped before it was scored")
            raise


def _finished(ctx: TrialContext, trial: Any) -> bool:
    return bool(ctx.storage.get_trial(trial._trial_id).state.is_finished())


def _abandon(ctx: TrialContext, study: Any, trials: Sequence[Any], why: str) -> None:
    """Fail trials of a batch that will not be scored (re-queued with the same parameters, as an interrupt is)."""
    from optuna.trial import TrialState

    for trial in trials:
        if _finished(ctx, trial):
            continue
        ctx.storage.set_trial_user_attr(trial._trial_id, "gencv.reason", f"{why}; re-queued as a WAITING trial")
        ctx.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        _requeue(study, ctx.storage.get_trial(trial._trial_id))

