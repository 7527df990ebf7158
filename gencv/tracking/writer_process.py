"""The MLflow writer process behind `MlflowTracker(writer="process")` (`python -m gencv.tracking.writer_process URI ROOT`).

Frames on stdin: b"W" + pickle((method, args, kwargs)), a write to perform in order; b"F" + pickle(n),
a flush, answered on stdout with pickle((n, new provisional -> MLflow run ids, errors since the
last flush)). End of file on stdin (the parent stopped it, or died) ends the process once every
write before it is done. Frames come only from the parent process that started this one.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
from typing import Any

from gencv.tracking.store import is_unreachable
from gencv.tracking.writers import read_frame, write_frame


def main(argv: list[str]) -> int:
    # Ctrl-C and SIGTERM are the parent's to handle: it marks its runs KILLED through this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the answers
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from gencv.tracking.mlflow_tracker import MlflowTracker

    uri, root = argv[0], argv[1] or None
    tracker = MlflowTracker(uri, root, writer="inline")
    errors: list[str] = []
    reported: set[str] = set()
    unreachable: str | None = None  # the error that showed the server gone: later writes are skipped, not retried
    skipped = 0
    inbox = sys.stdin.buffer
    while (frame := read_frame(inbox)) is not None:
        kind, body = frame[:1], frame[1:]
        if kind == b"F":
            new = {k: v for k, v in tracker._ids.items() if k not in reported}
            reported.update(new)
            if skipped:
                errors.append(f"{skipped} later write(s) skipped: the tracking server stopped answering")
                skipped = 0
            write_frame(answers, pickle.dumps((pickle.loads(body), new, errors)))
            errors = []
            continue
        op, args, kwargs = pickle.loads(body)
        if unreachable is not None:  # each try would wait for MLflow's retries: fail the backlog fast
            skipped += 1
            continue
        try:
            _write(tracker, op, args, kwargs)
        except Exception as exc:  # reported at the next flush; later writes still go through
            logging.getLogger(__name__).debug("MLflow write %s failed", op, exc_info=True)
            text = " ".join(str(exc).split())
            errors.append(f"{op.strip('_').removesuffix('_now')}: {type(exc).__name__}: {text[:500]}")
            if tracker.tracking_uri.startswith(("http://", "https://")) and is_unreachable(exc):
                unreachable = text
    return 0


#: what two processes writing one SQL store at once can hit, and a second try gets past: SQLite's write lock,
#: and a row the other process inserted between MLflow's look-up and its insert (a data set both runs log)
_RACES = ("database is locked", "UNIQUE constraint failed", "duplicate key value", "IntegrityError")


def _write(tracker: Any, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], tries: int = 4) -> None:
    """Perform one write; a race with another writer of the same store is tried again (0.5, 1, 2 s later)."""
    for attempt in range(tries):
        try:
            getattr(tracker, op)(*args, **kwargs)
            return
        except Exception as exc:
            if attempt == tries - 1 or not any(r in f"{type(exc).__name__}: {exc}" for r in _RACES):
                raise
            logging.getLogger(__name__).debug("MLflow write %s raced another writer; trying again", op)
            time.sleep(0.5 * 2**attempt)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
