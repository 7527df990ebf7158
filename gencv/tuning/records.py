"""What a study produces: trial records, nested-CV results, the outcome, progress events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from gencv.cv import FoldResult
from gencv.errors import GencvError
from gencv.spec import Experiment
from gencv.splits import Fold
from gencv.tuning.space import Dimension, overrides_from_params


class TuningError(GencvError, RuntimeError):
    """The study cannot go on (too many consecutive failures, a study of another spec...)."""


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


class NoTuneProgress:
    def study_start(self, study_name: str, n_trials: int, n_done: int, label: str) -> None:
        pass

    def trial_start(self, number: int, params: Mapping[str, Any]) -> None:
        pass

    def fold_end(self, number: int, position: int, n_folds: int, result: FoldResult) -> None:
        pass

    def trial_end(self, record: TrialRecord, counts: Mapping[str, int], best: float | None) -> None:
        pass


_COUNTED = ("COMPLETE", "PRUNED")


def _state_counts(trials: Sequence[TrialRecord]) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        out[t.state] = out.get(t.state, 0) + 1
    return out


def study_counts(study: Any) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out

