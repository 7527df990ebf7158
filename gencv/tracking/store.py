"""Opening a tracking store safely: quick checks of a SQLite file, a lock around its creation, bounded
HTTP retries, and one clear `TrackingError` for whatever MLflow reports when the store cannot be used."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gencv.errors import TrackingError

log = logging.getLogger(__name__)


# MLflow retries a request 7 times with exponential back-off and waits 120 s for each answer: a server
# that went away hangs a run for many minutes. gencv's clients fail within seconds unless the user chose.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


_SQLITE_HEADER = b"SQLite format 3\x00"


def bound_http_retries() -> None:
    """Set MLflow's HTTP retry and timeout variables to small values, unless the user set them.

    MLflow reads them from the environment at each request, so this is the only place they can be
    given; the writer process inherits them.
    """
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None (in-memory SQLite included)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_sqlite_file(uri: str) -> None:
    """Fail fast on a SQLite store MLflow would retry for minutes: a directory that cannot be created or
    written, a file that is not a SQLite database, or one that cannot be locked for writing."""
    db = sqlite_path(uri)
    if db is None:
        return
    fix = "use a writable path, e.g. --tracking-uri sqlite:///mlruns/mlflow.db"
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"tracking URI {uri!r}: cannot create the directory {str(db.parent)!r} "
                            f"({exc.strerror or exc}); {fix}") from None
    if not db.parent.is_dir():
        raise TrackingError(f"tracking URI {uri!r}: {str(db.parent)!r} is not a directory; {fix}")
    if db.is_dir():
        raise TrackingError(f"tracking URI {uri!r}: {str(db)!r} is a directory, not a database file; "
                            f"name a file, e.g. sqlite:///{db}/mlflow.db")
    if not db.exists():
        try:  # SQLite writes a journal beside the database: the directory itself must take new files
            with tempfile.NamedTemporaryFile(dir=db.parent, prefix=".gencv-probe-"):
                pass
        except OSError as exc:
            raise TrackingError(f"tracking URI {uri!r}: cannot write in {str(db.parent)!r} "
                                f"({exc.strerror or exc}); {fix}") from None
        return
    try:
        with open(db, "rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise TrackingError(f"tracking URI {uri!r}: cannot read {str(db)!r} ({exc.strerror or exc}); {fix}") from None
    if head and head != _SQLITE_HEADER:
        raise TrackingError(f"tracking URI {uri!r}: {str(db)!r} is not a SQLite database (damaged, or another "
                            "kind of file); restore it from a backup, or point --tracking-uri at a new file")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock: the file and its directory are writable
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.rollback()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"tracking URI {uri!r}: SQLite cannot use {str(db)!r} ({exc}); restore it from a "
                            "backup, or point --tracking-uri at a new file") from None


_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")


def check_tracking_uri(uri: str | None = None) -> str:
    """The resolved URI after the checks that need no MLflow import (scheme, SQLite file): quick, so the
    CLI runs them before loading data and torch."""
    from gencv.tracking.base import resolve_tracking_uri

    uri = resolve_tracking_uri(uri)
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise TrackingError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; use sqlite:///mlruns/mlflow.db "
                            "(the default), a database URL (postgresql://...), or an http(s):// MLflow server")
    check_sqlite_file(uri)
    return uri


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store (`<db>.lock`) while MLflow creates or migrates it.

    Processes that open a new store at once would otherwise race in MLflow's schema migration.
    Other stores need no lock here (a server, or a database that serializes its own DDL).
    """
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        fh = open(db.parent / f"{db.name}.lock", "a")  # noqa: SIM115  (closed below, after the lock is held)
    except OSError as exc:
        raise TrackingError(f"tracking URI {uri!r}: cannot create the lock file beside the database "
                            f"({exc.strerror or exc}); use a writable path") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()  # releases the lock


_UNREACHABLE = ("max retries exceeded", "connection refused", "failed to establish", "timed out",
                "connectionerror", "name or service not known", "connection aborted", "remote end closed")


def is_unreachable(exc: BaseException) -> bool:
    """Whether an MLflow client error says the tracking server did not answer (after MLflow's retries)."""
    low = str(exc).lower()
    return any(s in low for s in _UNREACHABLE)


def explain(uri: str, exc: BaseException) -> TrackingError:
    """One TrackingError naming the URI, the cause and the fix, for an exception opening or probing the store."""
    if isinstance(exc, TrackingError):
        return exc
    text = " ".join(str(exc).split())
    low = text.lower()
    if "out-of-date database schema" in low or "mlflow db upgrade" in low:
        fix = f"back up the database, then run `mlflow db upgrade {uri}` (or use another --tracking-uri)"
        cause = text.split(". Take a backup")[0]
    elif "can't locate revision" in low or "no such revision" in low:
        cause = f"the database was written by another (newer?) MLflow version ({text[:200]})"
        fix = "use the MLflow version that created it, or another --tracking-uri"
    elif uri.startswith(("http://", "https://")) and is_unreachable(exc):
        cause = f"the MLflow server does not answer ({text[:300]})"
        fix = "start the server or check the address, or record nothing with --no-track"
    elif "scheme" in low or "unsupported" in low or "could not find a registered" in low:
        cause = f"MLflow does not know this kind of URI ({text[:300]})"
        fix = "use sqlite:///mlruns/mlflow.db (the default), a database URL, or an http(s):// MLflow server"
    else:
        cause = f"{type(exc).__name__}: {text[:500]}"
        fix = "check the store and its permissions, or choose another --tracking-uri, or record nothing with --no-track"
    return TrackingError(f"tracking URI {uri!r}: {cause}; {fix}")
