"""Optuna storage: URL handling, RDB storage with heartbeats, a study-wide lock, a heartbeat thread."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gencv.errors import GencvError

__all__ = ["DEFAULT_STORAGE", "MAX_RETRY", "Heartbeat", "make_storage", "redact_url", "storage_kind",
           "study_lock"]

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
MAX_RETRY = 3  # re-runs of one configuration whose worker died or was stopped


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***; safe to log, print and tag."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _with_driver(url: str) -> str:
    """A bare postgresql:// URL names psycopg2, the driver gencv depends on (SQLAlchemy 2.1 would pick psycopg 3)."""
    return "postgresql+psycopg2://" + url[len("postgresql://"):] if url.lower().startswith("postgresql://") else url


def storage_kind(url: str) -> str:
    """'sqlite', 'postgresql', 'mysql', 'memory' or the URL scheme."""
    if url in ("", ":memory:", "memory"):
        return "memory"
    scheme = url.split(":", 1)[0].lower()
    return scheme.split("+", 1)[0]


def make_storage(url: str | None, *, heartbeat_interval: int, grace_period: int | None = None,
                 max_retry: int | None = MAX_RETRY) -> Any:
    """An Optuna storage for `url` (default sqlite:///mlruns/optuna.db; ':memory:' for in-memory).

    RDB storages get heartbeats: a RUNNING trial whose worker stopped beating for `grace_period`
    seconds is failed by the next worker that asks for a trial, and re-queued (same parameters) by
    `RetryHeartbeatStaleTrialCallback` up to `max_retry` times.
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = _with_driver(url or DEFAULT_STORAGE)
    kind = storage_kind(url)
    if kind == "memory":
        return optuna.storages.InMemoryStorage()
    if heartbeat_interval < 1:
        raise GencvError(f"heartbeat interval: got {heartbeat_interval}; use a whole number of seconds >= 1")
    grace = grace_period if grace_period is not None else max(2 * heartbeat_interval, heartbeat_interval + 2)
    engine_kwargs: dict[str, Any] = {}
    if kind == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
        log.info("Optuna storage %s is SQLite: fine for one worker; use a postgresql:// URL to share a study "
                 "between several workers", redact_url(url))
    elif kind == "postgresql":
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings(), _schema_lock(url, kind):
            warnings.simplefilter("ignore")  # heartbeat_interval is flagged experimental
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=int(heartbeat_interval),
                              grace_period=int(grace),
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    except ImportError as exc:
        raise GencvError(f"--storage {redact_url(url)}: missing database driver: {exc}; install it "
                         "(psycopg2-binary for PostgreSQL)") from None
    except Exception as exc:
        msg = str(exc).split("\n", 1)[0]
        raise GencvError(f"--storage {redact_url(url)}: cannot open the Optuna storage: "
                         f"{type(exc).__name__}: {_scrub(msg, url)}") from None


@contextlib.contextmanager
def _schema_lock(url: str, kind: str) -> Iterator[None]:
    """Let one worker at a time create or upgrade Optuna's tables.

    Workers started together on an empty database would otherwise race in CREATE TABLE / CREATE TYPE
    and all but one fail (PostgreSQL: duplicate key in pg_type). PostgreSQL: a session advisory lock
    on a short-lived connection, held while `RDBStorage` creates or checks the schema; SQLite: an
    exclusive file lock beside the database file.
    """
    if kind == "postgresql":
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        engine = create_engine(url, poolclass=NullPool)
        try:
            with _advisory_lock(engine, "gencv-optuna-schema"):
                yield
        finally:
            engine.dispose()
    elif kind == "sqlite" and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        # SQLite is for one worker (see make_storage), but two started at once on a new file would race
        # in Optuna's alembic set-up (UNIQUE constraint failed: alembic_version): an exclusive file lock.
        import fcntl

        with open(url.removeprefix("sqlite:///") + ".schema.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    else:  # others: as Optuna does it
        yield


@contextlib.contextmanager
def _advisory_lock(engine: Any, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock keyed by `name`, held on one connection of `engine`."""
    from sqlalchemy import text

    key = zlib.crc32(name.encode()) - 2**31
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def _scrub(text: str, url: str) -> str:
    """Remove the password of `url` from an error message."""
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
    except Exception:
        pw = None
    return text.replace(str(pw), "***") if pw else text


@contextlib.contextmanager
def study_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Serialise 'count trials, then ask for one' across workers of one study.

    PostgreSQL: a session advisory lock keyed by the study name. SQLite: an exclusive file lock
    next to the database. Other storages: no lock (each worker is then only approximately capped).
    """
    url = str(getattr(storage, "url", ""))
    kind = storage_kind(url) if url else "memory"
    if kind == "postgresql":
        with _advisory_lock(storage.engine, f"gencv-study:{study_name}"):
            yield
    elif kind == "sqlite" and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        import fcntl

        lock_path = Path(url.removeprefix("sqlite:///") + ".lock")
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    else:
        yield


class Heartbeat:
    """Records a trial's heartbeat every `interval` seconds while the trial runs (RDB storages only); with
    several trial ids (a batch of trials waiting for their turn), one thread beats for all of them."""

    def __init__(self, storage: Any, trial_id: int | Sequence[int]) -> None:
        self.storage = storage
        self.trial_ids = [trial_id] if isinstance(trial_id, int) else [int(t) for t in trial_id]
        self.trial_id = self.trial_ids[0] if self.trial_ids else -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_once(self) -> None:
        """Record one heartbeat now (no-op without heartbeats)."""
        if getattr(self.storage, "get_heartbeat_interval", lambda: None)():
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> Heartbeat:
        interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        if interval:
            self._thread = threading.Thread(target=self._beat, args=(float(interval),), daemon=True,
                                            name=f"gencv-heartbeat-{self.trial_id}")
            self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # a missed beat is not fatal; the grace period covers it
                    log.debug("heartbeat for trial id %d failed: %s", trial_id, exc)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
