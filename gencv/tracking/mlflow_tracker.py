"""`MlflowTracker`: the Tracker over `mlflow.MlflowClient`, with explicit run ids and batched writes."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gencv.checksums import sha256_file, tag_key
from gencv.errors import TrackingError
from gencv.tracking.base import DataRef, NullTracker, Tracker, resolve_tracking_uri
from gencv.tracking.store import bound_http_retries, check_sqlite_file, explain, store_lock
from gencv.tracking.writers import ProcessWriter, ThreadWriter

log = logging.getLogger(__name__)


_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100

# MLflow's experiment-kind tag (the value its UI's model-training view is named by). MLflow 3.17's UI
# opens in the view its sidebar switch or a `?workflowType=machine_learning` link chose, so `gencv ui`
# prints such a link; the tag marks gencv's experiments for the MLflow versions and tools that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _finite(v: float) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)


class MlflowTracker:
    """Tracker over `mlflow.MlflowClient`: explicit run ids, no fluent active-run state.

    `writer` says where writes happen, always in order:
    - "thread" (the default): one background thread, so training never waits on the database;
    - "process": one writer process (`ProcessWriter`), so MLflow's pure-Python ORM does not compete
      with training for the GIL either. A thread saves no time on a small network (measured: as slow
      as writing inline); a process does, for about 2 s of start-up on another core. `gencv run` and
      `gencv tune` use it (`make_tracker`);
    - "inline": in the calling thread.
    Asynchronous writers hand out provisional run ids from `start_run`; call `flush()` (or
    `resolve(run_id)`) before reading back; errors of queued writes are raised there.
    """

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | Path | None = None,
                 writer: str = "thread") -> None:
        from mlflow import MlflowClient

        if writer not in ("thread", "process", "inline"):
            raise ValueError(f"writer: got {writer!r}; use 'thread', 'process' or 'inline'")
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        if artifact_root is None and self.tracking_uri.startswith("sqlite:///"):
            artifact_root = Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
        self.artifact_root = Path(artifact_root).resolve() if artifact_root is not None else None
        if self.tracking_uri.startswith(("http://", "https://")):
            bound_http_retries()
        check_sqlite_file(self.tracking_uri)
        try:
            with store_lock(self.tracking_uri):  # MLflow creates or migrates a new store on first use
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                self.client.search_experiments(max_results=1)
        except Exception as exc:
            raise explain(self.tracking_uri, exc) from None
        self._experiments: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._writer: ThreadWriter | ProcessWriter | None = None
        if writer == "thread":
            self._writer = ThreadWriter(self)
        elif writer == "process":
            self._writer = ProcessWriter(self.tracking_uri, self.artifact_root)
        if self._writer is not None:
            weakref.finalize(self, self._writer.stop)  # also at interpreter exit: queued writes land first

    # ---------------------------------------------------------------- async plumbing
    def _real(self, run_id: str) -> str:
        return self._ids.get(run_id, run_id)

    def _submit(self, op: str, *args: Any, **kwargs: Any) -> None:
        """Run method `op` with these arguments now, or queue it for the writer process."""
        if self._writer is None:
            getattr(self, op)(*args, **kwargs)
        else:
            self._writer.put(op, args, kwargs)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every queued write (at most `timeout` seconds); raise the first error a write hit."""
        if self._writer is None:
            return
        ids, errors = self._writer.flush(timeout)
        self._ids.update(ids)
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise TrackingError(f"tracking URI {self.tracking_uri!r}: MLflow write failed: {errors[0]}{more}; "
                                "check the store, its artifact location and free disk space")

    def abort(self) -> None:
        """Stop the writer now, dropping writes it has not done (after Ctrl-C, or when it does not answer)."""
        if self._writer is not None:
            self._writer.stop(timeout=0)
            self._writer = None

    def check(self, experiment: str) -> None:
        """Probe the store before any training: get or create `experiment` and read its runs."""
        try:
            exp_id = self.experiment_id(experiment)
            self.client.search_runs([exp_id], max_results=1)
        except Exception as exc:
            raise explain(self.tracking_uri, exc) from None

    def resolve(self, run_id: str, *, flush: bool = True) -> str:
        """MLflow's id for a (possibly provisional) run id, after every queued write landed (unless `flush=False`)."""
        if flush:
            self.flush()
        return self._real(run_id)

    def close(self) -> None:
        """Flush and stop the writer."""
        self.flush()
        if self._writer is not None:
            self._writer.stop()
            self._writer = None

    # ---------------------------------------------------------------- runs
    def experiment_id(self, name: str) -> str:
        """Get or create the experiment called `name`."""
        if name in self._experiments:
            return self._experiments[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.artifact_root is not None:
                location = (self.artifact_root / name.replace("/", "_")).as_uri()
            try:
                exp_id = self.client.create_experiment(name, artifact_location=location,
                                                       tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except Exception:  # another worker created it first
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def start_run(self, experiment: str, run_name: str, *, parent: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str:
        provisional = f"pending-{uuid.uuid4().hex}"
        self._submit("_create_run_now", provisional, experiment, run_name, parent, dict(tags or {}),
                     int(time.time() * 1000))
        return self.resolve(provisional) if self._writer is None else provisional

    def _create_run_now(self, provisional: str, experiment: str, run_name: str, parent: str | None,
                        tags: Mapping[str, str], start: int) -> None:
        all_tags = {"mlflow.runName": run_name, **tags}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = self._real(parent)
        run = self.client.create_run(self.experiment_id(experiment), start_time=start, run_name=run_name, tags=all_tags)
        self._ids[provisional] = run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._submit("_end_run_now", run_id, status, int(time.time() * 1000))

    def _end_run_now(self, run_id: str, status: str, end: int) -> None:
        self.client.set_terminated(self._real(run_id), status=status, end_time=end)

    # ---------------------------------------------------------------- values
    def _log_all_now(self, run_id: str, *, params: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None, series: Mapping[str, Sequence[float]] | None = None,
                tags: Mapping[str, str] | None = None) -> None:
        """Params, summary metrics (step 0), step series (steps 1..n) and tags in as few log_batch calls as fit."""
        from mlflow.entities import Metric, Param, RunTag

        ts = int(time.time() * 1000)
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items() if _finite(v)]
        ms += [Metric(k, float(v), ts, i + 1) for k, vals in (series or {}).items()
               for i, v in enumerate(vals) if _finite(v)]
        tg = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while ps or ms or tg:
            self.client.log_batch(self._real(run_id), metrics=ms[:_MAX_METRICS], params=ps[:_MAX_PARAMS], tags=tg[:_MAX_TAGS])
            ps, ms, tg = ps[_MAX_PARAMS:], ms[_MAX_METRICS:], tg[_MAX_TAGS:]

    def _log_params_now(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for chunk in _chunks(items, _MAX_PARAMS):
            self.client.log_batch(self._real(run_id), params=chunk)

    def _log_metrics_now(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if _finite(v)]
        for chunk in _chunks(items, _MAX_METRICS):
            self.client.log_batch(self._real(run_id), metrics=chunk)

    def _log_series_now(self, run_id: str, series: Mapping[str, Sequence[float]], start_step: int = 1) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, start_step + i)
            for k, values in series.items()
            for i, v in enumerate(values)
            if _finite(v)
        ]
        for chunk in _chunks(items, _MAX_METRICS):
            self.client.log_batch(self._real(run_id), metrics=chunk)

    def _log_steps_now(self, run_id: str, steps: Mapping[int, Mapping[str, float]]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for step, metrics in steps.items()
                 for k, v in metrics.items() if _finite(v)]
        for chunk in _chunks(items, _MAX_METRICS):
            self.client.log_batch(self._real(run_id), metrics=chunk)

    def _set_tags_now(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, _MAX_TAGS):
            self.client.log_batch(self._real(run_id), tags=chunk)

    # ---------------------------------------------------------------- files
    def _log_artifact_now(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self._real(run_id), str(p), artifact_path)
        else:
            self.client.log_artifact(self._real(run_id), str(p), artifact_path)

    def _log_text_now(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(self._real(run_id), text, artifact_file)

    def _log_inputs_now(self, run_id: str, inputs: Sequence[DataRef]) -> None:
        self.client.log_inputs(self._real(run_id), datasets=[_dataset_input(ref) for ref in inputs])

    def _log_model_now(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model",
                       metadata: Mapping[str, Any] | None = None, register: str | None = None) -> str:
        """Log an `mlflow.pytorch` model as a LoggedModel whose source run is `run_id`, plus its state_dict.

        The model carries a signature, an input example, `metadata` (task, class labels, feature names,
        what it takes as input) in its MLmodel file, and as tags the class labels and gencv's version; it is the run's output (the run's Models column). With `register`,
        a version of the registered model of that name is created from it. Returns the model id.
        """
        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model, infer_signature

        from gencv import __version__

        real = self._real(run_id)
        run = self.client.get_run(real)
        module = module.eval()
        example = input_example.astype(np.float32)
        with torch.no_grad():
            out = module(torch.as_tensor(example)).numpy()
        signature = infer_signature(example, out)
        meta = dict(metadata or {})
        classes = [str(c) for c in meta.get("classes", [])]
        info = {"gencv.version": __version__, "gencv.classes": json.dumps(classes)}
        params = dict(run.data.params)  # the spec, flattened: shown on the model's page
        model = self.client.create_logged_model(run.info.experiment_id, name=name, source_run_id=real,
                                                tags=info, params=params, model_type="gencv")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / name
                mlmodel = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=real,
                                model_id=model.model_id)
                # Explicit requirements: MLflow's inference imports the model in a subprocess (~9 s).
                reqs = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
                mlflow.pytorch.save_model(module, str(target), mlflow_model=mlmodel, signature=signature,
                                          input_example=example, pip_requirements=reqs,
                                          metadata={"gencv_version": __version__, **meta})
                self.client.log_model_artifacts(model.model_id, str(target))
                sd = Path(tmp) / "state_dict.pt"
                torch.save(module.state_dict(), sd)
                self.client.log_artifact(real, str(sd), name + "_weights")
                # checked by `gencv measure` and transfer before the weights are used
                self.client.set_tag(real, tag_key(f"{name}_weights/state_dict.pt"), sha256_file(sd))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(real, [LoggedModelOutput(model.model_id, step=0)])
        self.client.set_tag(real, "gencv.model_id", model.model_id)
        if register:
            self._register_now(register, model.model_id, real)
        return str(model.model_id)

    def _register_now(self, name: str, model_id: str, run_id: str) -> None:
        """A new version of registered model `name` (created when missing) from logged model `model_id`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # The model's artifact location, not `models:/<id>`: MLflow's registry resolves that with the global
        # tracking URI, not this client's (a TODO in its SQLAlchemy store), and would not find the model.
        location = self.client.get_logged_model(model_id).artifact_location
        version = self.client.create_model_version(name, source=location, run_id=run_id, model_id=model_id)
        # as MLflow's own `register_model` does: the logged model lists its registered versions (Models page)
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        listed = json.loads(self.client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        listed.append({"name": name, "version": version.version})
        self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
        self.client.set_tag(run_id, "gencv.registered_model", f"{name}/{version.version}")
        log.info("registered model %s version %s", name, version.version)

    # ---------------------------------------------------------------- queued writes
    def log_all(self, run_id: str, *, params: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None, series: Mapping[str, Sequence[float]] | None = None,
                tags: Mapping[str, str] | None = None) -> None:
        self._submit("_log_all_now", run_id, params=dict(params or {}), metrics=dict(metrics or {}),
                     series={k: list(v) for k, v in (series or {}).items()}, tags=dict(tags or {}))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._submit("_log_params_now", run_id, dict(params))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self._submit("_log_metrics_now", run_id, dict(metrics), step)

    def log_series(self, run_id: str, series: Mapping[str, Sequence[float]], start_step: int = 1) -> None:
        self._submit("_log_series_now", run_id, {k: list(v) for k, v in series.items()}, start_step)

    def log_steps(self, run_id: str, steps: Mapping[int, Mapping[str, float]]) -> None:
        """Metrics at several steps in one write (one database commit per 1000 values)."""
        self._submit("_log_steps_now", run_id, {int(k): dict(v) for k, v in steps.items()})

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._submit("_set_tags_now", run_id, dict(tags))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy `path` to a staging area now (the caller may delete it), upload it in the background."""
        src = Path(path)
        stage = Path(tempfile.mkdtemp(prefix="gencv-stage-"))
        dst = stage / src.name
        try:
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        except (OSError, shutil.Error) as exc:  # a full disk, most often
            shutil.rmtree(stage, ignore_errors=True)
            raise TrackingError(f"artifact {src.name!r}: cannot stage it in {str(stage.parent)!r} for upload "
                                f"({exc}); free disk space there or set TMPDIR") from None
        self._submit("_upload_staged_now", run_id, str(stage), str(dst), artifact_path)

    def _upload_staged_now(self, run_id: str, stage: str, path: str, artifact_path: str | None) -> None:
        try:
            self._log_artifact_now(run_id, path, artifact_path)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._submit("_log_text_now", run_id, text, artifact_file)

    def log_inputs(self, run_id: str, inputs: Sequence[DataRef]) -> None:
        """Data sets (or parts of them) as the run's inputs: name, digest, source, schema, row counts; no rows."""
        self._submit("_log_inputs_now", run_id, list(inputs))

    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model", *,
                  metadata: Mapping[str, Any] | None = None, register: str | None = None) -> None:
        """Written here, after the queued writes (the run must exist): torch modules stay in this process."""
        self.flush()
        try:
            self._log_model_now(run_id, module, np.array(input_example), name, metadata, register)
        except Exception as exc:  # the model was fitted: a write failure is tracking's, not the refit's
            raise TrackingError(f"tracking URI {self.tracking_uri!r}: logging the model {name!r} failed "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:500]}); check the artifact "
                                "location and free disk space") from None


def logged_model_id(tracker: MlflowTracker, run_id: str, name: str = "model") -> str:
    """The id of the model called `name` that run `run_id` logged (its newest, if several)."""
    run_id = tracker.resolve(run_id)
    run = tracker.client.get_run(run_id)
    found = tracker.client.search_logged_models([run.info.experiment_id],
                                                filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
                                                order_by=[{"field_name": "creation_time", "ascending": False}])
    if not found:
        raise TrackingError(f"run {run_id}: no logged model called {name!r}; it was run without a refit "
                            "(or before gencv logged models as MLflow LoggedModels), so load its "
                            f"{name}_weights/state_dict.pt instead")
    return str(found[0].model_id)


def load_logged_model(tracker: MlflowTracker, run_id: str, name: str = "model") -> Any:
    """Download and load the `mlflow.pytorch` model run `run_id` logged with `MlflowTracker.log_model`."""
    import mlflow.pytorch
    from mlflow.artifacts import download_artifacts

    model = tracker.client.get_logged_model(logged_model_id(tracker, run_id, name))
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(artifact_uri=model.artifact_location, dst_path=tmp,
                                   tracking_uri=tracker.tracking_uri)
        return mlflow.pytorch.load_model(local)


def _dataset_input(ref: DataRef) -> Any:
    """MLflow's DatasetInput for `ref`: schema and profile from shapes and dtypes (as `mlflow.data.from_numpy`
    would give), with the input's context tag; no rows are read or copied."""
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types.utils import _infer_schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    feats = np.empty((0, *ref.row_shape), dtype=ref.features_dtype)
    targets = np.empty((0,), dtype=ref.targets_dtype)
    schema = TensorDatasetSchema(features=_infer_schema(feats), targets=_infer_schema(targets)).to_dict()
    per_row = int(np.prod(ref.row_shape)) if ref.row_shape else 1
    profile = {"features_shape": [ref.n_rows, *ref.row_shape], "features_size": ref.n_rows * per_row,
               "features_nbytes": ref.n_rows * per_row * feats.itemsize, "targets_shape": [ref.n_rows],
               "targets_size": ref.n_rows, "targets_nbytes": ref.n_rows * targets.itemsize}
    dataset = Dataset(name=ref.name, digest=ref.digest, source_type=ref.source_type, source=ref.source,
                      schema=json.dumps(schema), profile=json.dumps(profile))
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, ref.context)] if ref.context else [])


def make_tracker(enabled: bool, tracking_uri: str | None = None, experiment: str | None = None) -> Tracker:
    """What the CLI records with: an MlflowTracker writing from its own process when enabled, else NullTracker.

    With `experiment`, the store is probed (`MlflowTracker.check`) so a store that cannot be used fails
    here, before any training.
    """
    if not enabled:
        return NullTracker()
    tracker = MlflowTracker(tracking_uri, writer="process")
    if experiment is not None:
        try:
            tracker.check(experiment)
        except TrackingError:
            tracker.abort()
            raise
    return tracker


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk

