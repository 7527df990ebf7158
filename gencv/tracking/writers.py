"""Asynchronous writers behind `MlflowTracker`: a background thread, or a writer process fed framed messages."""

from __future__ import annotations

import os
import queue
import struct
import subprocess
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

    def flush(self, timeout: float | None = None) -> tuple[dict[str, str], list[str]]:
        """Wait for every queued write: (no new ids: they are the tracker's own), errors."""
        from concurrent.futures import TimeoutError as FutureTimeout, wait

        with self._lock:
            pending, self._pending = self._pending, []
        _, not_done = wait(pending, timeout=timeout)
        if not_done:
            with self._lock:
                self._pending = list(not_done) + self._pending
            raise TrackingError(f"the MLflow writer thread did not finish {len(not_done)} write(s) in {timeout:g} s")
        try:
            return {}, [f"{type(e).__name__}: {e}" for f in pending if (e := f.exception(timeout=0)) is not None]
        except FutureTimeout:  # pragma: no cover - every future is done here
            raise TrackingError("the MLflow writer thread did not answer") from None

    def stop(self, timeout: float | None = None) -> None:
        if timeout == 0:  # drop what is queued; a write in progress ends on its own (the thread is a daemon's)
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        self.flush(timeout)
        self._executor.shutdown(wait=True)


class ProcessWriter:
    """A writer process (`python -m gencv.tracking.writer_process`) that performs a tracker's writes in order.

    Messages are pickled frames on its stdin, written by a feeder thread so that queueing never
    blocks training; only a flush reads an answer (from its stdout). It runs in its own session, so
    Ctrl-C in a terminal reaches only the parent, which marks its runs KILLED through it and then
    stops it; it exits by itself when the parent is gone (end of file on its stdin).
    """

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
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
        self._inbuf = bytearray()  # answer bytes read but not yet taken as a frame
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

    def flush(self, timeout: float | None = None) -> tuple[dict[str, str], list[str]]:
        """Wait until every write queued so far is done: (provisional -> MLflow run ids, errors).

        With `timeout`, raise TrackingError when the writer has not answered in that many seconds
        (it may be stuck on a server that went away). Answers to earlier flushes that were cut short
        (Ctrl-C) are read first and merged in, so the next flush stays in step.
        """
        import pickle
        import time

        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        def late() -> TrackingError:
            return TrackingError(f"the MLflow writer process did not answer in {timeout:g} s (a write is stuck, "
                                 "e.g. on a tracking server that went away); writes queued since the last flush "
                                 "may be lost")

        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise late()
        try:
            self._seq += 1
            self._queue.put(b"F" + pickle.dumps(self._seq))
            if not self._sent.acquire(timeout=left()):
                raise late()
            ids: dict[str, str] = {}
            errors: list[str] = []
            while True:
                frame = None if self._broken else self._read_answer(deadline)
                if frame is None:
                    code = self._proc.poll()
                    raise TrackingError(f"the MLflow writer process is gone (exit code {code}"
                                        f"{'; ' + self._broken if self._broken else ''}); writes queued since the "
                                        "last flush are lost")
                seq, new_ids, new_errors = pickle.loads(frame)
                ids.update(new_ids)  # answers to flushes cut short by Ctrl-C come first; their news count too
                errors.extend(new_errors)
                if seq == self._seq:
                    return ids, errors
        finally:
            self._lock.release()

    def _read_answer(self, deadline: float | None) -> bytes | None:
        """The next answer frame from the writer's stdout, or None at end of file.

        Read with select and os.read on the descriptor, keeping partial frames in `_inbuf`, so a
        deadline can be kept and an interrupted read loses nothing.
        """
        import select
        import time

        fd = self._proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            if len(self._inbuf) >= _HEADER.size:
                (size,) = _HEADER.unpack(self._inbuf[:_HEADER.size])
                if len(self._inbuf) >= _HEADER.size + size:
                    frame = bytes(self._inbuf[_HEADER.size:_HEADER.size + size])
                    del self._inbuf[:_HEADER.size + size]
                    return frame
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                raise TrackingError("the MLflow writer process did not answer in time (a write is stuck, e.g. on "
                                    "a tracking server that went away); writes queued since the last flush may "
                                    "be lost")
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._inbuf += chunk

    def stop(self, timeout: float | None = 60) -> None:
        """Let the queued writes finish, then end the process; kill it after `timeout` seconds (0: now)."""
        if timeout == 0:
            self._broken = self._broken or "stopped"
            self._proc.kill()
        if self._feeder.is_alive():
            self._queue.put(None)
            self._feeder.join(timeout=timeout if timeout else 1)
        try:
            self._proc.wait(timeout=timeout if timeout else 5)
        except subprocess.TimeoutExpired:  # a write hung for `timeout` seconds
            self._proc.kill()

