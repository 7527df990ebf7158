"""The batched engine's generic path (vmap over functional_call) against the skorch engine, per model kind.

Run: python benchmarks/engine_models.py [--reps 3] [--epochs 10]
5-fold CV of the example specs (early stopping off, `--epochs` epochs), timed as `cross_validate` runs it
(training, per-epoch curves, scoring; tracking off), one torch thread, each engine's fastest repetition
(the engines alternate, so machine noise hits both). Prints `figure: NAME value: X target: >1 PASS|MISS`
(skorch time / batched time) and a `#` line with both times and the mean fold scores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gencv.cv import cross_validate
from gencv.runner import prepare
from gencv.spec import load_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

#: figure name -> (example spec, overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    "cnn5_bn_dropout_speedup_vs_skorch": ("digits_cnn.yaml", []),  # the example: batch norm, dropout 0.2
    "cnn5_plain_speedup_vs_skorch": ("digits_cnn.yaml", ["model.batch_norm=false", "model.dropout=0.0"]),
    "mlp_bn5_speedup_vs_skorch": ("diabetes_kfold.yaml", ["model.batch_norm=true"]),
    "custom_resmlp5_speedup_vs_skorch": ("custom_resmlp.yaml", []),
    "lstm_rolling5_speedup_vs_skorch": ("sunspots_rolling.yaml", []),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--only", choices=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, (spec, overrides) in CASES.items():
        if args.only and name != args.only:
            continue
        exp = load_experiment(EXPERIMENTS / spec, [f"train.max_epochs={args.epochs}", "train.early_stopping=null",
                                                   *overrides])
        prep = prepare(exp)
        ds = prep.dataset
        best: dict[str, float] = {}
        score: dict[str, float] = {}
        for _ in range(args.reps):
            for engine in ("skorch", "batched"):
                t0 = time.perf_counter()
                res = cross_validate(prep.estimator, ds.X, ds.y, prep.folds, metric=exp.metric, seed=exp.seed,
                                     engine=engine)
                best[engine] = min(best.get(engine, float("inf")), time.perf_counter() - t0)
                score[engine] = sum(f.valid_scores[exp.metric] for f in res.folds) / len(res.folds)
        ratio = best["skorch"] / best["batched"]
        print(f"figure: {name} value: {ratio:.3f} target: >1 {'PASS' if ratio > 1 else 'MISS'}")
        print(f"# {name}: skorch {best['skorch']:.2f} s, batched {best['batched']:.2f} s; mean {exp.metric} "
              f"skorch {score['skorch']:.4f}, batched {score['batched']:.4f}", flush=True)


if __name__ == "__main__":
    main()
