"""A study shared by several `gencv tune` worker processes through a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.race import release_together
from tests.test_tuning import tune_exp

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

def _worker(tmp: Path, spec: Path, url: str, study: str, trials: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "GENCV_HEARTBEAT_INTERVAL": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gencv.cli", "tune", str(spec), "--storage", url, "--study", study,
           "--trials", str(trials), "--json", *extra]
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load(url: str, study: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=url)


def _spec(tmp: Path, **overrides: Any) -> Path:
    p = tmp / "spec.yaml"
    p.write_text(tune_exp(**{"tune.pruner": "none", **overrides}).to_yaml())
    return p


def test_a_bare_postgresql_url_opens_with_the_installed_psycopg2_driver(pg_url: str) -> None:  # noqa: F811
    # SQLAlchemy 2.1 maps postgresql:// to psycopg (3), which gencv does not install; gencv depends on psycopg2.
    from gencv.tuning.storage import make_storage

    bare = pg_url.replace("postgresql+psycopg2://", "postgresql://")
    assert bare.startswith("postgresql://")
    store = make_storage(bare, heartbeat_interval=5)
    try:
        assert store.engine.dialect.driver == "psycopg2"
        assert store.get_all_studies() is not None  # the connection really works
    finally:
        store.engine.dispose()


def test_password_is_never_printed(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    spec = _spec(tmp_path)
    w = _worker(tmp_path, spec, pg_url, "pw", 1, "--no-track")
    out, errs = w.communicate(timeout=180)
    assert w.returncode == 0, errs
    assert "s3cret-pw" not in out + errs
    assert "***" in errs


def test_two_workers_share_one_study_and_reach_the_total_exactly(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    spec = _spec(tmp_path, **{"train.max_epochs": 15})
    total = 8
    track = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    # Create the MLflow tables first: two processes migrating a fresh SQLite store at once collide
    # (a multi-worker deployment uses an MLflow server, see docs/tuning.md).
    from gencv.tracking import MlflowTracker

    MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db").experiment_id("tune-test")
    workers = [_worker(tmp_path, spec, pg_url, "shared", total, *track) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, errs) in zip(workers, outputs):
        assert w.returncode == 0, errs
    study = _load(pg_url, "shared")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == total, states
    assert "RUNNING" not in states and "WAITING" not in states
    by_worker = {t.user_attrs.get("gencv.worker") for t in study.trials}
    assert len(by_worker) == 2, "both workers should have taken trials"
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(r["finalized"] for r in results) == [False, True]  # exactly one worker refits and reports
    finisher = next(r for r in results if r["finalized"])
    assert finisher["refit_test_scores"]
    # Every trial run hangs under the one study run, whichever worker created it.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    studies = [r for r in runs if r.data.tags.get("gencv.kind") == "study"]
    assert len(studies) == 1
    trial_runs = [r for r in runs if r.data.tags.get("gencv.kind") == "trial"]
    assert len(trial_runs) == total
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {studies[0].info.run_id}
    assert "s3cret-pw" not in studies[0].data.tags["gencv.storage"]


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    # Folds long enough (400 epochs) that the poll below finds a trial early in its first fold.
    spec = _spec(tmp_path, **{"train.max_epochs": 400})
    total = 4
    a = _worker(tmp_path, spec, pg_url, "killed", total, "--no-track")
    victim = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and a.poll() is None:
            time.sleep(0.2)
            try:
                trials = _load(pg_url, "killed").trials
            except KeyError:  # the study does not exist yet
                continue
            done = [t for t in trials if t.state.name == "COMPLETE"]
            # Well inside a trial, after at least one finished: started a while ago, but its first of
            # 3 folds (400 epochs each) not reported yet, so it cannot finish before the kill lands.
            running = [t for t in trials if t.state.name == "RUNNING" and not t.intermediate_values
                       and (datetime.now() - t.datetime_start).total_seconds() > 0.1]
            if done and running:
                os.kill(a.pid, signal.SIGKILL)
                victim = running[0].number
                break
        assert victim is not None, "worker A never had a completed trial and a trial early in its first fold"
    finally:
        if a.poll() is None:
            a.kill()
        a.communicate(timeout=30)
    after_kill = {t.number: t.state.name for t in _load(pg_url, "killed").trials}
    assert after_kill[victim] == "RUNNING", after_kill  # the kill landed mid-trial
    assert list(after_kill.values()).count("RUNNING") == 1, after_kill
    before = {t.number: t.value for t in _load(pg_url, "killed").trials if t.state.name == "COMPLETE"}
    b = _worker(tmp_path, spec, pg_url, "killed", total, "--no-track")
    out, errs = b.communicate(timeout=300)
    assert b.returncode == 0, errs
    study = _load(pg_url, "killed")
    trials = {t.number: t for t in study.trials}
    assert trials[victim].state.name == "FAIL"  # failed by heartbeat, not left RUNNING
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == trials[victim].params  # same configuration re-run
    for number, value in before.items():  # completed trials intact
        assert trials[number].state.name == "COMPLETE" and trials[number].value == value
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == total
    assert states.count("FAIL") == 1


_OPEN_STORAGE = """
import sys, time
from pathlib import Path
import optuna.storages, psycopg2, sqlalchemy  # noqa: F401  (imported before the start signal)
from gencv.tuning.storage import make_storage
go = Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():  # every process imported and waiting: then all open the storage at once
    time.sleep(0.005)
make_storage(sys.argv[1], heartbeat_interval=1)
"""


def test_workers_starting_together_on_an_empty_database_all_open_the_study(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    # Optuna creates its tables on first use; workers started together would race in CREATE TYPE.
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS fresh_race WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE fresh_race"))
    admin.dispose()
    url = make_url(pg_url).set(database="fresh_race").render_as_string(hide_password=False)
    release_together(_OPEN_STORAGE, url, 4, tmp_path)
