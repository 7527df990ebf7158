"""5-fold CV of a small MLP side by side: hand-written torch loop, sklearn + skorch, gencv (tracking
off) and gencv (tracking on, SQLite: with the writer process `gencv run` uses, and with a writer
thread). Same data, epochs, batch size and optimizer.

Run: python benchmarks/cv_overhead.py [--reps 5] [--epochs 20]
The hand loop slices shuffled tensors (the fastest loop we know how to write); the DataLoader loop
beside it is for calibration only, since the textbook loop is slower. Ratios use each way's fastest repetition (machine noise only adds time); medians are shown beside.
Targets: gencv / hand loop <= 1.10; tracking on / off <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from sklearn.datasets import make_classification
from sklearn.model_selection import StratifiedKFold, cross_validate as sk_cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier
from torch import nn

from gencv.cv import cross_validate
from gencv.engines import GencvEstimator
from gencv.models import MLP
from gencv.spec import ModelSpec, TrainSpec
from gencv.splits import Fold
from gencv.tracking import MlflowTracker, NullTracker

N, D, K, HIDDEN, BATCH, LR = 2000, 20, 3, (64, 64), 64, 1e-3


def data() -> tuple[np.ndarray, np.ndarray, list[Fold]]:
    X, y = make_classification(n_samples=N, n_features=D, n_informative=10, n_classes=K, random_state=0)
    X = X.astype(np.float32)
    folds = [Fold(i, tr, va) for i, (tr, va) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))]
    return X, y.astype(np.int64), folds


def hand_loop(X: np.ndarray, y: np.ndarray, folds: list[Fold], epochs: int) -> float:
    """What a careful user writes by hand: scaler per fold, Adam, shuffled mini-batches, score held-out fold."""
    scores = []
    for f in folds:
        torch.manual_seed(f.index)
        scaler = StandardScaler().fit(X[f.train])
        Xtr = torch.as_tensor(scaler.transform(X[f.train]), dtype=torch.float32)
        Xva = torch.as_tensor(scaler.transform(X[f.valid]), dtype=torch.float32)
        ytr, yva = torch.as_tensor(y[f.train]), torch.as_tensor(y[f.valid])
        model = MLP(D, K, HIDDEN, dropout=0.0)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(Xtr))
            for i in range(0, len(Xtr), BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                loss = loss_fn(model(Xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            scores.append(float((model(Xva).argmax(1) == yva).float().mean()))
    return float(np.mean(scores))


def hand_loop_dataloader(X: np.ndarray, y: np.ndarray, folds: list[Fold], epochs: int) -> float:
    """The same loop with the textbook DataLoader(TensorDataset, shuffle=True): for calibration only."""
    scores = []
    for f in folds:
        torch.manual_seed(f.index)
        scaler = StandardScaler().fit(X[f.train])
        ds = torch.utils.data.TensorDataset(torch.as_tensor(scaler.transform(X[f.train]), dtype=torch.float32),
                                            torch.as_tensor(y[f.train]))
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)
        Xva = torch.as_tensor(scaler.transform(X[f.valid]), dtype=torch.float32)
        model = MLP(D, K, HIDDEN, dropout=0.0)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):
            model.train()
            for xb, yb in loader:
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            scores.append(float((model(Xva).argmax(1) == torch.as_tensor(y[f.valid])).float().mean()))
    return float(np.mean(scores))


def plain_skorch(X: np.ndarray, y: np.ndarray, folds: list[Fold], epochs: int) -> float:
    """scikit-learn's cross_validate over a Pipeline(StandardScaler, NeuralNetClassifier), skorch defaults."""
    torch.manual_seed(0)
    net = NeuralNetClassifier(MLP, module__n_features=D, module__n_outputs=K, module__hidden=HIDDEN, criterion=nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=LR, max_epochs=epochs, batch_size=BATCH,
                              iterator_train__shuffle=True, train_split=None, verbose=0)
    pipe = Pipeline([("scale", StandardScaler()), ("net", net)])
    cv = [(f.train, f.valid) for f in folds]
    res = sk_cross_validate(pipe, X, y, cv=cv, scoring="accuracy")
    return float(np.mean(res["test_score"]))


def gencv_cv(X: np.ndarray, y: np.ndarray, folds: list[Fold], epochs: int, tracker: object) -> float:
    est = GencvEstimator(ModelSpec(hidden=list(HIDDEN), dropout=0.0, init="default"),
                         TrainSpec(optimizer="adam", lr=LR, batch_size=BATCH, max_epochs=epochs,
                                   early_stopping=None, schedule={"kind": "none"}),
                         task="classification", n_features=D, n_classes=K)
    res = cross_validate(est, X, y, folds, metric="accuracy", seed=0, tracker=tracker,  # type: ignore[arg-type]
                         experiment="bench", parent_run=None)
    if isinstance(tracker, MlflowTracker):
        tracker.flush()  # count every queued write inside the timed region
    return res.mean_score()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    X, y, folds = data()
    tmp = tempfile.mkdtemp()
    # The writer `gencv run` uses (a process), and the library's default (a thread), for comparison.
    process_tracker = MlflowTracker(f"sqlite:///{tmp}/mlflow.db", writer="process")
    thread_tracker = MlflowTracker(f"sqlite:///{tmp}/mlflow-thread.db", writer="thread")
    for t in (process_tracker, thread_tracker):
        t.experiment_id("bench")  # create the store before timing
    ways = {
        "hand-written torch loop": lambda: hand_loop(X, y, folds, args.epochs),
        "hand loop with a DataLoader": lambda: hand_loop_dataloader(X, y, folds, args.epochs),
        "sklearn cross_validate + skorch": lambda: plain_skorch(X, y, folds, args.epochs),
        "gencv (tracking off)": lambda: gencv_cv(X, y, folds, args.epochs, NullTracker()),
        "gencv (tracking on, SQLite)": lambda: gencv_cv(X, y, folds, args.epochs, process_tracker),
        "gencv (tracking on, thread writer)": lambda: gencv_cv(X, y, folds, args.epochs, thread_tracker),
    }
    for fn in ways.values():  # warm-up: imports, allocator, first-call overheads
        fn()
    times: dict[str, list[float]] = {k: [] for k in ways}
    scores: dict[str, float] = {}
    for _ in range(args.reps):  # interleaved, so machine noise hits every way alike
        for name, fn in ways.items():
            t0 = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t0)
    # Noise on a shared machine only ever adds time, so the fastest repetition is the best estimate
    # of each way's cost; the median is printed beside it to show the spread.
    med = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"5-fold CV, {N} samples x {D} features, MLP {HIDDEN}, {args.epochs} epochs, batch {BATCH}, "
          f"1 torch thread, best of {args.reps} (interleaved)")
    print(f"{'way':38s} {'best s':>8s} {'ratio':>7s} {'median s':>9s} {'ratio':>7s} {'mean acc':>9s}")
    base, base_med = med["hand-written torch loop"], median["hand-written torch loop"]
    for k in ways:
        print(f"{k:38s} {med[k]:8.2f} {med[k] / base:7.3f} {median[k]:9.2f} {median[k] / base_med:7.3f} {scores[k]:9.3f}")
    r_gencv = med["gencv (tracking off)"] / base
    r_track = med["gencv (tracking on, SQLite)"] / med["gencv (tracking off)"]
    r_skorch = med["sklearn cross_validate + skorch"] / base
    print(f"plain skorch / hand loop: {r_skorch:.3f}  (over the DataLoader loop: "
          f"{med['sklearn cross_validate + skorch'] / med['hand loop with a DataLoader']:.3f})")
    print(f"gencv / hand loop:        {r_gencv:.3f}  target <= 1.10  {'PASS' if r_gencv <= 1.10 else 'MISS'}"
          "  (against the tensor-slicing loop)")
    r_dl = med["gencv (tracking off)"] / med["hand loop with a DataLoader"]
    print(f"gencv / DataLoader loop:  {r_dl:.3f}  target <= 1.10  {'PASS' if r_dl <= 1.10 else 'MISS'}"
          "  (the loop over which plain skorch costs ~1.25, as the issue calibrates it)")
    print(f"tracking on / off:        {r_track:.3f}  target <= 1.05  {'PASS' if r_track <= 1.05 else 'MISS'}"
          "  (writer process, as gencv run)")
    r_thread = med["gencv (tracking on, thread writer)"] / med["gencv (tracking off)"]
    print(f"  thread writer / off:    {r_thread:.3f}  (the library default; MLflow's ORM competes for the GIL)")


if __name__ == "__main__":
    main()
