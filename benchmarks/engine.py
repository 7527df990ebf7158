"""The batched engine against the skorch engine (and the hand loop of cv_overhead.py), issue 12.

Run: python benchmarks/engine.py [--reps 3] [--loo-reps 1] [--only population|loo300]
The figures time the engines (`fit_folds` of every fold, per-epoch held-out curve on, as
`cross_validate` calls it), on one torch thread; ratios use each way's fastest repetition (machine
noise only adds time; a full garbage collection runs before each repetition, outside it: one landing
inside costs ~0.2 s with torch loaded). Fold scoring (`score_fold`: predictions, metrics on train / valid)
is the same for both engines and is not in the figures; the end-to-end `cross_validate` time of 5-fold CV
is printed beside them (`#` lines) for context. Scores: mean held-out fold accuracy.
`population_speedup_vs_skorch`: 16 configurations (lr, weight decay, dropout drawn per configuration)
x 5 folds: the skorch engine fitting the 80 folds configuration by configuration, against one
`BatchedEngine.fit_population` (the population `tune.batch_trials: 16` trains), one repetition each; then
the same population with `prune="median"` (`tune.population_pruning: median`), for its time and whether it
keeps the best configuration.
Prints `figure: NAME value: X target: T PASS|MISS` lines.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import LeaveOneOut, StratifiedKFold

from gencv.cv import cross_validate
from gencv.engines import BatchedEngine, NetEstimator, estimator_from_spec, get_engine
from gencv.seeds import derive_seed
from gencv.spec import ModelSpec, TrainSpec
from gencv.splits import Fold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cv_overhead import BATCH, LR, K, data, hand_loop  # noqa: E402


def _est(hidden: list[int], epochs: int, lr: float = LR, weight_decay: float = 0.0,
         dropout: float = 0.0) -> NetEstimator:
    return estimator_from_spec(ModelSpec(hidden=hidden, dropout=dropout, init="default"),
                               TrainSpec(optimizer="adam", lr=lr, batch_size=BATCH, max_epochs=epochs,
                                         weight_decay=weight_decay, early_stopping=None, schedule={"kind": "none"}),
                               task="classification", n_classes=K)


def _loo300_times(X: np.ndarray, y: np.ndarray, reps: int) -> tuple[float, float, float, float]:
    """Leave-one-out on the first 300 rows (hidden 32, 10 epochs): skorch and batched times and accuracies."""
    Xl, yl = X[:300], y[:300]
    loo = [Fold(i, tr, va) for i, (tr, va) in enumerate(LeaveOneOut().split(Xl))]
    est_loo = _est([32], 10)
    t_loo_b, s_loo_b = _best(lambda: _cv(est_loo, Xl, yl, loo, "batched"), reps, Xl, yl)
    t_loo_sk, s_loo_sk = _best(lambda: _cv(est_loo, Xl, yl, loo, "skorch"), reps, Xl, yl)
    print(f"# loo300: skorch {t_loo_sk:.2f}s  batched {t_loo_b:.2f}s  (accuracy {s_loo_sk:.3f} / {s_loo_b:.3f})",
          flush=True)
    return t_loo_sk, t_loo_b, s_loo_sk, s_loo_b


def loo300(X: np.ndarray, y: np.ndarray, reps: int) -> None:
    t_sk, t_b, _, _ = _loo300_times(X, y, reps)
    _line("loo300_speedup_vs_skorch", t_sk / t_b, ">= 20", t_sk / t_b >= 20)


def population(X: np.ndarray, y: np.ndarray, folds: list[Fold], epochs: int, n_configs: int = 16) -> None:
    """`population_speedup_vs_skorch`: n_configs x 5 folds, skorch one fit after another vs one population."""
    rng = np.random.default_rng(0)
    ests = [_est([64, 64], epochs, lr=float(10 ** rng.uniform(-4, -2)), weight_decay=float(rng.uniform(0, 1e-3)),
                 dropout=float(rng.uniform(0, 0.5))) for _ in range(n_configs)]
    seeds = [derive_seed(0, "fold", f.index) for f in folds]
    gc.collect()
    t0 = time.perf_counter()
    for est in ests:
        list(get_engine("skorch").fit_folds(est, X, y, folds, seeds))
    t_sk = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    fits = BatchedEngine().fit_population(ests, X, y, folds, seeds)
    t_pop = time.perf_counter() - t0
    acc = np.mean([np.mean(f.estimator.predict(X[f.fold.valid]) == y[f.fold.valid]) for fs in fits for f in fs])
    print(f"# population {n_configs} x {len(folds)}: skorch {t_sk:.2f}s  population {t_pop:.2f}s  "
          f"(mean accuracy {acc:.3f})", flush=True)
    r = t_sk / t_pop
    _line("population_speedup_vs_skorch", r, ">= 6", r >= 6)
    gc.collect()
    t0 = time.perf_counter()  # tune.population_pruning=median: does stopping the worse half pay?
    pruned = BatchedEngine().fit_population(ests, X, y, folds, seeds, prune="median")
    t_pr = time.perf_counter() - t0
    acc_of = [np.mean([np.mean(f.estimator.predict(X[f.fold.valid]) == y[f.fold.valid]) for f in fs]) for fs in fits]
    kept = [e for e, fs in enumerate(pruned) if fs[0].estimator.population_pruned_ is None]
    best = int(np.argmax(acc_of))
    print(f"# population with median pruning: {t_pr:.2f}s ({t_pop / t_pr:.2f}x faster than unpruned); "
          f"{len(kept)} of {n_configs} configurations trained to the end; the unpruned run's best configuration "
          f"(accuracy {acc_of[best]:.3f}) {'was kept' if best in kept else 'was pruned'}", flush=True)


def _cv(est: NetEstimator, X: np.ndarray, y: np.ndarray, folds: list[Fold], engine: str, seed: int = 0) -> float:
    """Fit every fold with `engine` (fold seeds derived from `seed`); the mean held-out accuracy."""
    seeds = [derive_seed(seed, "fold", f.index) for f in folds]
    fits = list(get_engine(engine).fit_folds(est, X, y, folds, seeds))
    global _last_fits
    _last_fits = fits
    return float("nan")


_last_fits: list = []


def _score(X: np.ndarray, y: np.ndarray) -> float:
    """Mean held-out accuracy of the last `_cv` call (outside the timed region)."""
    return float(np.mean([np.mean(f.estimator.predict(X[f.fold.valid]) == y[f.fold.valid]) for f in _last_fits]))


def _e2e(est: NetEstimator, X: np.ndarray, y: np.ndarray, folds: list[Fold], engine: str) -> float:
    return cross_validate(est, X, y, folds, metric="accuracy", seed=0, engine=engine).mean_score()


def _best(fn: Callable[[], float], reps: int, X: np.ndarray | None = None, y: np.ndarray | None = None
          ) -> tuple[float, float]:
    times, score = [], float("nan")
    for _ in range(reps):
        gc.collect()  # each repetition starts without a pending full collection (~0.2 s with torch loaded)
        t0 = time.perf_counter()
        score = fn()
        times.append(time.perf_counter() - t0)
        if X is not None:
            score = _score(X, y)  # type: ignore[arg-type]
    return min(times), score


def _line(name: str, value: float, target: str, ok: bool) -> None:
    print(f"figure: {name} value: {value:.3f} target: {target} {'PASS' if ok else 'MISS'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loo-reps", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3, help="root seeds for max_abs_score_diff")
    ap.add_argument("--only", choices=["population", "loo300"], help="run this figure alone")
    args = ap.parse_args()
    torch.set_num_threads(1)
    X, y, folds5 = data()
    if args.only == "population":
        population(X, y, folds5, args.epochs)
        return
    if args.only == "loo300":
        loo300(X, y, args.loo_reps)
        return
    folds10 = [Fold(i, tr, va) for i, (tr, va) in
               enumerate(StratifiedKFold(10, shuffle=True, random_state=0).split(X, y))]
    est = _est([64, 64], args.epochs)
    _cv(est, X, y, folds5[:1], "skorch"), _cv(est, X, y, folds5[:1], "batched")  # warm-up
    score_diffs = []
    res: dict[str, float] = {}
    for name, folds in (("fold5", folds5), ("fold10", folds10)):
        t_sk, t_b = [], []
        for rep in range(args.reps):  # interleaved, so machine noise hits both alike
            t, s_sk = _best(lambda: _cv(est, X, y, folds, "skorch", rep), 1, X, y)
            t_sk.append(t)
            t, s_b = _best(lambda: _cv(est, X, y, folds, "batched", rep), 1, X, y)
            t_b.append(t)
            if rep < args.seeds:
                score_diffs.append(abs(s_sk - s_b))
        res[f"{name}_skorch"], res[f"{name}_batched"] = min(t_sk), min(t_b)
        print(f"# {name}: skorch {min(t_sk):.2f}s  batched {min(t_b):.2f}s", flush=True)
    t_hand, _ = _best(lambda: hand_loop(X, y, folds5, args.epochs), args.reps)
    print(f"# fold5 hand loop {t_hand:.2f}s", flush=True)
    e_sk, _ = _best(lambda: _e2e(est, X, y, folds5, "skorch"), 1)
    e_b, _ = _best(lambda: _e2e(est, X, y, folds5, "batched"), 1)
    print(f"# fold5 end to end (cross_validate, scoring included): skorch {e_sk:.2f}s  batched {e_b:.2f}s  "
          f"ratio {e_sk / e_b:.2f}", flush=True)
    t_loo_sk, t_loo_b, s_loo_sk, s_loo_b = _loo300_times(X, y, args.loo_reps)
    r5 = res["fold5_skorch"] / res["fold5_batched"]
    _line("fold5_speedup_vs_skorch", r5, ">= 4", r5 >= 4)
    rh = res["fold5_batched"] / t_hand
    _line("fold5_vs_hand_loop", rh, "<= 0.35", rh <= 0.35)
    r10 = res["fold10_skorch"] / res["fold10_batched"]
    _line("fold10_speedup_vs_skorch", r10, ">= 6", r10 >= 6)
    _line("loo300_speedup_vs_skorch", t_loo_sk / t_loo_b, ">= 20", t_loo_sk / t_loo_b >= 20)
    score_diffs.append(abs(s_loo_sk - s_loo_b))
    md = max(score_diffs)
    _line("max_abs_score_diff", md, "<= 0.02", md <= 0.02)
    population(X, y, folds5, args.epochs)


if __name__ == "__main__":
    main()
