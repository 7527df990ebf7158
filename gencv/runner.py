"""`gencv run` as a library call: spec -> data -> splits -> cross-validate -> refit -> tracking -> report."""

from __future__ import annotations

import dataclasses
import functools
import logging
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import clone

from gencv import __version__
from gencv.checksums import sha256_file, tag_key
from gencv.cv import CVResult, FoldResult, Progress, cross_validate, refit_landscapes
from gencv.data import Dataset, holdout_test, load_dataset
from gencv.engines import NetEstimator, engine_used, estimator_from_spec, export_input
from gencv.engines.devices import check_device
from gencv.errors import DivergenceError, SpecError, TrackingError
from gencv.metrics import check_metric_for_task, score_all
from gencv.models import module_reference, source_file
from gencv.report import (
    fold_table,
    per_class_table,
    plot_confusion_matrix,
    plot_fold_scores,
    plot_learning_curves,
    summary_markdown,
    summary_metrics,
    summary_table,
)
from gencv.resume import finished_folds
from gencv.seeds import derive_seed
from gencv.spec import Experiment
from gencv.splits import (
    Fold,
    folds_digest,
    make_folds,
    scheme_warnings,
    subsample_train,
)
from gencv.tracking import DataRef, MlflowTracker, NullTracker, Tracker
from gencv.tracking.weights import load_base

__all__ = ["AfterCV", "HeldOutPredictions", "Prepared", "RunExtra", "RunOutcome", "make_estimator", "prepare",
           "run_experiment", "with_module"]

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything needed to cross-validate an experiment, built once from the spec."""

    experiment: Experiment
    dataset: Dataset
    cv_idx: np.ndarray
    test_idx: np.ndarray
    folds: list[Fold]
    estimator: NetEstimator
    warnings: list[str] = field(default_factory=list)  # about the CV scheme on this data (splits.scheme_warnings)
    module: Any = None  # model.kind=custom: the class or factory given from Python (None: import model.module)

    @functools.cached_property
    def data_ref(self) -> DataRef:
        """The data set as a run input (name, digest, source; no rows)."""
        return DataRef.of(self.dataset, self.experiment.data.source)

    @property
    def X_test(self) -> np.ndarray | None:
        return self.dataset.X[self.test_idx] if len(self.test_idx) else None

    @property
    def y_test(self) -> np.ndarray | None:
        return self.dataset.y[self.test_idx] if len(self.test_idx) else None


@dataclass
class RunOutcome:
    """What `run_experiment` measured."""

    experiment: Experiment
    dataset: Dataset
    cv: CVResult
    summary: pd.DataFrame
    table: pd.DataFrame
    refit_test_scores: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    refit_estimator: NetEstimator | None = None
    #: classification: one row per held-out prediction of every fold (fold, row, y_true, y_pred codes)
    held_out: pd.DataFrame | None = None
    #: what each `after_cv` step found, by its name (`"permutation"`: studies.permutation.PermutationResult)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def permutation(self) -> Any:
        """The permutation test's result (`gencv run --permutations`), else None."""
        return self.extras.get("permutation")


class RunExtra(Protocol):
    """What an `AfterCV` step found: recorded on the parent run."""

    def metrics(self) -> dict[str, float]: ...
    def write_artifacts(self, directory: Path) -> None: ...  # files and plots/ under the run's artifact root


class AfterCV(Protocol):
    """More work on a run's folds once its CV is done (a permutation test), recorded on the same run.

    `check` runs before any training and raises to refuse; `__call__` runs after the CV.
    """

    name: str

    def check(self, prep: Prepared) -> None: ...
    def __call__(self, prep: Prepared, result: CVResult) -> RunExtra: ...


class HeldOutPredictions:
    """Collects each fold's held-out class predictions as the fold ends, then drops its estimator.

    A `cross_validate` `on_fold_end` hook (with `keep_estimators=True`): only one fold's network is
    kept at a time. Folds reused by `--resume` have no network and so no predictions.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, folds: Sequence[Fold], classes: Sequence[str] = ()) -> None:
        self.X, self.y, self.folds, self.classes = X, y, folds, list(classes)
        self.frames: dict[int, pd.DataFrame] = {}

    def __call__(self, res: FoldResult, pos: int) -> None:
        est, res.estimator = res.estimator, None
        if est is None or not res.ok:
            return
        rows = self.folds[res.index].valid
        proba = est.predict_proba(self.X[rows])
        if np.all(np.isfinite(proba)):
            frame = pd.DataFrame({"fold": res.index, "row": rows, "y_true": self.y[rows], "y_pred": proba.argmax(1)})
            if self.classes:  # the codes mapped back to the data's labels
                names = np.asarray(self.classes, dtype=object)
                frame["true_label"], frame["pred_label"] = names[frame["y_true"]], names[frame["y_pred"]]
            self.frames[res.index] = frame

    def table(self) -> pd.DataFrame | None:
        return pd.concat([self.frames[i] for i in sorted(self.frames)], ignore_index=True) if self.frames else None


def make_estimator(exp: Experiment, ds: Dataset, seed: int | None = None, module: Any = None,
                   base: Any = None) -> NetEstimator:
    """The estimator template for this experiment and data (`module`: the class or factory of model.kind=custom,
    instead of importing model.module; `base`: the weights model.base names, loaded)."""
    if exp.model.kind == "cnn" and ds.image_shape is None:
        raise SpecError(f"model.kind: got 'cnn' but data.source={ds.name!r} is not image data; use model.kind=mlp, "
                        "data.source=digits, an npz:PATH of (n, C, H, W) images or images:DIR")
    return estimator_from_spec(
        exp.model, exp.train, task=ds.task, n_classes=max(len(ds.classes), 2),
        image_shape=ds.image_shape, scale=exp.data.scale, time_ordered=ds.is_time_series, time_gap=ds.min_gap,
        metric=exp.metric, random_state=exp.seed if seed is None else seed, module=module, augment=exp.data.augment,
        base=base,
    ).set_params(impute=exp.data.impute, categorical=exp.data.categorical,  # per-fold feature preprocessing
                 categorical_features=list(ds.categorical) or None)


def with_module(exp: Experiment, module: Any) -> Experiment:
    """`exp` with model.kind=custom and model.module naming `module` (a class or factory given from Python);
    model.kwargs are kept."""
    if module is None:
        return exp
    if not callable(module) or hasattr(module, "fit"):
        raise TypeError(f"module: got {module!r}; pass a torch nn.Module subclass or a function that returns one")
    return exp.with_overrides({"model.kind": "custom", "model.module": module_reference(module)})


def prepare(exp: Experiment, *, allow_large_loo: bool = False, module: Any = None,
            tracking_uri: str | None = None) -> Prepared:
    """Load data, hold out the test set, build and check the folds and the estimator; no training.

    `module`: for model.kind=custom, the class or factory itself (else model.module is imported). A module
    of your own is built once and run on a few rows here, so its errors come before any training (and model.base's).
    """
    ds = load_dataset(exp.data, seed=derive_seed(exp.seed, "data"))
    warnings = scheme_warnings(exp.cv, ds)  # before rows without a time column are taken as time-ordered
    for w in warnings:
        log.warning("%s", w)
    if exp.cv.kind == "rolling" and not ds.is_time_series:
        # Rolling CV says the rows are in time order: the test set, early stopping and folds must
        # treat them so (the latest block held out), or they would train on the future.
        log.info("cv.kind=rolling on data without data.time: rows are taken to be in time order")
        ds = dataclasses.replace(ds, time_index=np.arange(ds.n_samples))
    check_metric_for_task(exp.metric, ds.task)
    check_device(exp.train.device)
    cv_idx, test_idx = holdout_test(ds, exp.data.test_size, seed=derive_seed(exp.seed, "test"))
    folds = make_folds(exp.cv, y=ds.y, task=ds.task, seed=derive_seed(exp.seed, "cv"), indices=cv_idx,
                       groups=ds.groups, is_time_series=ds.is_time_series, min_gap=ds.min_gap,
                       allow_large_loo=allow_large_loo, classes=ds.classes, test_size=exp.data.test_size)
    est = make_estimator(exp, ds, module=module)
    est.check_module(ds.X[cv_idx[:8]], ds.y[cv_idx])
    n_in = ds.X.shape[1]
    if exp.model.base is not None and est.categorical_features:  # the network's width: one-hot columns included
        n_in = int(clone(est).prepare_fit(ds.X[cv_idx], ds.y[cv_idx])[2].shape[1])
    est.set_params(base=load_base(exp.model, fits=est, n_features=n_in, tracking_uri=tracking_uri))
    return Prepared(exp, ds, cv_idx, test_idx, folds, est, warnings, module)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_label(name: str, overrides: Sequence[str] | None = None, when: float | None = None) -> str:
    """A run name that tells runs of one spec apart: the spec name, the `--set` overrides (paths shortened
    to their last part, values cut at 24 characters) and the start time, e.g. `quickstart lr=0.01 11-30 14:02:07`."""
    import time

    parts = [name]
    for item in overrides or []:
        path, _, value = item.partition("=")
        value = value if len(value) <= 24 else value[:23] + "…"
        parts.append(f"{path.rsplit('.', 1)[-1]}={value}")
    parts.append(time.strftime("%m-%d %H:%M:%S", time.localtime(when)))
    return " ".join(parts)[:250]


def run_tags(exp: Experiment, ds: Dataset, folds: Sequence[Fold] = (), engine: str | None = None) -> dict[str, str]:
    """Tags that make a run reproducible and searchable (and its folds comparable: `gencv.folds_digest`).

    `gencv.engine`: `engine` (the engine that trained the folds), else the spec's `train.engine`.
    """
    tags = {
        "gencv.kind": "cv",
        "gencv.spec_digest": exp.digest(),
        "gencv.data_digest": ds.digest,
        "gencv.seed": str(exp.seed),
        # every seed below is derived from gencv.seed; logged so each random choice can be traced
        **{f"gencv.seed.{part}": str(derive_seed(exp.seed, part)) for part in ("data", "test", "cv", "refit")},
        "gencv.version": __version__,
        "gencv.task": ds.task,
        "gencv.cv": exp.cv.kind,
        "gencv.engine": engine or exp.train.engine,
    }
    if folds:
        tags["gencv.folds_digest"] = folds_digest(folds)
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_experiment(
    exp: Experiment,
    *,
    tracker: Tracker | None = None,
    progress: Progress | None = None,
    allow_large_loo: bool = False,
    refit: bool = True,
    resume: str | None = None,
    prepared: Prepared | None = None,
    parent_run: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    after_cv: Sequence[AfterCV] = (),
    register: str | None = None,
    module: Any = None,
) -> RunOutcome:
    """Cross-validate the experiment, refit on all non-test data, score the test set, log everything.

    `resume` is the run id of an interrupted run with the same spec: its finished folds are reused.
    `parent_run`, `run_name`, `tags`: where the run goes in MLflow (a sweep nests its levels under it).
    `after_cv`: steps run on the folds after the CV (`gencv.studies.permutation.PermutationTest`),
    each checked before any training; what they find goes to `outcome.extras` and the parent run.
    `register`: the refit model also becomes a new version of the registered model of that name.
    `module`: a torch module class or factory of your own (a notebook's): the spec becomes model.kind=custom
    with model.module naming it, and model.kwargs go to its constructor.
    """
    tracker = tracker or NullTracker()
    if module is not None:
        exp = with_module(exp, module)
    prep = prepared or prepare(exp, allow_large_loo=allow_large_loo, module=module,
                               tracking_uri=getattr(tracker, "tracking_uri", None))
    ds = prep.dataset
    for step in after_cv:
        step.check(prep)  # before any training
    measure_config = measure_config_for(exp)
    done: dict[int, FoldResult] = {}
    if resume:
        done = finished_folds(tracker, resume, exp)
        run_id = resume
        tracker.client.update_run(run_id, status="RUNNING")  # type: ignore[attr-defined]
        log.info("resuming run %s: %d of %d folds already finished", run_id, len(done), len(prep.folds))
    else:
        run_id = tracker.start_run(exp.name, run_name or run_label(exp.name), parent=parent_run,
                                   tags={**run_tags(exp, ds, prep.folds, engine_used(exp.train.engine, prep.estimator)),
                                         **getattr(prep.estimator.base, "tags", {}), **dict(tags or {})})
        tracker.log_params(run_id, {**exp.flat_params(), "n_samples": ds.n_samples, "n_test": len(prep.test_idx),
                                    "n_folds": len(prep.folds)})
        tracker.log_text(run_id, exp.to_yaml(), "spec.yaml")  # now: --resume compares with it
        tracker.log_inputs(run_id, [prep.data_ref])
    status = "FAILED"
    outcome_ref: list[RunOutcome] = []
    interrupted: list[BaseException] = []
    failing = False
    held_out = HeldOutPredictions(ds.X, ds.y, prep.folds, ds.classes) if ds.task == "classification" else None
    try:
        result = cross_validate(
            prep.estimator, ds.X, ds.y, prep.folds, metric=exp.metric, seed=exp.seed,
            X_test=prep.X_test, y_test=prep.y_test, measures=exp.measures, measure_config=measure_config,
            tracker=tracker, experiment=exp.name, parent_run=run_id, progress=progress, done=done,
            keep_estimators=held_out is not None, on_fold_end=held_out, groups=ds.groups, engine=exp.train.engine,
            train_fraction=exp.data.train_fraction, data=prep.data_ref,
            fold_runs=exp.tracking.child_runs(len(prep.folds)), curve_folds=exp.tracking.curve_folds,
        )
        tracked = not isinstance(tracker, NullTracker)
        outcome = RunOutcome(exp, ds, result, summary_table(result), fold_table(result),
                             run_id=run_id if tracked else None, held_out=held_out.table() if held_out else None)
        outcome_ref.append(outcome)
        outcome.notes.extend(prep.warnings)
        if result.n_failed:
            outcome.notes.append(f"{result.n_failed} of {len(result.folds)} folds failed; summaries use the others")
        outcome.notes.extend(_measure_notes(result))
        if held_out is not None and done and result.ok_folds:
            outcome.notes.append(f"the confusion matrix and per-class report cover the {len(held_out.frames)} folds "
                                 "run now, not the ones reused by --resume")
        if result.ok_folds:
            for step in after_cv:
                outcome.extras[step.name] = step(prep, result)
        tracking_errors: list[str] = []
        if refit and result.ok_folds:
            try:
                outcome.refit_estimator, outcome.refit_test_scores = fit_refit(exp, prep)
            except DivergenceError as exc:
                outcome.notes.append(f"the refit on all non-test data diverged ({exc}); no model was logged")
                tracker.set_tags(run_id, {"gencv.refit": "diverged"})
            except (ValueError, RuntimeError) as exc:  # the folds are kept; the refit is reported as failed
                log.debug("refit failed", exc_info=True)
                outcome.notes.append(f"the refit on all non-test data failed ({type(exc).__name__}: {exc}); "
                                     "no model was logged")
                tracker.set_tags(run_id, {"gencv.refit": "failed"})
            else:
                outcome.extras.update(refit_landscapes(  # the landscape measures of the refit model
                    outcome.refit_estimator, ds.X, ds.y, refit_rows(exp, prep), prep.test_idx, exp.measures,
                    measure_config, derive_seed(exp.seed, "refit", "measures"), outcome.notes))
                try:
                    log_refit(tracker, run_id, prep, outcome.refit_estimator, outcome.refit_test_scores,
                              register=register)
                except TrackingError as exc:  # the refit worked: only its record failed
                    tracking_errors.append(str(exc))
        try:
            _log_parent(tracker, run_id, exp, outcome)
            if isinstance(tracker, MlflowTracker):
                tracker.flush()  # every write confirmed before the run may end FINISHED
        except (TrackingError, OSError) as exc:  # OSError: a full disk while writing the report files
            tracking_errors.append(str(exc) if isinstance(exc, TrackingError) else f"{type(exc).__name__}: {exc}")
        if tracking_errors:
            reason = tracking_errors[0]
            tracker.set_tags(run_id, {"gencv.tracking": "failed", "gencv.tracking_error": reason[:5000]})
            failure = TrackingError(reason + (f" (and {len(tracking_errors) - 1} more tracking error(s))"
                                              if len(tracking_errors) > 1 else ""))
            failure.outcome = outcome  # type: ignore[attr-defined]  # the CLI prints what was computed first
            raise failure
        status = "FINISHED" if result.ok_folds else "FAILED"
        return outcome
    except KeyboardInterrupt as exc:
        status = "KILLED"
        interrupted.append(exc)
        raise
    except BaseException:
        failing = True
        raise
    finally:
        tracker.end_run(run_id, status)
        if isinstance(tracker, MlflowTracker):
            _close_parent(tracker, run_id, outcome_ref, interrupted, failing)


def _close_parent(tracker: MlflowTracker, run_id: str, outcome_ref: list[RunOutcome],
                  interrupted: list[BaseException], failing: bool) -> None:
    """Let the queued writes (the run's end included) land before returning or propagating.

    After Ctrl-C/SIGTERM or another error, the wait is bounded and a failure to record is only logged,
    so the error in flight is the one reported and the process ends within seconds.
    """
    try:
        tracker.flush(timeout=10 if interrupted or failing else None)
    except TrackingError as exc:
        if not (interrupted or failing):
            if outcome_ref:
                exc.outcome = outcome_ref[0]  # type: ignore[attr-defined]
            raise
        log.warning("%s", exc)
        tracker.abort()
        for e in interrupted:
            e.gencv_run_id = tracker.resolve(run_id, flush=False)  # type: ignore[attr-defined]
        return
    if outcome_ref:
        _resolve_ids(tracker, outcome_ref[0])
    for e in interrupted:
        e.gencv_run_id = tracker.resolve(run_id)  # type: ignore[attr-defined]  # for the resume hint


def _measure_notes(result: CVResult) -> list[str]:
    """Notes of the measures (sample size capped, no convergence, failures), one line per distinct note."""
    folds_of: dict[str, list[int]] = {}
    for f in result.folds:
        for note in f.measure_notes:
            folds_of.setdefault(note, []).append(f.index)
    return [f"measures, fold{'s' if len(ix) > 1 else ''} {', '.join(map(str, ix))}: {note}"
            for note, ix in folds_of.items()]


def _resolve_ids(tracker: MlflowTracker, outcome: RunOutcome) -> None:
    if outcome.run_id is not None:
        outcome.run_id = tracker.resolve(outcome.run_id)
    for f in outcome.cv.folds:
        if f.run_id is not None:
            f.run_id = tracker.resolve(f.run_id)


def measure_config_for(exp: Experiment) -> Any:
    if not exp.measures:
        return None
    from gencv.measures import MeasureConfig

    return MeasureConfig(**exp.measure_options)


def refit_model(exp: Experiment, prep: Prepared, tracker: Tracker, run_id: str,
                register: str | None = None) -> tuple[NetEstimator, dict[str, float]]:
    """Fit on every non-test sample (early stopping still validates inside it), score the test set, log the model."""
    est, scores = fit_refit(exp, prep)
    log_refit(tracker, run_id, prep, est, scores, exp, register=register)
    return est, scores


def fit_refit(exp: Experiment, prep: Prepared) -> tuple[NetEstimator, dict[str, float]]:
    """Fit on every non-test sample (early stopping still validates inside it) and score the test set."""
    ds = prep.dataset
    est = make_estimator(exp, ds, seed=derive_seed(exp.seed, "refit"), module=prep.module,
                         base=prep.estimator.base)
    rows = refit_rows(exp, prep)
    est.fit(ds.X[rows], ds.y[rows], groups=None if ds.groups is None else ds.groups[rows])
    scores: dict[str, float] = {}
    if len(prep.test_idx):
        Xt, yt = ds.X[prep.test_idx], ds.y[prep.test_idx]
        labels = list(range(est.n_classes)) if ds.task == "classification" else []
        proba = est.predict_proba(Xt) if ds.task == "classification" else None
        pred = proba.argmax(1) if proba is not None else est.predict(Xt)
        scores = score_all(ds.task, yt, pred, proba, labels)
        scores["loss"] = est.loss(Xt, yt)
    return est, scores


def refit_rows(exp: Experiment, prep: Prepared) -> np.ndarray:
    """The rows the refit fits on: the non-test rows, subsampled to `data.train_fraction` (seeded from the refit)."""
    ds = prep.dataset
    whole = Fold(-1, prep.cv_idx, prep.test_idx)
    return subsample_train(whole, ds.y, ds.groups, exp.data.train_fraction,
                           derive_seed(exp.seed, "refit", "train_fraction"), time_ordered=ds.is_time_series,
                           stratified=ds.task == "classification").train


def log_refit(tracker: Tracker, run_id: str, prep: Prepared, est: NetEstimator, scores: dict[str, float],
              exp: Experiment | None = None, *, register: str | None = None) -> None:
    """Log the refit's test scores, model (a LoggedModel of the run, registered as `register` if given),
    its spec (`exp`, default the prepared one) and initial weights."""
    exp = exp or prep.experiment
    ds = prep.dataset
    tracker.log_metrics(run_id, {f"refit_test_{k}": v for k, v in scores.items()} | {"refit_epochs_run": est.epochs_run_})
    # a module of your own: its file (not a script's or notebook's __main__, which importing would re-run)
    own = not isinstance(est.module, str) and getattr(est.module, "__module__", "__main__") != "__main__"
    source = source_file(est.module) if own else None
    # The MLflow model is exported (torch.export): loading it needs no code of yours. Class names travel with
    # the model (its outputs are the class codes 0..k-1 in this order); with categorical columns the model
    # takes preprocessed rows and the fitted preprocessor is logged beside it.
    takes_preprocessed = "columns" in est.preprocess_.named_steps
    meta = {"task": ds.task, "classes": list(ds.classes), "feature_names": list(ds.feature_names),
            "input": "preprocessed (model_weights/preprocessor.pkl)" if takes_preprocessed else "raw features"}
    tracker.log_model(run_id, est.to_torch(), export_input(est.preprocess_, ds.X[prep.cv_idx][:5]), metadata=meta,
                      register=register)
    if takes_preprocessed and not isinstance(tracker, NullTracker):
        import pickle

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "preprocessor.pkl"
            path.write_bytes(pickle.dumps(est.preprocess_))
            tracker.log_artifact(run_id, path, "model_weights")
    # The spec this model was built from (a study's refit: the best trial's), so `gencv measure` and a
    # transfer rebuild the same network; a module of your own is logged beside it, and rebuilt from that copy.
    tracker.log_text(run_id, exp.to_yaml(), "model_weights/model_spec.yaml")
    if source is not None:
        tracker.set_tags(run_id, {tag_key(f"model_weights/module/{source.name}"): sha256_file(source)})
        tracker.log_artifact(run_id, source, "model_weights/module")
    if est.init_state_ is not None and not isinstance(tracker, NullTracker):
        # The network's weights before training, for `gencv measure`'s dist_from_init.
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "init_state_dict.pt"
            torch.save(est.init_state_, path)
            tracker.set_tags(run_id, {tag_key("model_weights/init_state_dict.pt"): sha256_file(path)})
            tracker.log_artifact(run_id, path, "model_weights")  # copied now, uploaded in order


def _log_parent(tracker: Tracker, run_id: str, exp: Experiment, out: RunOutcome) -> None:
    extra = {k: v for found in out.extras.values() for k, v in found.metrics().items() if np.isfinite(v)}
    tracker.log_metrics(run_id, summary_metrics(out.cv) | extra)
    if isinstance(tracker, NullTracker):
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spec.yaml").write_text(exp.to_yaml())
        out.table.to_csv(d / "folds.csv", index=False)
        out.summary.to_csv(d / "summary.csv", index=False)
        (d / "summary.md").write_text(summary_markdown(out.cv, title=exp.name, test_scores=out.refit_test_scores,
                                                       notes=out.notes, summary=out.summary))
        plots = d / "plots"
        plots.mkdir()
        if out.cv.ok_folds:
            plot_learning_curves(out.cv, plots / "learning_curves.png")
            plot_fold_scores(out.cv, plots / "fold_scores.png")
            _measure_plots(out.cv, plots)
        if out.held_out is not None and len(out.held_out):
            yt, yp = out.held_out["y_true"].to_numpy(), out.held_out["y_pred"].to_numpy()
            per_class_table(yt, yp, out.dataset.classes).to_csv(d / "per_class.csv", index=False)
            out.held_out.to_csv(d / "held_out_predictions.csv", index=False)  # codes and class names
            plot_confusion_matrix(yt, yp, out.dataset.classes, plots / "confusion_matrix.png")
        for found in out.extras.values():
            found.write_artifacts(d)
        for p in d.iterdir():
            tracker.log_artifact(run_id, p, p.name if p.is_dir() else None)
        _fold_plots(tracker, out.cv, d / "fold_plots")


#: fold runs that get their own learning-curve plot (beyond it, e.g. leave-one-out, the parent's plot serves)
MAX_FOLD_PLOTS = 50


def _fold_plots(tracker: Tracker, result: CVResult, tmp: Path) -> None:
    """Each fold run's learning curve (`plots/learning_curve.png`), for up to `MAX_FOLD_PLOTS` folds."""
    folds = [f for f in result.ok_folds if f.history and f.run_id is not None]
    if len(folds) > MAX_FOLD_PLOTS:
        log.info("%d folds: no per-fold learning-curve plots (at most %d)", len(folds), MAX_FOLD_PLOTS)
        return
    tmp.mkdir(exist_ok=True)
    for f in folds:
        (tmp / f"fold{f.index}").mkdir()
        path = plot_learning_curves(dataclasses.replace(result, folds=[f]), tmp / f"fold{f.index}" / "learning_curve.png",
                                    title=f"Fold {f.index}")
        tracker.log_artifact(f.run_id, path, "plots")  # type: ignore[arg-type]


def _measure_plots(result: CVResult, plots: Path) -> None:
    """Measure-vs-gap scatter and spectral densities, when measures were computed."""
    folds = [f for f in result.ok_folds if f.measures]
    if not folds:
        return
    try:
        from gencv.measures import plot_density
    except ImportError:  # pragma: no cover
        return
    from gencv.measures import save_landscapes

    for f in folds:
        m = f.artifacts.get("measure_result")
        if m is not None and getattr(m, "density", None) is not None:
            grid, dens = m.density
            plot_density(grid, dens, plots / f"hessian_density_fold{f.index}.png", getattr(m, "eigenvalues", None))
        if m is not None and getattr(m, "landscapes", None):  # plots/<measure>_fold<i>.png, landscape/ grids
            save_landscapes(m.landscapes, plots.parent, f"fold{f.index}")
    from gencv.report import plot_measures_vs_gap

    plot_measures_vs_gap(result, plots / "measures_vs_gap.png")


def outcome_json(out: RunOutcome) -> dict[str, Any]:
    """A JSON-serialisable summary for `--json` output."""
    return {
        "run_id": out.run_id,
        "name": out.experiment.name,
        "metric": out.cv.metric,
        "folds": [f.to_json() for f in out.cv.folds],
        "summary": out.summary.replace({np.nan: None}).to_dict(orient="records"),
        "refit_test_scores": out.refit_test_scores,
        "notes": out.notes,
        **{name: found.metrics() for name, found in out.extras.items()},
    }

