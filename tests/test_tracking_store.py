"""A tracking store that cannot be used fails before training, with one message; new stores open safely together."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gencv.cli import app

from .conftest import ROOT
from .race import release_together

runner = CliRunner()
QUICK = str(ROOT / "experiments" / "quickstart.yaml")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


def _unknown_scheme(tmp: Path) -> str:
    return "foo://bar"


def _unwritable(tmp: Path) -> str:
    return "sqlite:////sys/gencv-test-mlflow.db"  # sysfs refuses new files, even to root


def _parent_is_a_file(tmp: Path) -> str:
    (tmp / "afile").write_text("x")
    return f"sqlite:///{tmp}/afile/mlflow.db"


def _corrupted(tmp: Path) -> str:
    (tmp / "mlflow.db").write_bytes(bytes(range(256)) * 40)
    return f"sqlite:///{tmp}/mlflow.db"


def _older_schema(tmp: Path) -> str:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    uri = f"sqlite:///{tmp}/mlflow.db"
    # A store at today's schema, made in another process: MLflow caches the stores it opened, per URI.
    subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()"],
                   check=True, timeout=120)
    script = ScriptDirectory.from_config(_get_alembic_config(uri))
    older = script.get_revision(script.get_current_head()).down_revision
    with sqlite3.connect(tmp / "mlflow.db") as conn:  # as if written by the MLflow before this one
        conn.execute("UPDATE alembic_version SET version_num = ?", (older,))
    return uri


def _server_down(tmp: Path) -> str:
    return f"http://127.0.0.1:{_closed_port()}"


@pytest.mark.parametrize(
    ("make_uri", "message"),
    [
        (_unknown_scheme, "unknown scheme 'foo'"),
        (_unwritable, "cannot write in '/sys'"),
        (_parent_is_a_file, "cannot create the directory"),
        (_corrupted, "is not a SQLite database"),
        (_older_schema, "mlflow db upgrade sqlite:///"),
        (_server_down, "the MLflow server does not answer"),
    ],
    ids=["unknown-scheme", "unwritable", "parent-is-a-file", "corrupted", "older-schema", "server-down"],
)
def test_unusable_store_fails_before_training_with_one_message(
        tmp_path: Path, make_uri: Callable[[Path], str], message: str) -> None:
    uri = make_uri(tmp_path)
    start = time.monotonic()
    res = runner.invoke(app, ["run", QUICK, "-q", "--set", "train.max_epochs=200", "--tracking-uri", uri])
    took = time.monotonic() - start
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert message in text and f"tracking URI {uri!r}" in text, text
    assert "Traceback" not in res.output and "per-fold" not in res.output  # nothing was trained
    assert text.count("error:") == 1
    assert took < 20, f"{took:.1f} s"


_OPEN_NEW_STORE = """
import sys, time
from pathlib import Path
import mlflow, sqlalchemy  # noqa: F401  (imported before the start signal)
from gencv.tracking import MlflowTracker
go = Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():  # every process imported and waiting: then all open the new store at once
    time.sleep(0.005)
tracker = MlflowTracker(sys.argv[1], writer="inline")
tracker.check("race")
"""


@pytest.mark.slow
def test_processes_creating_a_new_sqlite_store_together_all_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    release_together(_OPEN_NEW_STORE, uri, 3, tmp_path)
    from mlflow import MlflowClient

    assert [e.name for e in MlflowClient(uri).search_experiments(filter_string="name = 'race'")] == ["race"]


def test_the_writer_process_tries_a_write_again_after_a_race_with_another_writer() -> None:
    """Two workers logging one data set into one SQLite store: MLflow's look-up-then-insert can lose the race
    (UNIQUE constraint failed) or wait past SQLite's lock; the writer tries such a write again, nothing else."""
    from gencv.tracking.writer_process import _write

    class Store:
        def __init__(self, errors: list[Exception]) -> None:
            self.errors, self.calls = errors, 0

        def log_inputs_now(self) -> None:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    raced = Store([RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.dataset_uuid"),
                   RuntimeError("(sqlite3.OperationalError) database is locked")])
    _write(raced, "log_inputs_now", (), {})
    assert raced.calls == 3
    broken = Store([ValueError("no such table: datasets")])
    with pytest.raises(ValueError, match="no such table"):
        _write(broken, "log_inputs_now", (), {})
    assert broken.calls == 1
