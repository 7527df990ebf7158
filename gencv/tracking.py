"""Tracking: a small Tracker protocol, an MLflow implementation over MlflowClient, and a null one."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
import weakref
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
    """Tracker over `mlflow.MlflowClient`: explicit run ids, no fluent active-run state.

    `writer` says where writes happen, always in order:
    - "thread" (the default): one background thread, so training never waits on the database;
    - "process": one writer process (`_ProcessWriter`), so MLflow's pure-Python ORM does not compete
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
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._experiments: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._writer: _ThreadWriter | _ProcessWriter | None = None
        if writer == "thread":
            self._writer = _ThreadWriter(self)
        elif writer == "process":
            self._writer = _ProcessWriter(self.tracking_uri, self.artifact_root)
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

    def flush(self) -> None:
        """Wait for every queued write; raise the first error a write hit."""
        if self._writer is None:
            return
        ids, errors = self._writer.flush()
        self._ids.update(ids)
        if errors:
            raise TrackingError(f"MLflow write failed ({self.tracking_uri}): {errors[0]}")

    def resolve(self, run_id: str) -> str:
        """MLflow's id for a (possibly provisional) run id, after every queued write landed."""
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

    def _log_model_now(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model") -> None:
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
            self.client.log_artifacts(self._real(run_id), str(target), name)
            sd = Path(tmp) / "state_dict.pt"
            torch.save(module.state_dict(), sd)
            self.client.log_artifact(self._real(run_id), str(sd), name + "_weights")

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

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._submit("_set_tags_now", run_id, dict(tags))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy `path` to a staging area now (the caller may delete it), upload it in the background."""
        src = Path(path)
        stage = Path(tempfile.mkdtemp(prefix="gencv-stage-"))
        dst = stage / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        self._submit("_upload_staged_now", run_id, str(stage), str(dst), artifact_path)

    def _upload_staged_now(self, run_id: str, stage: str, path: str, artifact_path: str | None) -> None:
        try:
            self._log_artifact_now(run_id, path, artifact_path)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._submit("_log_text_now", run_id, text, artifact_file)

    def log_model(self, run_id: str, module: Any, input_example: np.ndarray, name: str = "model") -> None:
        """Written here, after the queued writes (the run must exist): torch modules stay in this process."""
        self.flush()
        self._log_model_now(run_id, module, np.array(input_example), name)


class _ThreadWriter:
    """Performs a tracker's writes in order on one background thread."""

    def __init__(self, tracker: MlflowTracker) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gencv-mlflow")
        self._run = lambda op, args, kwargs: getattr(tracker, op)(*args, **kwargs)
        self._pending: list[Any] = []
        self._lock = threading.Lock()

    def put(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._lock:
            self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
            self._pending.append(self._executor.submit(self._run, op, args, kwargs))

    def flush(self) -> tuple[dict[str, str], list[str]]:
        """Wait for every queued write: (no new ids: they are the tracker's own), errors."""
        with self._lock:
            pending, self._pending = self._pending, []
        return {}, [f"{type(e).__name__}: {e}" for f in pending if (e := f.exception()) is not None]

    def stop(self) -> None:
        self.flush()
        self._executor.shutdown(wait=True)


class _ProcessWriter:
    """A writer process (`python -m gencv._tracking_writer`) that performs a tracker's writes in order.

    Messages are pickled frames on its stdin, written by a feeder thread so that queueing never
    blocks training; only a flush reads an answer (from its stdout). It runs in its own session, so
    Ctrl-C in a terminal reaches only the parent, which marks its runs KILLED through it and then
    stops it; it exits by itself when the parent is gone (end of file on its stdin).
    """

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        import subprocess
        import sys

        env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        self._proc = subprocess.Popen([sys.executable, "-m", "gencv._tracking_writer", tracking_uri,
                                       "" if artifact_root is None else str(artifact_root)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                      start_new_session=True)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sent = threading.Semaphore(0)  # released by the feeder after each flush marker is written
        self._broken: str | None = None
        self._lock = threading.Lock()  # one flush at a time: answers come in order
        self._seq = 0
        self._feeder = threading.Thread(target=self._feed, name="gencv-mlflow-feeder", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        from gencv._tracking_writer import write_frame

        pipe = self._proc.stdin
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            try:
                if self._broken is None:
                    write_frame(pipe, frame)
            except OSError as exc:
                self._broken = f"{type(exc).__name__}: {exc}"
            if frame[:1] == b"F":
                self._sent.release()
        try:
            pipe.close()  # type: ignore[union-attr]
        except OSError:
            pass

    def put(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import pickle

        self._queue.put(b"W" + pickle.dumps((op, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))

    def flush(self) -> tuple[dict[str, str], list[str]]:
        """Wait until every write queued so far is done: (provisional -> MLflow run ids, errors)."""
        import pickle

        from gencv._tracking_writer import read_frame

        with self._lock:
            self._seq += 1
            self._queue.put(b"F" + pickle.dumps(self._seq))
            self._sent.acquire()
            frame = None if self._broken else read_frame(self._proc.stdout)
            if frame is None:
                code = self._proc.poll()
                raise TrackingError(f"the MLflow writer process is gone (exit code {code}"
                                    f"{'; ' + self._broken if self._broken else ''}); writes queued since the "
                                    "last flush are lost")
            seq, ids, errors = pickle.loads(frame)
            if seq != self._seq:  # pragma: no cover - protocol error
                raise TrackingError(f"MLflow writer answered flush {seq}, expected {self._seq}")
            return ids, errors

    def stop(self) -> None:
        """Let the queued writes finish, then end the process (at most a minute)."""
        if self._feeder.is_alive():
            self._queue.put(None)
            self._feeder.join(timeout=60)
        try:
            self._proc.wait(timeout=60)
        except Exception:  # pragma: no cover - a write hung for a minute
            self._proc.kill()


def load_logged_model(tracker: MlflowTracker, run_id: str, name: str = "model") -> Any:
    """Download and load an `mlflow.pytorch` model logged by `MlflowTracker.log_model`."""
    import mlflow.pytorch

    run_id = tracker.resolve(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.client.download_artifacts(run_id, name, tmp)
        return mlflow.pytorch.load_model(local)


def make_tracker(enabled: bool, tracking_uri: str | None = None) -> Tracker:
    """What the CLI records with: an MlflowTracker writing from its own process when enabled, else NullTracker."""
    return MlflowTracker(tracking_uri, writer="process") if enabled else NullTracker()


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
