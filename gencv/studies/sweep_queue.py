"""A sweep's levels as a queue in an Optuna storage, so that several workers share one sweep.

Each level is one enqueued Optuna trial with the fixed parameter `level` (its index). A worker claims
a waiting trial (under the study lock, and atomically in the storage), runs the level's
cross-validation with a heartbeat, and tells the trial its mean held-out score. A level whose worker
died (no heartbeat for the grace period) is failed and re-queued by the next worker; one stopped by
Ctrl-C or SIGTERM is re-queued at once. The first worker creates the MLflow sweep run; every worker
nests its levels under it; the last worker out writes the sweep's report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gencv.errors import GencvError
from gencv.metrics import METRICS
from gencv.spec import Experiment
from gencv.tracking import MlflowTracker, Tracker
from gencv.tuning.storage import MAX_RETRY, redact_url, study_lock
from gencv.tuning.study import study_digest

__all__ = ["Claim", "SweepQueue", "default_sweep_study_name", "sweep_digest"]

log = logging.getLogger(__name__)

_LEVEL = "level"
_INTERRUPTED = "gencv.interrupted"


def sweep_digest(exp: Experiment, labels: Sequence[str], baseline: int) -> str:
    """What makes two workers' sweeps the same sweep: the spec (as a study digest), the levels, the baseline."""
    raw = json.dumps({"spec": study_digest(exp), "levels": list(labels), "baseline": baseline}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def default_sweep_study_name(exp: Experiment, digest: str) -> str:
    return f"{exp.name}-sweep-{digest[:8]}"


@dataclass(frozen=True)
class Claim:
    """A level this worker runs: the Optuna trial that holds it, and the level's index."""

    trial_id: int
    number: int
    level: int


def _level_of(trial: Any) -> int | None:
    """The level a trial holds: its parameter, or (still waiting) the fixed parameter it was enqueued with."""
    if _LEVEL in trial.params:
        return int(trial.params[_LEVEL])
    fixed = trial.system_attrs.get("fixed_params") or {}
    return int(fixed[_LEVEL]) if _LEVEL in fixed else None


class SweepQueue:
    """The levels of one sweep in an Optuna study shared by its workers."""

    def __init__(self, study: Any, store: Any, labels: Sequence[str]) -> None:
        self.study = study
        self.store = store
        self.labels = list(labels)

    @classmethod
    def open(cls, exp: Experiment, labels: Sequence[str], baseline: int, store: Any, name: str, tracker: Tracker,
             start_run: Callable[[], str]) -> tuple[SweepQueue, str]:
        """Create or join sweep study `name`; return the queue and the MLflow sweep run id.

        The first worker (under the study lock) records the sweep's digest, starts the sweep run with
        `start_run` and enqueues every level; later workers check the digest and reuse the run.
        """
        import optuna

        if not isinstance(tracker, MlflowTracker):
            raise GencvError("sweep --storage: workers share their levels' results through MLflow; turn tracking "
                             "on (drop --no-track) and point every worker at the same --tracking-uri")
        direction = METRICS[exp.metric].direction
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(storage=store, study_name=name, direction=direction, load_if_exists=True)
        digest = sweep_digest(exp, labels, baseline)
        queue = cls(study, store, labels)
        with study_lock(store, name):
            attrs = study.user_attrs
            stored = attrs.get("gencv.sweep_digest")
            if stored is None:
                if study.get_trials(deepcopy=False):
                    raise GencvError(f"--study {name}: that study holds trials of something else (a tuning study?); "
                                     "use another --study name for the sweep")
                run_id = start_run()
                study.set_user_attr("gencv.sweep_digest", digest)
                study.set_user_attr("gencv.sweep_levels", list(labels))
                study.set_user_attr("gencv.mlflow_run_id", run_id)
                study.set_user_attr("gencv.tracking_uri", redact_url(tracker.tracking_uri))
                for i, label in enumerate(labels):
                    study.enqueue_trial({_LEVEL: i}, user_attrs={"gencv.sweep_level": label})
                return queue, run_id
            if stored != digest:
                raise GencvError(f"--study {name}: that sweep was started with another spec, grid or baseline "
                                 f"(digest {stored}, this one {digest}); its levels are not comparable. Use the "
                                 "same spec, --set and --grid values, or another --study name")
            if attrs.get("gencv.tracking_uri") != redact_url(tracker.tracking_uri):
                raise GencvError(f"--study {name}: the sweep records its levels in {attrs.get('gencv.tracking_uri')}, "
                                 f"not {redact_url(tracker.tracking_uri)}; pass that --tracking-uri on every worker")
            run_id = str(attrs["gencv.mlflow_run_id"])
            tracker.client.update_run(run_id, status="RUNNING")
        return queue, run_id

    def _trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def claim(self) -> Claim | None:
        """A waiting level for this worker (re-queueing levels whose worker died or was stopped), or None."""
        import optuna
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flagged experimental
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's level: failed, re-queued by the callback
        with study_lock(self.store, self.study.study_name):
            self._requeue()
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                level = _level_of(t)
                if level is None:
                    continue
                try:
                    if self.store.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                        trial = optuna.trial.Trial(self.study, t._trial_id)
                        trial.suggest_categorical(_LEVEL, list(range(len(self.labels))))
                        return Claim(t._trial_id, t.number, level)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
        return None

    def _requeue(self) -> None:
        """Enqueue again each level that no trial holds any more (its last one failed), within the retry limit.

        A trial stopped by Ctrl-C or SIGTERM does not count against the limit; one that raised does.
        """
        from optuna.trial import TrialState

        held: set[int] = set()
        errors: dict[int, int] = {}
        for t in self._trials():
            level = _level_of(t)
            if level is None:
                continue
            if t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE):
                held.add(level)
            elif t.state == TrialState.FAIL and not t.user_attrs.get(_INTERRUPTED):
                errors[level] = errors.get(level, 0) + 1
        for level, label in enumerate(self.labels):
            if level in held:
                continue
            if errors.get(level, 0) > MAX_RETRY:
                log.warning("sweep level %s failed %d times; not re-queued", label, errors[level])
                continue
            self.study.enqueue_trial({_LEVEL: level}, user_attrs={"gencv.sweep_level": label})

    def done(self, claim: Claim, value: float, level_run: str | None) -> None:
        from optuna.trial import TrialState

        if level_run:
            self.store.set_trial_user_attr(claim.trial_id, "gencv.mlflow_run_id", level_run)
        finite = value == value and abs(value) != float("inf")
        self.store.set_trial_state_values(claim.trial_id, TrialState.COMPLETE if finite else TrialState.FAIL,
                                          [value] if finite else None)

    def stopped(self, claim: Claim, *, interrupted: bool) -> None:
        """The level did not finish: re-queued by the next claim (an error counts against the retry limit)."""
        from optuna.trial import TrialState

        if interrupted:
            self.store.set_trial_user_attr(claim.trial_id, _INTERRUPTED, True)
        self.store.set_trial_state_values(claim.trial_id, TrialState.FAIL)

    def state(self) -> Mapping[str, list[int]]:
        """Levels by state: `complete`, `running`, `waiting`, `failed` (no trial left that holds them)."""
        from optuna.trial import TrialState

        by: dict[str, set[int]] = {"complete": set(), "running": set(), "waiting": set()}
        names = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
        for t in self._trials():
            level = _level_of(t)
            if level is not None and t.state in names:
                by[names[t.state]].add(level)
        held = set().union(*by.values())
        out = {k: sorted(v) for k, v in by.items()}
        out["failed"] = [i for i in range(len(self.labels)) if i not in held]
        return out

    def claim_report(self) -> bool:
        """True for exactly one worker, once no level runs or waits: that worker writes the sweep's report."""
        with study_lock(self.store, self.study.study_name):
            s = self.state()
            if s["running"] or s["waiting"] or self.study.user_attrs.get("gencv.sweep_reported"):
                return False
            self.study.set_user_attr("gencv.sweep_reported", True)
            return True
