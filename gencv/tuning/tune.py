"""`tune_experiment`: the public entry point of tuning (flat or nested)."""

from __future__ import annotations

import logging
import os
import time

from gencv.errors import GencvError, SpecError
from gencv.runner import Prepared, measure_config_for, prepare, run_tags
from gencv.seeds import derive_seed
from gencv.spec import Experiment
from gencv.tracking import NullTracker, Tracker
from gencv.tuning.nested import tune_nested
from gencv.tuning.records import NoTuneProgress, TuneOutcome, TuneProgress, TuningError, study_counts
from gencv.tuning.space import build_space
from gencv.tuning.storage import (
    DEFAULT_STORAGE,
    make_storage,
    redact_url,
)
from gencv.tuning.study import finalize_flat, open_study, start_study_run
from gencv.tuning.trials import TrialContext, flush_tracker, optimize

log = logging.getLogger(__name__)


def default_study_name(exp: Experiment, nested: bool) -> str:
    """A new study's name when none is given: the spec name, the time and this process id."""
    return f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" + ("-nested" if nested else "")


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
    progress = progress or NoTuneProgress()
    prep = prepared or prepare(exp, tracking_uri=getattr(tracker, "tracking_uri", None))  # model.base's store
    storage_url = storage or DEFAULT_STORAGE
    store = make_storage(storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if study_name is None:
        study_name = default_study_name(exp, nested)
    # One seed per study, from the spec; each worker that joins a study gets its own stream from
    # its join number (open_study), or workers would propose the same configurations.
    worker_key = 0
    ctx_args = dict(exp=exp, prep=prep, dims=dims, tracker=tracker, storage=store, progress=progress,
                    heartbeat_interval=heartbeat_interval, measure_config=measure_config_for(exp))
    tags = {**run_tags(exp, prep.dataset, prep.folds), "gencv.kind": "study", "gencv.study": study_name,
            "gencv.storage": redact_url(storage_url), "gencv.nested": str(bool(nested)).lower(),
            "gencv.sampler": tune.sampler, "gencv.pruner": tune.pruner}
    if nested:
        return tune_nested(exp, prep, dims, store, storage_url, study_name, n_trials, timeout, tracker, progress,
                            tags, ctx_args, worker_key, refit)
    # (A second worker on SQLite is warned about by optimize, whenever it shows up.)
    study = open_study(exp, dims, store, study_name, derive_seed(exp.seed, "sampler", worker_key), len(prep.folds))
    run_id = start_study_run(tracker, exp, study, store, storage_url, study_name, tags)
    tracker.log_inputs(run_id, [prep.data_ref])  # idempotent: a second worker adds nothing
    ctx = TrialContext(folds=prep.folds, study_run=run_id, study_name=study_name, label=f"study {study_name}", **ctx_args)
    counts = study_counts(study)
    progress.study_start(study_name, n_trials, counts["COMPLETE"] + counts["PRUNED"], "trials")
    try:
        optimize(ctx, study, n_trials, timeout, tune.max_consecutive_failures)
    except KeyboardInterrupt:
        if study_counts(study)["RUNNING"] == 0:
            tracker.end_run(run_id, "KILLED")
        flush_tracker(tracker)
        raise
    except TuningError as exc:
        tracker.set_tags(run_id, {"gencv.stopped": str(exc)[:5000]})
        tracker.end_run(run_id, "FAILED")
        flush_tracker(tracker)
        raise
    return finalize_flat(ctx, study, n_trials, refit)

