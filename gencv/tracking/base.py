"""The Tracker protocol, the null tracker, and where runs are tracked by default (no MLflow import here)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gencv.errors import TrackingError

log = logging.getLogger(__name__)


DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


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
    def log_all(self, run_id: str, *, params: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None, series: Mapping[str, Sequence[float]] | None = None,
                tags: Mapping[str, str] | None = None) -> None: ...


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

    def log_all(self, run_id: str, *, params: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None, series: Mapping[str, Sequence[float]] | None = None,
                tags: Mapping[str, str] | None = None) -> None:
        pass


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else the local SQLite default (directory created)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking URI {uri!r}: cannot create the directory {str(db.parent)!r} "
                                f"({exc.strerror or exc}); use a writable path, e.g. sqlite:///mlruns/mlflow.db") from None
    elif uri.startswith(("file:", "./", "/")) or "://" not in uri:
        raise TrackingError(
            f"tracking URI {uri!r}: MLflow's file store is no longer supported; "
            "use sqlite:///mlruns/mlflow.db (the default) or an http(s):// MLflow server"
        )
    return uri

