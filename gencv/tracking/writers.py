"""Asynchronous writers behind `MlflowTracker`: a background thread, or a writer process fed framed messages."""

from __future__ import annotations

import os
import queue
import struct
import threading
from pathlib import Path
from typing import IO, Any

from gencv.errors import TrackingError

_HEADER = struct.Struct("!I")


def write_frame(pipe: IO[bytes] | None, frame: bytes) -> None:
    """Length-prefixed frame; flushed so the reader never waits on a buffer."""
    assert pipe is not None
    pipe.write(_HEADER.pack(len(frame)) + frame)
    pipe.flush()


def read_frame(pipe: IO[bytes] | None) -> bytes | None:
    """The next frame, or None at end of file."""
    assert pipe is not None
    head = pipe.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    body = pipe.read(size)
    return body if len(body) == size else None


class ThreadWriter:
    """Performs a tracker's writes in order on one background thread."""

    def __init__(self, tracker: Any) -> None:
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


class ProcessWriter:
    """A writer process (`python -m gencv.tracking.writer_process`) that performs a tracker's writes in order.

    Messages are pickled frames on its stdin, written by a feeder thread so that queueing never
    blocks training; only a flush reads an answer (from its stdout). It runs in its own session, so
    Ctrl-C in a terminal reaches only the parent, which marks its runs KILLED through it and then
    stops it; it exits by itself when the parent is gone (end of file on its stdin).
    """

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        import subprocess
        import sys

        env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        self._proc = subprocess.Popen([sys.executable, "-m", "gencv.tracking.writer_process", tracking_uri,
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

