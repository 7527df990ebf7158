"""gencv sweep: levels on the same folds, compared with the baseline, resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import gencv.cv
from gencv.cli import app
from gencv.errors import SpecError
from gencv.stats import corrected_ttest
from gencv.studies.sweep import parse_grid, run_sweep
from gencv.tracking import MlflowTracker

from .conftest import tiny

FAST = {"train.max_epochs": 3, "cv.n_splits": 3}


def test_grid_values_are_yaml_and_lists_stay_whole() -> None:
    assert parse_grid(["model.dropout=0,0.2", "model.hidden=[32],[64,64]"]) == {
        "model.dropout": [0, 0.2], "model.hidden": [[32], [64, 64]]}
    with pytest.raises(SpecError, match="PATH=V1,V2"):
        parse_grid(["model.dropout"])


@pytest.mark.parametrize("path", ["cv.n_splits", "seed", "data.test_size", "data.source", "data.classes"])
def test_levels_that_would_change_the_folds_are_refused(path: str) -> None:
    with pytest.raises(SpecError, match=f"sweep.grid.{path}: a level may not change"):
        run_sweep(tiny(**FAST), {path: [1, 2]})


def test_a_shared_sweep_refuses_levels_of_the_base_network(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"sweep.grid.model.base.freeze: a shared sweep \(--storage\)"):
        run_sweep(tiny(**FAST), {"model.base.freeze": ["none", "all_but_head"]},
                  storage=f"sqlite:///{tmp_path}/optuna.db")


def test_a_level_the_batched_engine_cannot_train_is_an_error_before_any_level_trains(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(SpecError, match=r"sweep level train.optimizer=lbfgs: train.optimizer: got 'lbfgs'; the "
                                        r"batched engine supports .*; use train.engine: skorch"):
        run_sweep(tiny(**FAST, **{"train.engine": "batched"}), {"train.optimizer": ["adam", "lbfgs"]},
                  tracker=MlflowTracker(uri))
    assert MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()]) == []


def test_levels_share_the_folds_and_are_compared_with_the_baseline(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_sweep(tiny(**FAST), {"model.dropout": [0.0, 0.5], "train.lr": [0.02]}, tracker=MlflowTracker(uri))
    assert [lv.label for lv in out.levels] == ["model.dropout=0, train.lr=0.02", "model.dropout=0.5, train.lr=0.02"]
    a, b = out.outcomes
    assert [f.n_valid for f in a.cv.folds] == [f.n_valid for f in b.cv.folds]
    client = MlflowClient(uri)
    tags = [client.get_run(o.run_id).data.tags for o in out.outcomes]
    assert tags[0]["gencv.folds_digest"] == tags[1]["gencv.folds_digest"]  # paired by construction
    assert all(client.get_run(o.run_id).data.tags["mlflow.parentRunId"] == out.run_id for o in out.outcomes)
    xa = np.array([f.valid_scores["accuracy"] for f in b.cv.folds])
    xb = np.array([f.valid_scores["accuracy"] for f in a.cv.folds])
    expected = corrected_ttest(xa, xb, n_train=np.mean([f.n_train for f in a.cv.folds]),
                               n_test=np.mean([f.n_valid for f in a.cv.folds])).p_value
    row = out.table.set_index("level").loc["model.dropout=0.5, train.lr=0.02"]
    assert row["p_corrected"] == pytest.approx(expected, abs=1e-12)
    assert row["p_holm"] == pytest.approx(expected, abs=1e-12)  # one comparison: nothing to correct
    assert row["P_better"] + row["P_equivalent"] + row["P_worse"] == pytest.approx(1.0)
    artifacts = {f.path for f in client.list_artifacts(out.run_id)} | {
        f.path for f in client.list_artifacts(out.run_id, "plots")}
    assert {"levels.csv", "summary.md", "plots/levels_1.png"} <= artifacts
    assert client.get_run(out.run_id).info.status == "FINISHED"


class _StopAt:
    """Progress that interrupts the sweep when a given level starts, and records reuse."""

    def __init__(self, stop: int | None) -> None:
        self.stop, self.ended = stop, []

    def level_start(self, level: Any, n: int) -> Any:
        if level.index == self.stop:
            raise KeyboardInterrupt
        return None

    def level_end(self, level: Any, outcome: Any, reused: bool) -> None:
        self.ended.append((level.index, reused))


def test_a_killed_sweep_resumes_without_redoing_finished_levels(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp, grid = tiny(**FAST), {"model.dropout": [0.0, 0.3, 0.6]}
    with pytest.raises(KeyboardInterrupt) as info:
        run_sweep(exp, grid, tracker=tracker, progress=_StopAt(2))
    sweep_run = info.value.gencv_run_id  # type: ignore[attr-defined]
    trained: list[int] = []
    real = gencv.cv.score_fold

    def counting(fit: Any, *a: Any, **k: Any) -> Any:
        trained.append(fit.fold.index)
        return real(fit, *a, **k)

    monkeypatch.setattr(gencv.cv, "score_fold", counting)
    progress = _StopAt(None)
    out = run_sweep(exp, grid, tracker=tracker, progress=progress, resume=tracker.resolve(sweep_run))
    assert progress.ended == [(0, True), (1, True), (2, False)]
    assert len(trained) == 3  # only the third level's folds were trained
    assert len(out.outcomes) == 3 and out.run_id == tracker.resolve(sweep_run)


def test_sweep_command_runs_a_grid_and_prints_json(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    res = CliRunner().invoke(app, ["sweep", str(spec), "--grid", "model.dropout=0,0.5", "--set", "train.max_epochs=2",
                                   "--set", "cv.n_splits=2", "--no-track", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(d["levels"]) == 2 and d["levels"][0]["baseline"] is True
    bad = CliRunner().invoke(app, ["sweep", str(spec), "--grid", "seed=1,2", "--no-track"])
    assert bad.exit_code == 2 and "may not change seed" in bad.output
