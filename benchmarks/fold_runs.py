"""Tracking cost on many folds: leave-one-out on breast_cancer (455 folds), `gencv run` as one library
call, untracked beside tracked, in one process, on one SQLite store created before the timing.

Tracked runs use the writer process `gencv run` uses (`make_tracker`), started inside the timed region
and flushed before the clock stops. Layouts: `tracking.fold_runs: auto` (above 30 folds: the folds live
in the parent run) and, with --always, a child run per fold (the layout before `tracking.fold_runs`).

Run: python benchmarks/fold_runs.py [--reps 1] [--always] [--spec experiments/breast_cancer_loo.yaml]
A short untracked run first warms up imports and torch. Ratios use each way's fastest repetition
(machine noise only adds time). CPU seconds (this process plus the writer process) are printed too:
on a machine other jobs load, they measure the work tracking adds when wall time cannot.
Target: tracked (auto) / untracked <= 1.10.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gencv.runner import run_experiment
from gencv.spec import load_experiment
from gencv.tracking import MlflowTracker, NullTracker, make_tracker

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.10


def _cpu() -> float:
    """CPU seconds of this process and its ended children (the MLflow writer process)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of `fn()`."""
    t0, c0 = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=str(ROOT / "experiments" / "breast_cancer_loo.yaml"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--always", action="store_true", help="also time a child run per fold")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as `gencv run` runs; 0: torch's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"torch threads: {__import__('torch').get_num_threads()}", flush=True)
    base = load_experiment(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        MlflowTracker(uri, writer="inline").experiment_id(base.name)  # the store and experiment exist

        def tracked(mode: str) -> None:
            exp = base.with_overrides({"tracking.fold_runs": mode})
            tracker = make_tracker(True, uri, exp.name)
            try:
                run_experiment(exp, tracker=tracker)
            finally:
                tracker.close()  # type: ignore[attr-defined]

        ways: dict[str, Callable[[], object]] = {
            "untracked": lambda: run_experiment(base, tracker=NullTracker()),
            "tracked, fold_runs auto": lambda: tracked("auto"),
        }
        if args.always:
            ways["tracked, fold_runs always"] = lambda: tracked("always")
        # warm-up, not timed: imports, data loading and torch's first calls would otherwise count for the first way
        run_experiment(base.with_overrides({"cv.kind": "kfold", "cv.n_splits": 2}), tracker=NullTracker())
        times: dict[str, list[float]] = {k: [] for k in ways}
        cpus: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.reps):
            for name, fn in ways.items():  # interleaved, so drifting machine load hits every way alike
                wall, cpu = timed(fn)
                times[name].append(wall)
                cpus[name].append(cpu)
                print(f"{name:28s} {wall:7.1f} s wall, {cpu:7.1f} s CPU", flush=True)
    best = {k: min(v) for k, v in times.items()}
    cpu_best = {k: min(v) for k, v in cpus.items()}
    for name in ways:
        print(f"{name:28s} best {best[name]:7.1f} s  ({best[name] / best['untracked']:.3f} x untracked); "
              f"CPU {cpu_best[name]:7.1f} s ({cpu_best[name] / cpu_best['untracked']:.3f} x)")
    # CPU time (this process and the writer process) is the steadier figure on a loaded machine
    ratio = best["tracked, fold_runs auto"] / best["untracked"]
    print(f"figure: tracked_over_untracked_loo value: {ratio:.3f} target: {TARGET:.2f} "
          f"{'PASS' if ratio <= TARGET else 'MISS'}")


if __name__ == "__main__":
    main()
