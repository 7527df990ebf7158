"""Cross-validation: one cloned estimator per fold; scores, gaps, curves and measures per fold."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from gencv.engines import Engine, FittedModel, FoldFit, NetClassifier, NetRegressor, get_engine
from gencv.errors import DivergenceError
from gencv.metrics import METRICS, score_all
from gencv.seeds import derive_seed
from gencv.splits import Fold, subsample_train
from gencv.tracking import DataRef, NullTracker, Tracker

__all__ = ["CVResult", "FoldResult", "Progress", "as_estimator", "cross_validate", "fit_and_score", "gaps",
           "measure_fitted", "refit_landscapes", "score_fold"]

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Progress events; the CLI renders them, the library only emits them."""

    def fold_start(self, fold: int, n_folds: int, max_epochs: int) -> None: ...
    def epoch_end(self, fold: int, epoch: int, row: Mapping[str, Any]) -> None: ...
    def fold_end(self, fold: int, result: FoldResult) -> None: ...


class _NoProgress:
    def fold_start(self, fold: int, n_folds: int, max_epochs: int) -> None:
        pass

    def epoch_end(self, fold: int, epoch: int, row: Mapping[str, Any]) -> None:
        pass

    def fold_end(self, fold: int, result: FoldResult) -> None:
        pass


@dataclass
class FoldResult:
    """Everything measured on one fold. Scores are dicts metric -> value."""

    index: int
    seed: int
    n_train: int  # rows of the training fold (after data.train_fraction; the fitted rows plus the early-stopping split)
    n_valid: int
    n_fit: int = 0  # rows the network was fitted on (the training fold minus the early-stopping split)
    status: str = "ok"  # "ok" | "failed"
    reason: str = ""
    train_scores: dict[str, float] = field(default_factory=dict)  # on the fitted rows only
    es_scores: dict[str, float] = field(default_factory=dict)  # on the early-stopping split
    valid_scores: dict[str, float] = field(default_factory=dict)
    test_scores: dict[str, float] = field(default_factory=dict)
    gaps: dict[str, float] = field(default_factory=dict)
    train_loss: float = float("nan")
    es_loss: float = float("nan")
    valid_loss: float = float("nan")
    test_loss: float = float("nan")
    epochs_run: int = 0
    best_epoch: int = 0
    stop_reached: int | None = None  # train.stop_at_train_loss: 1 when the fitted rows' loss reached it, else 0
    stop_epoch: int | None = None  # the epoch it was reached (None when not reached, or no such target)
    fit_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)
    measure_notes: list[str] = field(default_factory=list)
    inner_valid_idx: np.ndarray | None = None
    run_id: str | None = None
    estimator: FittedModel | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def flat_metrics(self) -> dict[str, float]:
        """Metric name -> value as logged on the fold run."""
        out: dict[str, float] = {}
        for prefix, scores in (("train", self.train_scores), ("es", self.es_scores), ("valid", self.valid_scores),
                               ("test", self.test_scores)):
            out.update({f"{prefix}_{k}": v for k, v in scores.items()})
        out.update({f"gap_{k}": v for k, v in self.gaps.items()})
        out.update({"train_loss": self.train_loss, "es_loss": self.es_loss, "valid_loss": self.valid_loss,
                    "test_loss": self.test_loss,
                    "epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "fit_seconds": self.fit_seconds,
                    "stop_reached": self.stop_reached, "stop_epoch": self.stop_epoch})
        out.update(self.measures)
        return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}

    def to_json(self) -> dict[str, Any]:
        """JSON-safe record (no estimator), enough to resume without refitting."""
        d = asdict(self) if self.estimator is None else asdict(_without_estimator(self))
        d.pop("estimator", None)
        d.pop("artifacts", None)
        d["inner_valid_idx"] = None if self.inner_valid_idx is None else self.inner_valid_idx.tolist()
        return _json_safe(d)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FoldResult:
        d = dict(d)
        iv = d.pop("inner_valid_idx", None)
        fr = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        fr.inner_valid_idx = None if iv is None else np.asarray(iv)
        for name in ("train_loss", "es_loss", "valid_loss", "test_loss"):
            if getattr(fr, name) is None:
                setattr(fr, name, float("nan"))
        return fr


def _without_estimator(fr: FoldResult) -> FoldResult:
    import copy

    est, fr.estimator = fr.estimator, None
    try:
        return copy.deepcopy(fr)
    finally:
        fr.estimator = est


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class CVResult:
    """Per-fold results plus what they were measured with."""

    folds: list[FoldResult]
    metric: str
    task: str
    seed: int

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    @property
    def ok_folds(self) -> list[FoldResult]:
        return [f for f in self.folds if f.ok]

    @property
    def n_failed(self) -> int:
        return sum(not f.ok for f in self.folds)

    def values(self, key: str) -> np.ndarray:
        """One flat metric across the successful folds (NaN where missing)."""
        return np.array([f.flat_metrics().get(key, np.nan) for f in self.ok_folds], dtype=float)

    def mean_score(self, split: str = "valid") -> float:
        """Mean primary metric over successful folds (NaN if none)."""
        vals = self.values(f"{split}_{self.metric}")
        vals = vals[np.isfinite(vals)]
        return float(vals.mean()) if len(vals) else float("nan")


FoldCallback = Callable[[FoldResult, int], None]


def fit_and_score(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    fold: Fold,
    *,
    metric: str,
    seed: int,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    measures: Sequence[str] = (),
    measure_config: Any = None,
    progress: Progress | None = None,
    engine: str | Engine = "skorch",
    groups: np.ndarray | None = None,
) -> FoldResult:
    """Fit a copy of `estimator` on the fold's training part, score train / valid / test, compute measures.

    A diverging fit (NaN/inf loss) or any other error in fitting is returned as a failed
    FoldResult with the reason; KeyboardInterrupt propagates.
    """
    progress = progress or _NoProgress()
    fits = get_engine(engine).fit_folds(estimator, X, y, [fold], [seed], groups=groups,
                                        on_epoch=lambda i, epoch, row: progress.epoch_end(i, epoch, row))
    return score_fold(next(fits), X, y, metric=metric, X_test=X_test, y_test=y_test, measures=measures,
                      measure_config=measure_config)


def score_fold(
    fit: FoldFit,
    X: np.ndarray,
    y: np.ndarray,
    *,
    metric: str,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    measures: Sequence[str] = (),
    measure_config: Any = None,
) -> FoldResult:
    """Score one engine's fit: train / valid / test scores and losses, gaps, history, measures."""
    fold, seed = fit.fold, fit.seed
    res = FoldResult(index=fold.index, seed=seed, n_train=len(fold.train), n_valid=len(fold.valid))
    res.fit_seconds = fit.seconds
    res.artifacts["rows"] = {"training": fold.train, "validation": fold.valid}  # refined below once fitted
    if fit.estimator is None:
        exc = fit.error
        if isinstance(exc, DivergenceError):
            res.status, res.reason = "failed", f"diverged: {exc}"
            res.epochs_run = int(exc.epoch or 0)
        else:
            res.status, res.reason = "failed", f"{type(exc).__name__}: {exc}"
        return res
    est = fit.estimator
    # The train score, train loss and measures are computed on the rows the network was fitted on:
    # the training fold minus its early-stopping split, which is scored on its own (es_*).
    fit_rows = fold.train if est.fit_positions_ is None else fold.train[est.fit_positions_]
    Xtr, ytr, Xva, yva = X[fit_rows], y[fit_rows], X[fold.valid], y[fold.valid]
    res.n_fit = len(fit_rows)
    res.epochs_run, res.best_epoch = est.epochs_run_, est.best_epoch_
    reached = getattr(est, "stop_reached_", None)
    if reached is not None:
        res.stop_reached, res.stop_epoch = int(reached), getattr(est, "stop_epoch_", None)
    res.history = est.epoch_history()
    labels = list(range(est.n_classes)) if est.task == "classification" else []
    res.artifacts["rows"]["training"] = fit_rows
    if est.inner_valid_positions_ is not None:
        res.inner_valid_idx = fold.train[est.inner_valid_positions_]
        res.artifacts["rows"]["early_stopping"] = res.inner_valid_idx
        res.es_scores, res.es_loss = _score(est, X[res.inner_valid_idx], y[res.inner_valid_idx], labels)
    res.train_scores, res.train_loss = _score(est, Xtr, ytr, labels)
    res.valid_scores, res.valid_loss = _score(est, Xva, yva, labels)
    if X_test is not None and len(X_test):
        res.test_scores, res.test_loss = _score(est, X_test, y_test, labels)
    res.gaps = gaps(res.train_scores, res.valid_scores, res.train_loss, res.valid_loss)
    bad = [k for k in ("train_loss", "valid_loss") if not np.isfinite(getattr(res, k))]
    if bad:
        res.status, res.reason = "failed", f"diverged: final {bad[0]} is not finite"
        return res
    if measure_config is not None:  # measure_options.landscape_folds may leave this fold's landscapes out
        measures = measure_config.measures_for_fold(measures, fold.index)
    if measures:
        try:
            m = measure_fitted(est, Xtr, ytr, measures, measure_config, derive_seed(seed, "measures"),
                               held_out=(Xva, yva))
            res.measures, res.measure_notes = _prefixed(m.values), list(m.notes)
            res.artifacts["measure_result"] = m
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            res.measure_notes.append(f"measures failed: {type(exc).__name__}: {exc}")
            log.warning("fold %d: measures failed: %s", fold.index, exc)
    res.estimator = est
    return res


def gaps(train: Mapping[str, float], valid: Mapping[str, float], train_loss: float, valid_loss: float) -> dict[str, float]:
    """Generalization gap per metric, signed so that positive means 'worse on held-out data'."""
    out: dict[str, float] = {}
    for name, tr in train.items():
        if name not in valid:
            continue
        va = valid[name]
        out[name] = (tr - va) if METRICS[name].higher_is_better else (va - tr)
    out["loss"] = valid_loss - train_loss
    return out


def _score(est: FittedModel, X: np.ndarray, y: np.ndarray, labels: list[int]) -> tuple[dict[str, float], float]:
    if est.task == "classification":
        proba = est.predict_proba(X)
        if not np.all(np.isfinite(proba)):
            return {}, float("nan")  # a diverged net: the fold is marked failed by the loss check
        pred = proba.argmax(1)
    else:
        proba, pred = None, est.predict(X)
    return score_all(est.task, y, pred, proba, labels), est.loss(X, y)


def _prefixed(values: Mapping[str, float]) -> dict[str, float]:
    """Measure values as fold metrics: the generic keys get a 'measure_' prefix to avoid clashes."""
    generic = {"loss", "sample_size"}
    return {(f"measure_{k}" if k in generic else k): float(v) for k, v in values.items()}


def measure_fitted(est: FittedModel, X: np.ndarray, y: np.ndarray, names: Sequence[str], config: Any, seed: int,
                   held_out: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """`compute_measures` on a fitted estimator's network at raw rows `X`, `y` (its own preprocessing and
    loss); `held_out` raw rows the landscape measures draw beside them (none when empty)."""
    from gencv.measures import compute_measures

    def tensors(Xr: np.ndarray, yr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(est.preprocess_.transform(Xr)), torch.as_tensor(est.encode_target(yr))

    module = est.module_
    loss = torch.nn.functional.cross_entropy if est.task == "classification" else torch.nn.functional.mse_loss
    held = tensors(*held_out) if held_out is not None and len(held_out[0]) else None
    return compute_measures(module, *tensors(X, y), loss, list(names), seed=seed, config=config,
                            init_state=est.init_state_, held_out=held)


def refit_landscapes(est: FittedModel, X: np.ndarray, y: np.ndarray, rows: np.ndarray, test_idx: np.ndarray,
                     names: Sequence[str], config: Any, seed: int, notes: list[str]) -> dict[str, Any]:
    """The landscape measures among `names` of a model refit on `rows`: on its fitted rows, beside `test_idx`
    (else its early-stopping split), as a run extra (`refit_` metrics, plots, grids) by the name
    `refit_landscapes`; a failure is a note in `notes`, not a failed run."""
    from gencv.measures import LandscapeFiles
    from gencv.measures.config import LANDSCAPE_MEASURES

    names = [n for n in names if n in LANDSCAPE_MEASURES]
    if not names:
        return {}
    fit = rows if est.fit_positions_ is None else rows[est.fit_positions_]
    es = rows[:0] if est.inner_valid_positions_ is None else rows[est.inner_valid_positions_]
    held = test_idx if len(test_idx) else es
    try:
        m = measure_fitted(est, X[fit], y[fit], names, config, seed, held_out=(X[held], y[held]))
    except Exception as exc:
        log.warning("refit landscapes failed: %s", exc)
        notes.append(f"measures, refit: failed: {type(exc).__name__}: {exc}")
        return {}
    what = "the test set" if len(test_idx) else "its early-stopping split" if len(es) else "none"
    notes.extend([f"measures, refit (held-out rows: {what}): {note}" for note in m.notes])
    return {"refit_landscapes": LandscapeFiles(m, "refit", prefix="refit_")}


def as_estimator(estimator: Any, metric: str, y: np.ndarray) -> Any:
    """`estimator` itself, or for a torch module class or factory, the NetClassifier (the label set of `y`) or
    NetRegressor, by `metric`'s task, that trains it."""
    if hasattr(estimator, "fit") or not callable(estimator) or isinstance(estimator, torch.nn.Module):
        return estimator
    if METRICS[metric].task == "classification":
        return NetClassifier(estimator, classes=tuple(np.unique(y).tolist()))
    return NetRegressor(estimator)


def cross_validate(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[Fold],
    *,
    metric: str,
    seed: int,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    measures: Sequence[str] = (),
    measure_config: Any = None,
    tracker: Tracker | None = None,
    experiment: str = "gencv",
    parent_run: str | None = None,
    progress: Progress | None = None,
    on_fold_end: FoldCallback | None = None,
    fold_order: Sequence[int] | None = None,
    done: Mapping[int, FoldResult] | None = None,
    keep_estimators: bool = False,
    engine: str | Engine = "skorch",
    groups: np.ndarray | None = None,
    train_fraction: float = 1.0,
    data: DataRef | None = None,
    fold_runs: bool = True,
    curve_folds: int = 5,
) -> CVResult:
    """Fit and score one clone of `estimator` per fold; log each fold as a child run of `parent_run`.

    Parameters
    ----------
    estimator : a NetClassifier/NetRegressor, or a torch module class or factory of your own, trained with
        the defaults of the one `metric`'s task needs (`as_estimator`).
    fold_order : order in which folds run (tuning shuffles it); results are returned by fold index.
    on_fold_end : called with (result, position) after each fold; may raise to stop (e.g. pruning).
    done : finished folds from an interrupted run, reused instead of refitted.
    groups : one group label per row of X (`data.group`): early stopping inside each training fold
        then holds out whole groups, as the folds themselves do.
    train_fraction : `data.train_fraction`: each training fold is subsampled to this fraction
        (`splits.subsample_train`, seeded per fold) before it is fitted; held-out folds are unchanged.
    data : what `X`, `y` are (`DataRef.of`): each fold run then gets its parts as run inputs (contexts
        training, early_stopping, validation) and `fold_rows.json` with their row indices.
    fold_runs : a child run per fold (True), or every fold recorded in `parent_run` itself (False):
        per-fold metrics as steps (`fold_<name>`, step = fold index), the fold records in `fold_results/`,
        and the learning curves (`fold-<i>/curve_*`) of `curve_folds` evenly spaced folds (`ParentFoldLog`).
    """
    eng = get_engine(engine)
    estimator = as_estimator(estimator, metric, y)
    if hasattr(estimator, "check_module") and len(folds):  # a module of your own: built and run on 8 rows first
        estimator.check_module(X[folds[0].train[:8]], y)
    if train_fraction < 1.0:
        folds = [subsample_train(f, y, groups, train_fraction, derive_seed(seed, "fold", i, "train_fraction"),
                                 time_ordered=bool(getattr(estimator, "time_ordered", False)),
                                 stratified=estimator.task == "classification") for i, f in enumerate(folds)]
    tracker = tracker or NullTracker()
    progress = progress or _NoProgress()
    done = dict(done or {})
    order = list(fold_order) if fold_order is not None else list(range(len(folds)))
    todo = [i for i in order if i not in done]
    seeds = {i: derive_seed(seed, "fold", i) for i in todo}
    open_runs: dict[int, str] = {}
    in_parent = (ParentFoldLog(tracker, parent_run, curve_sample(len(folds), curve_folds))
                 if not fold_runs and parent_run is not None else None)

    def fold_start(i: int) -> None:
        progress.fold_start(i, len(folds), estimator.max_epochs)
        if not fold_runs:
            return
        open_runs[i] = tracker.start_run(experiment, f"fold-{i}", parent=parent_run,
                                         tags={"gencv.kind": "fold", "gencv.fold": str(i),
                                               "gencv.seed": str(seeds[i])})

    fits = eng.fit_folds(estimator, X, y, [folds[i] for i in todo], [seeds[i] for i in todo], groups=groups,
                         on_fold_start=fold_start, on_epoch=progress.epoch_end)
    results: dict[int, FoldResult] = {}
    try:
        for pos, i in enumerate(order):
            if i in done:
                results[i] = done[i]
                progress.fold_end(i, done[i])
                if on_fold_end is not None:
                    on_fold_end(done[i], pos)
                continue
            fit = next(fits)
            res = score_fold(fit, X, y, metric=metric, X_test=X_test, y_test=y_test, measures=measures,
                             measure_config=measure_config)
            if fold_runs:
                run_id = open_runs.pop(i)
                res.run_id = run_id
                status = "FAILED"
                try:
                    _log_fold(tracker, run_id, res, data)
                    status = "FINISHED" if res.ok else "FAILED"
                finally:
                    tracker.end_run(run_id, status)
            elif in_parent is not None:
                res.run_id = parent_run
                in_parent.add(res)
            if not keep_estimators:
                res.estimator = None
            results[i] = res
            if not res.ok:
                log.info("fold %d failed: %s", i, res.reason)
            progress.fold_end(i, res)
            if on_fold_end is not None:
                on_fold_end(res, pos)
    except KeyboardInterrupt:
        for run_id in open_runs.values():
            tracker.end_run(run_id, "KILLED")
        _close_quietly(in_parent)
        raise
    except BaseException:
        for run_id in open_runs.values():
            tracker.end_run(run_id, "FAILED")
        _close_quietly(in_parent)
        raise
    finally:
        fits.close()  # a consumer that stopped early (a pruned trial) trains no further fold
    if in_parent is not None:
        in_parent.close()
    return CVResult(folds=[results[i] for i in sorted(results)], metric=metric,
                    task=estimator.task, seed=seed)


def _close_quietly(log_: ParentFoldLog | None) -> None:
    """Write the finished folds after Ctrl-C or an error, without hiding that error behind a write's."""
    if log_ is None:
        return
    try:
        log_.close()
    except Exception:  # noqa: BLE001
        log.warning("could not write the finished folds to the parent run", exc_info=True)


def _log_fold(tracker: Tracker, run_id: str, res: FoldResult, data: DataRef | None = None) -> None:
    import json

    series = {}
    if res.history:
        keys = [k for k in res.history[0] if k.startswith("curve_")]
        series = {k: [row.get(k, np.nan) for row in res.history] for k in keys}
    tags = {"gencv.status": res.status}
    if res.reason:
        tags["gencv.reason"] = res.reason[:5000]
    if res.measure_notes:
        tags["gencv.measure_notes"] = " | ".join(res.measure_notes)[:5000]
    tracker.log_all(run_id, params={"fold": res.index, "seed": res.seed, "n_train": res.n_train, "n_fit": res.n_fit,
                                    "n_valid": res.n_valid},
                    metrics=res.flat_metrics(), series=series, tags=tags)
    tracker.log_text(run_id, json.dumps(res.to_json()), "fold_result.json")
    rows = res.artifacts.get("rows")
    if rows:  # the link back to the data: which rows of it each part of the fold holds
        tracker.log_text(run_id, json.dumps({k: np.asarray(v).tolist() for k, v in rows.items()}), "fold_rows.json")
        if data is not None:
            tracker.log_inputs(run_id, data.fold_parts(res.index, rows))


def curve_sample(n_folds: int, k: int) -> list[int]:
    """`k` evenly spaced fold indices out of `n_folds` (first and last included): whose curves are kept."""
    if k <= 0 or n_folds <= 0:
        return []
    return sorted({round(float(x)) for x in np.linspace(0, n_folds - 1, min(k, n_folds))})


class ParentFoldLog:
    """Folds recorded in their parent run (`tracking.fold_runs` off), written in batches.

    Per fold: `fold_<metric>` at step = fold index (with `fold_ok`, `fold_n_train`, `fold_n_valid`), its
    learning curves (`fold-<i>/curve_*`) when the fold is in `curves`, and its record in a
    `fold_results/folds-<first>-<last>-<tag>.json` list that --resume reads. Writing fold by fold
    cost one database commit and one artifact per fold (leave-one-out: ~60 ms a fold, as much as training
    it), so the folds finished since the last write are written once there are `every` of them or once
    `seconds` have passed since that write (a slow fold is written as soon as it ends), and on `close()`
    (also after Ctrl-C or an error). A killed process (SIGKILL) loses at most that much finished work;
    --resume refits those folds.
    """

    def __init__(self, tracker: Tracker, run_id: str, curves: Iterable[int] = (), *, every: int = 50,
                 seconds: float = 15.0) -> None:
        self.tracker, self.run_id, self.curves = tracker, run_id, set(curves)
        self.every, self.seconds = max(1, int(every)), float(seconds)
        self._pending: list[FoldResult] = []
        self._written = time.monotonic()

    def add(self, res: FoldResult) -> None:
        self._pending.append(res)
        if len(self._pending) >= self.every or time.monotonic() - self._written >= self.seconds:
            self.flush()

    def flush(self) -> None:
        import json
        import uuid

        self._written = time.monotonic()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        steps: dict[int, dict[str, float]] = {}
        series: dict[str, list[float]] = {}
        for res in batch:
            metrics = {f"fold_{k}": v for k, v in res.flat_metrics().items()}
            metrics.update({"fold_ok": float(res.ok), "fold_n_train": float(res.n_train),
                            "fold_n_valid": float(res.n_valid)})
            steps[res.index] = metrics
            if res.index in self.curves and res.history:
                keys = [k for k in res.history[0] if k.startswith("curve_")]
                series.update({f"fold-{res.index}/{k}": [row.get(k, np.nan) for row in res.history] for k in keys})
        self.tracker.log_steps(self.run_id, steps)
        if series:
            self.tracker.log_series(self.run_id, series)
        indices = [r.index for r in batch]
        name = f"fold_results/folds-{min(indices)}-{max(indices)}-{uuid.uuid4().hex[:8]}.json"
        self.tracker.log_text(self.run_id, json.dumps([r.to_json() for r in batch]), name)

    close = flush
