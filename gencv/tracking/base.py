"""The Tracker protocol, the null tracker, and where runs are tracked by default (no MLflow import here)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gencv.checksums import rows_digest
from gencv.errors import TrackingError

log = logging.getLogger(__name__)


DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


#: contexts of a fold's parts as run inputs: the rows fitted, the early-stopping split inside the
#: training fold, the held-out fold
FOLD_CONTEXTS = ("training", "early_stopping", "validation")

_SKLEARN_BUNDLED = ("iris", "wine", "breast_cancer", "digits", "diabetes")


@dataclass(frozen=True)
class DataRef:
    """A data set, or some of its rows, as a run input: what identifies it (name, digest, source, shapes), no rows.

    `source_type`/`source` follow MLflow's dataset sources: "local" with `{"uri": file URI}` for a
    CSV/Parquet file, "code" with `{"tags": {...}}` for data a loader builds (scikit-learn's bundled sets,
    synthetic data, the shipped series). `context` is the input's role on the run ("" for the whole set).
    """

    name: str
    digest: str
    source_type: str
    source: str  # JSON
    n_rows: int
    row_shape: tuple[int, ...]  # one row's feature shape, e.g. (30,)
    features_dtype: str
    targets_dtype: str
    context: str = ""

    @classmethod
    def of(cls, ds: Any, source: str) -> DataRef:
        """The whole of a `gencv.data.Dataset` loaded from the spec's `data.source`."""
        kind, _, path = source.partition(":")
        if kind in ("csv", "parquet") and path:
            src_type, src = "local", {"uri": Path(path).resolve().as_uri()}
        else:
            loader = f"sklearn.datasets.load_{source}" if source in _SKLEARN_BUNDLED else "gencv.data.load_dataset"
            src_type, src = "code", {"tags": {"gencv.data.source": source, "loader": loader}}
        X, y = np.asarray(ds.X), np.asarray(ds.y)
        return cls(name=str(ds.name), digest=str(ds.digest), source_type=src_type, source=json.dumps(src),
                   n_rows=int(X.shape[0]), row_shape=tuple(int(d) for d in X.shape[1:]),
                   features_dtype=str(X.dtype), targets_dtype=str(y.dtype))

    def part(self, label: str, rows: np.ndarray, context: str) -> DataRef:
        """Rows `rows` of this data set as input `context`, named e.g. `iris[fold 3 validation]`; same source."""
        return replace(self, name=f"{self.name}[{label}]", digest=rows_digest(rows, of=self.digest),
                       n_rows=len(rows), context=context)

    def fold_parts(self, fold: int, rows: Mapping[str, np.ndarray]) -> list[DataRef]:
        """The parts of fold `fold` (context -> absolute row indices) in `FOLD_CONTEXTS` order, empty ones left out."""
        return [self.part(f"fold {fold} {ctx}", rows[ctx], ctx) for ctx in FOLD_CONTEXTS
                if ctx in rows and len(rows[ctx])]


@runtime_checkable
class Tracker(Protocol):
    """What the library needs from a tracking backend; runs are identified by string ids."""

    def start_run(self, experiment: str, run_name: str, *, parent: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str: ...
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None: ...
    def log_series(self, run_id: str, series: Mapping[str, Sequence[float]], start_step: int = 1) -> None: ...
    def log_steps(self, run_id: str, steps: Mapping[int, Mapping[str, float]]) -> None: ...
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...
    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model", *,
                  metadata: Mapping[str, Any] | None = None, register: str | None = None) -> None: ...
    def log_inputs(self, run_id: str, inputs: Sequence[DataRef]) -> None: ...
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

    def log_steps(self, run_id: str, steps: Mapping[int, Mapping[str, float]]) -> None:
        pass

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        pass

    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model", *,
                  metadata: Mapping[str, Any] | None = None, register: str | None = None) -> None:
        pass

    def log_inputs(self, run_id: str, inputs: Sequence[DataRef]) -> None:
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

