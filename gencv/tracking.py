"""Tracking: a small Tracker protocol, an MLflow implementation over MlflowClient, and a null one."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gencv.errors import TrackingError

__all__ = ["DEFAULT_TRACKING_URI", "MlflowTracker", "NullTracker", "Tracker", "make_tracker", "resolve_tracking_uri"]

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100


@runtime_checkable
class Tracker(Protocol):
    """What the library needs from a tracking backend; runs are identified by string ids."""

    def start_run(self, experiment: str, run_name: str, *, parent: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str: ...
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None: ...
    def log_series(self, run_id: str, series: Mapping[str, Sequence[float]], start_step: int = 1) -> None: ...
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...
    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model") -> None: ...
    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Records nothing; run ids are still unique so callers need no special case."""

    def start_run(self, experiment: str, run_name: str, *, parent: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str:
        return uuid.uuid4().hex

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_series(self, run_id: str, series: Mapping[str, Sequence[float]], start_step: int = 1) -> None:
        pass

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        pass

    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model") -> None:
        pass

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        pass


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else the local SQLite default (directory created)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("file:", "./", "/")) or "://" not in uri:
        raise TrackingError(
            f"tracking URI {uri!r}: MLflow's file store is no longer supported; "
            "use sqlite:///mlruns/mlflow.db (the default) or an http(s):// MLflow server"
        )
    return uri


def _finite(v: float) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)


class MlflowTracker:
    """Tracker over `mlflow.MlflowClient`: explicit run ids, no fluent active-run state."""

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | Path | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        if artifact_root is None and self.tracking_uri.startswith("sqlite:///"):
            artifact_root = Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
        self.artifact_root = Path(artifact_root).resolve() if artifact_root is not None else None
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._experiments: dict[str, str] = {}

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
                exp_id = self.client.create_experiment(name, artifact_location=location)
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
        all_tags = {"mlflow.runName": run_name, **(tags or {})}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=all_tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # ---------------------------------------------------------------- values
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for chunk in _chunks(items, _MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if _finite(v)]
        for chunk in _chunks(items, _MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)

    def log_series(self, run_id: str, series: Mapping[str, Sequence[float]], start_step: int = 1) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, start_step + i)
            for k, values in series.items()
            for i, v in enumerate(values)
            if _finite(v)
        ]
        for chunk in _chunks(items, _MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, _MAX_TAGS):
            self.client.log_batch(run_id, tags=chunk)

    # ---------------------------------------------------------------- files
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(run_id, str(p), artifact_path)
        else:
            self.client.log_artifact(run_id, str(p), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model") -> None:
        """Save an `mlflow.pytorch` model (signature + input example) and its state_dict under the run."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        module = module.eval()
        with torch.no_grad():
            out = module(torch.as_tensor(input_example, dtype=torch.float32)).numpy()
        signature = infer_signature(input_example.astype(np.float32), out)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            # Explicit requirements: MLflow's inference imports the model in a subprocess (~9 s).
            reqs = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
            mlflow.pytorch.save_model(module, str(target), signature=signature,
                                      input_example=input_example.astype(np.float32), pip_requirements=reqs)
            self.client.log_artifacts(run_id, str(target), name)
            sd = Path(tmp) / "state_dict.pt"
            torch.save(module.state_dict(), sd)
            self.client.log_artifact(run_id, str(sd), name + "_weights")


def load_logged_model(tracker: MlflowTracker, run_id: str, name: str = "model") -> Any:
    """Download and load an `mlflow.pytorch` model logged by `MlflowTracker.log_model`."""
    import mlflow.pytorch

    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.client.download_artifacts(run_id, name, tmp)
        return mlflow.pytorch.load_model(local)


def make_tracker(enabled: bool, tracking_uri: str | None = None) -> Tracker:
    """MlflowTracker when enabled, else NullTracker."""
    return MlflowTracker(tracking_uri) if enabled else NullTracker()


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
