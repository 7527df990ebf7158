"""Benchmark: the same study with the Wilcoxon pruner and without, same spec, budget and seed.

Prints each study's wall time and best CV score, and the time the pruned study needed to reach the
unpruned study's best; the target is at most half the unpruned wall time (PASS/MISS). Data loading
and splitting (`prepare`) happen once, before either clock starts; both studies' wall times and
the time-to-best are measured from the same moment, the call to `tune_experiment`.

    python benchmarks/tuning.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/tuning.py --trials 20     # quicker
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from gencv.metrics import METRICS
from gencv.runner import Prepared, prepare
from gencv.spec import Experiment, validate_experiment
from gencv.tracking import NullTracker
from gencv.tuning import TrialRecord, tune_experiment

SPEC: dict[str, Any] = {
    "name": "bench-tuning",
    "seed": 0,
    "data": {"source": "breast_cancer", "test_size": 0.2},
    "model": {"hidden": [16], "dropout": 0.0},
    "train": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "max_epochs": 10, "batch_size": 32,
              "early_stopping": None, "schedule": "none"},
    "cv": {"kind": "stratified", "n_splits": 10},
    "metric": "accuracy",
    "tune": {"trials": 40, "sampler": "tpe", "pruner": "wilcoxon",
             "space": {"train.lr": {"low": 1e-6, "high": 1.0, "log": True},
                       "train.weight_decay": {"low": 1e-6, "high": 1.0, "log": True}}},
}


class _Clock:
    """Progress sink that records (seconds since t0, best so far) after every trial; t0 is set by `run`."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.points: list[tuple[float, float | None]] = []

    def study_start(self, study_name: str, n_trials: int, n_done: int, label: str) -> None:
        pass

    def trial_start(self, number: int, params: Mapping[str, Any]) -> None:
        pass

    def fold_end(self, number: int, position: int, n_folds: int, result: Any) -> None:
        pass

    def trial_end(self, record: TrialRecord, counts: Mapping[str, int], best: float | None) -> None:
        self.points.append((time.perf_counter() - self.t0, best))


def run(exp: Experiment, prep: Prepared, pruner: str, trials: int) -> tuple[float, float, _Clock, Any]:
    """One study; wall time and the clock's points both count from the call to tune_experiment."""
    t0 = time.perf_counter()
    clock = _Clock(t0)
    out = tune_experiment(exp.with_overrides({"tune.pruner": pruner}), tracker=NullTracker(), storage=":memory:",
                          n_trials=trials, progress=clock, refit=False, prepared=prep)
    best = out.best_value
    return time.perf_counter() - t0, float("nan") if best is None else float(best), clock, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    exp = validate_experiment(SPEC)
    metric = exp.metric
    higher = METRICS[metric].higher_is_better
    print(f"spec: {exp.data.source}, {exp.cv.n_splits}-fold CV, {exp.train.max_epochs} epochs, TPE, "
          f"{args.trials} trials, seed {exp.seed}, metric {metric} ({'higher' if higher else 'lower'} is better)")
    prep = prepare(exp)  # once, outside both clocks: both studies use the same data and folds
    t_none, best_none, _, out_none = run(exp, prep, "none", args.trials)
    print(f"pruner none:     wall {t_none:7.1f} s  best CV {metric} {best_none:.4f}  counts {out_none.counts}")
    t_wil, best_wil, clock, out_wil = run(exp, prep, "wilcoxon", args.trials)
    print(f"pruner wilcoxon: wall {t_wil:7.1f} s  best CV {metric} {best_wil:.4f}  counts {out_wil.counts}")
    folds_none = sum(len(t.folds_run) for t in out_none.trials)
    folds_wil = sum(len(t.folds_run) for t in out_wil.trials)
    print(f"folds trained: none {folds_none}, wilcoxon {folds_wil} ({folds_wil / max(folds_none, 1):.0%})")

    def reached(b: float | None) -> bool:  # as good as the unpruned best, in the metric's direction
        return b is not None and (b >= best_none - 1e-12 if higher else b <= best_none + 1e-12)

    reach = next((t for t, b in clock.points if reached(b)), float("inf"))
    ratio = reach / t_none
    verdict = "PASS" if ratio <= 0.5 else "MISS"
    print(f"time for the pruned study to reach the unpruned best ({best_none:.4f}): "
          f"{reach:.1f} s = {ratio:.2f} of the unpruned wall time (target <= 0.50): {verdict}")


if __name__ == "__main__":
    main()
