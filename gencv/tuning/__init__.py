"""Hyperparameter tuning with Optuna over the same cross-validation as `gencv run`.

One trial = one configuration = the mean primary metric over the spec's CV folds, each fold
reported as an intermediate value so a pruner can stop a hopeless trial early. Studies live in an
Optuna storage (SQLite by default, PostgreSQL to share one study between worker processes);
every trial, and every fold of it, is an MLflow run under the study run.

Trial budget: `n_trials` is the study's TOTAL of COMPLETE + PRUNED trials, whichever worker ran
them. FAILED trials do not count (they are bounded by `tune.max_consecutive_failures`); a trial
whose worker died is failed by heartbeat and re-queued with the same parameters, and its re-run
counts once. Workers take the study lock to count and ask atomically, so the total is exact.

Modules: `space` (search space from the spec), `storage` (Optuna storages, locks, heartbeats),
`samplers` and `pruners` (strategies by name), `trials` (the trial loop), `study` (one flat study),
`nested` (nested CV), `tune` (the entry point), `records` (result types), `report` and `summary`
(plots, markdown, JSON).
"""

from __future__ import annotations

from gencv.tuning.records import NestedEstimate, NestedFold, TrialRecord, TuneOutcome, TuneProgress, TuningError
from gencv.tuning.space import build_space
from gencv.tuning.storage import DEFAULT_STORAGE
from gencv.tuning.summary import outcome_json, summary_markdown
from gencv.tuning.tune import tune_experiment

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
    "summary_markdown",
    "tune_experiment",
]
