"""A sweep's levels shared by several workers through an Optuna storage (gencv.studies.sweep_queue)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

import gencv.cv
from gencv.errors import GencvError
from gencv.studies.sweep import run_sweep
from gencv.studies.sweep_queue import SweepQueue
from gencv.tracking import MlflowTracker, NullTracker
from gencv.tuning.storage import Heartbeat, make_storage

from .conftest import tiny
from .test_sweep import _StopAt as _Record  # progress that interrupts a level as it starts, records reuse

FAST = {"train.max_epochs": 2, "train.early_stopping": None}
GRID = {"model.dropout": [0.0, 0.3, 0.6]}
LABELS = ["model.dropout=0", "model.dropout=0.3", "model.dropout=0.6"]


def _level_runs(uri: str, sweep_run: str) -> dict[str, list[str]]:
    client = MlflowClient(uri)
    exp_id = client.get_run(sweep_run).info.experiment_id
    out: dict[str, list[str]] = {}
    for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{sweep_run}'"):
        out.setdefault(r.data.tags["gencv.sweep_level"], []).append(r.info.status)
    return out


def test_an_interrupted_shared_sweep_requeues_the_level_and_a_rerun_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    tracker = MlflowTracker(uri)
    exp = tiny(**FAST)
    with pytest.raises(KeyboardInterrupt) as info:
        run_sweep(exp, GRID, tracker=tracker, progress=_Record(1), storage=storage, study_name="s")
    sweep_run = tracker.resolve(info.value.gencv_run_id)  # type: ignore[attr-defined]
    trained: list[int] = []
    real = gencv.cv.score_fold

    def counting(fit: Any, *a: Any, **k: Any) -> Any:
        trained.append(fit.fold.index)
        return real(fit, *a, **k)

    monkeypatch.setattr(gencv.cv, "score_fold", counting)
    progress = _Record(None)
    out = run_sweep(exp, GRID, tracker=tracker, progress=progress, storage=storage, study_name="s")
    assert out.run_id == sweep_run
    assert sorted(progress.ended) == [(0, True), (1, False), (2, False)]  # level 0 read back, not retrained
    assert len(trained) == 2 * 3  # the two unfinished levels' 3 folds each
    assert list(out.table["level"]) == LABELS and out.table["baseline"].tolist() == [True, False, False]
    study = optuna.load_study(study_name="s", storage=storage)
    states = sorted((t.params.get("level", t.system_attrs.get("fixed_params", {}).get("level")), t.state.name)
                    for t in study.trials)
    assert states == [(0, "COMPLETE"), (1, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    assert {t.params["level"]: t.value for t in study.trials if t.state.name == "COMPLETE"} == pytest.approx(
        {i: o.cv.mean_score() for i, o in enumerate(out.outcomes)})
    client = MlflowClient(uri)
    assert client.get_run(sweep_run).info.status == "FINISHED"
    assert _level_runs(uri, sweep_run) == {label: ["FINISHED"] for label in LABELS}  # one run per level
    assert "levels.csv" in {f.path for f in client.list_artifacts(sweep_run)}


def test_a_level_whose_worker_stopped_beating_is_requeued(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    store = make_storage(storage, heartbeat_interval=1, grace_period=2)
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tiny(**FAST)
    queue, _ = SweepQueue.open(exp, LABELS, 0, store, "s", tracker, lambda: tracker.resolve(
        tracker.start_run(exp.name, "sweep")))
    first = queue.claim()
    assert first is not None and first.level == 0
    Heartbeat(store, first.trial_id).beat_once()  # then the worker dies: no more beats
    second = queue.claim()
    assert second is not None and second.level == 1  # level 0 is still held while its heartbeat is fresh
    time.sleep(3.0)
    claimed = {queue.claim().level, queue.claim().level}  # type: ignore[union-attr]
    assert claimed == {0, 2}  # the dead worker's level came back
    assert queue.claim() is None
    assert queue.state()["running"] == [0, 1, 2]


def test_a_different_sweep_cannot_join_a_study_or_run_untracked(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    store = make_storage(storage, heartbeat_interval=30)
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tiny(**FAST)
    SweepQueue.open(exp, LABELS, 0, store, "s", tracker, lambda: tracker.resolve(tracker.start_run(exp.name, "x")))
    with pytest.raises(GencvError, match="another spec, grid or baseline"):
        SweepQueue.open(exp, LABELS[:2], 0, store, "s", tracker, lambda: "never")
    with pytest.raises(GencvError, match="drop --no-track"):
        run_sweep(exp, GRID, tracker=NullTracker(), storage=storage, study_name="t")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_worker_processes_share_the_levels_and_one_writes_the_report(tmp_path: Path, backend: str,
                                                                       request: pytest.FixtureRequest) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = f"sqlite:///{tmp_path}/optuna.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    study_name = f"shared-{backend}-{time.time_ns()}"  # the PostgreSQL server is shared by the whole session
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    cmd = [sys.executable, "-m", "gencv.cli", "sweep", str(spec), "--grid", "model.dropout=0,0.2,0.4,0.6",
           "--set", "train.max_epochs=3", "--set", "cv.n_splits=2", "--storage", storage, "--tracking-uri", uri,
           "--study", study_name, "--json"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    ran = [[line for line in err.splitlines() if line.startswith("  done:")] for _, err in outs]
    assert sum(len(r) for r in ran) == 4  # every level trained once, by one worker or the other
    reports = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs if o.strip()]
    full = [r for r in reports if r["levels"]]
    assert full, "the last worker out prints the whole sweep"
    sweep_run = full[0]["run_id"]
    assert len(full[0]["levels"]) == 4
    assert _level_runs(uri, sweep_run) == {f"model.dropout={v}": ["FINISHED"] for v in ("0", "0.2", "0.4", "0.6")}
    client = MlflowClient(uri)
    assert client.get_run(sweep_run).info.status == "FINISHED"
    assert "levels.csv" in {f.path for f in client.list_artifacts(sweep_run)}
