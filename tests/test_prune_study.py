"""`gencv prune`: settings refused before training, the sweep's table and tests, MLflow layout, the command."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from torch.func import functional_call
from typer.testing import CliRunner

from gencv.cli.app import app
from gencv.cv import FoldResult
from gencv.errors import GencvError, SpecError
from gencv.runner import prepare
from gencv.studies.prune import (
    BASELINE,
    PruneSettings,
    check_settings,
    engine_note,
    parse_levels,
    run_prune,
)
from gencv.studies.prune_report import measure_columns, plot_prune, prune_markdown
from gencv.tracking import MlflowTracker

from .conftest import tiny

FAST = {"train.max_epochs": 3, "cv.n_splits": 3}


def test_levels_parse_and_bad_settings_are_refused() -> None:
    assert parse_levels("0.9,0.5,0.5") == (0.5, 0.9)
    for bad in ("0,0.5", "1", "x"):
        with pytest.raises(SpecError, match="--levels"):
            parse_levels(bad)
    exp = tiny(**FAST)
    with pytest.raises(SpecError, match="--method: got 'prune_all'"):
        check_settings(exp, PruneSettings(("prune_all",), (0.5,)))
    with pytest.raises(SpecError, match="channel pruning removes conv filters"):
        check_settings(exp, PruneSettings(("channel",), (0.5,)))
    with pytest.raises(SpecError, match="--hessian-probes"):
        check_settings(exp, PruneSettings(("hessian",), (0.5,), hessian_probes=1))


@pytest.mark.slow
def test_sweep_scores_every_method_and_level_against_the_baseline(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = PruneSettings(("random", "magnitude", "hessian", "neuron"), (0.5, 0.9), finetune_epochs=2,
                             hessian_probes=0, timing=False)
    out = run_prune(tiny(**FAST), settings, tracker=MlflowTracker(uri))
    t = out.table.set_index(["method", "level"])
    assert len(t) == 1 + 4 * 2 and (t["folds_ok"] == 3).all()
    assert t.loc[(BASELINE, 0.0), "sparsity_mean"] == 0.0
    for m in ("magnitude", "hessian"):  # per layer or global: exactly the level (4x8 + 8x3 weights)
        assert t.loc[(m, 0.9), "sparsity_mean"] == pytest.approx(0.9, abs=1 / 56)
    assert t.loc[("neuron", 0.5), "n_params_mean"] < t.loc[(BASELINE, 0.0), "n_params_mean"]
    p = t["p_holm"].dropna()
    assert len(p) == 8 and (p >= t["p_corrected"].dropna()).all() and (p <= 1).all()
    np.testing.assert_allclose(t[["P_better", "P_equivalent", "P_worse"]].dropna().sum(axis=1), 1.0, atol=1e-9)
    client = MlflowClient(uri)
    parent = client.get_run(out.run_id)
    assert parent.data.tags["gencv.kind"] == "prune"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(
        ["trained", f"{BASELINE}@0"] + [f"{m}@{lv:g}" for m in settings.methods for lv in settings.levels])
    level_run = next(c for c in children if c.info.run_name == "magnitude@0.9")
    folds = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{level_run.info.run_id}'")
    assert len(folds) == 3 and all(f.data.metrics["sparsity"] == pytest.approx(0.9, abs=1 / 56) for f in folds)
    assert {a.path for a in client.list_artifacts(out.run_id, "plots")} == {"plots/prune_levels.png"}


@pytest.mark.slow
def test_prune_command_prints_json_and_refuses_a_bad_method() -> None:
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    res = CliRunner().invoke(app, ["prune", str(spec), "-m", "global_magnitude", "--levels", "0.8", "--set",
                                   "train.max_epochs=2", "--set", "cv.n_splits=2", "--finetune-epochs", "1",
                                   "--no-track", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert [(r["method"], r["level"]) for r in d["levels"]] == [(BASELINE, 0.0), ("global_magnitude", 0.8)]
    bad = CliRunner().invoke(app, ["prune", str(spec), "-m", "channel", "--no-track"])
    assert bad.exit_code == 2 and "needs model.kind=cnn" in bad.output


@pytest.mark.slow
def test_iterative_rounds_and_rewind_reach_the_level() -> None:
    settings = PruneSettings(("magnitude", "neuron"), (0.75,), finetune_epochs=1, iterative=2, rewind=True,
                             timing=False)
    out = run_prune(tiny(**FAST), settings)
    t = out.table.set_index(["method", "level"])
    assert sorted(t.index) == sorted([(BASELINE, 0.0), ("magnitude", 0.75), ("neuron", 0.75),
                                      ("magnitude+rewind", 0.75), ("neuron+rewind", 0.75)])
    for m in ("magnitude", "magnitude+rewind"):  # the last round prunes to the level itself, per layer
        assert t.loc[(m, 0.75), "sparsity_mean"] == pytest.approx(0.75, abs=1 / 56)
    # 8 hidden units, two rounds of 1 - 0.25 ** 0.5 = 50%: 8 -> 4 -> 2
    assert t.loc[("neuron", 0.75), "units_removed_fraction_mean"] == pytest.approx(0.75)
    f = out.folds
    assert (f.loc[f["method"] == "magnitude", "finetune_epochs_run"] == 2).all()  # 1 epoch x 2 rounds


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_retraining(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = PruneSettings(("magnitude",), (0.5, 0.9), finetune_epochs=1, timing=False)
    steps: list[tuple[int, str, float]] = []

    def stop_after_four(fold: int, label: str, level: float, res: object) -> None:
        steps.append((fold, label, level))
        if len(steps) == 4:  # fold 0 done (3 steps), fold 1 one step in
            raise KeyboardInterrupt

    tracker = MlflowTracker(uri)
    with pytest.raises(KeyboardInterrupt) as info:
        run_prune(tiny(**FAST), settings, tracker=tracker, on_step=stop_after_four)
    run_id = info.value.gencv_run_id
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    again: list[tuple[int, str, float]] = []
    out = run_prune(tiny(**FAST), settings, tracker=MlflowTracker(uri), resume=run_id,
                    on_step=lambda f, lab, lv, r: again.append((f, lab, lv)))
    assert len(again) == 9 - 4 and not set(again) & set(steps)
    assert out.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    children = client.search_runs([client.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert [c.info.run_name for c in children].count("trained") == 1
    assert "trained (resumed)" not in [c.info.run_name for c in children]  # every fold was saved before pruning
    assert (out.table["folds_ok"] == 3).all()


@pytest.mark.slow
def test_resume_refuses_other_options_or_spec_and_names_what_differs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tiny(**FAST)
    settings = PruneSettings(("magnitude",), (0.5,), finetune_epochs=1, timing=False)

    def stop(fold: int, label: str, level: float, res: object) -> None:
        raise KeyboardInterrupt  # after the first step

    with pytest.raises(KeyboardInterrupt) as info:
        run_prune(exp, settings, tracker=MlflowTracker(uri), on_step=stop)
    run_id = info.value.gencv_run_id
    others = [(replace(settings, levels=(0.5, 0.9)), "--levels: the run has 0.5, now 0.5,0.9"),
              (replace(settings, methods=("magnitude", "random")), "--method: the run has magnitude, now magnitude,random"),
              (replace(settings, finetune_epochs=2), "--finetune-epochs: the run has 1, now 2"),
              (replace(settings, iterative=2), "--iterative: the run has 1, now 2"),
              (replace(settings, rewind=True), "--rewind: the run has False, now True"),
              (replace(settings, hessian_probes=8), "--hessian-probes: the run has 32, now 8")]
    for other, what in others:
        with pytest.raises(GencvError, match=re.escape(what)):
            run_prune(exp, other, tracker=MlflowTracker(uri), resume=run_id)
    with pytest.raises(GencvError, match=re.escape("train.lr: the run has 0.02, this spec 0.05")):
        run_prune(tiny(**FAST, **{"train.lr": 0.05}), settings, tracker=MlflowTracker(uri), resume=run_id)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(exp.to_yaml())
    cli = ["prune", str(spec), "-m", "magnitude", "--levels", "0.5", "--finetune-epochs", "1", "--no-timing",
           "--tracking-uri", uri, "--resume", run_id]
    bad = CliRunner().invoke(app, [*cli, "--set", "train.batch_size=16"])
    assert bad.exit_code == 2, bad.output
    assert "train.batch_size: the run has 32, this spec 16" in bad.output and "Traceback" not in bad.output
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"  # a refused resume leaves the run as it was
    same = CliRunner().invoke(app, [*cli, "--json"])  # the same spec and options resume
    assert same.exit_code == 0, same.output
    assert client.get_run(run_id).info.status == "FINISHED"


def _top_eigenvalue(module: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """The largest eigenvalue of the dense Hessian of the mean cross-entropy over every parameter, float64."""
    m = copy.deepcopy(module).double().eval()
    named = [(n, p.detach()) for n, p in m.named_parameters()]
    sizes = [p.numel() for _, p in named]

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view(p.shape) for (n, p), t in zip(named, theta.split(sizes))}
        return F.cross_entropy(functional_call(m, parts, (X.double(),)), y)

    H = torch.autograd.functional.hessian(f, torch.cat([p.reshape(-1) for _, p in named]))
    return float(torch.linalg.eigvalsh(H)[-1])


@pytest.mark.slow
def test_measures_are_computed_on_each_pruned_network_and_summarized_per_level(tmp_path: Path) -> None:
    exp = tiny(**FAST, measures=["hessian_top"])
    X, y = prepare(exp).dataset.X, prepare(exp).dataset.y
    reference: dict[tuple[str, float, int], tuple[float, float]] = {}

    def check(fold: int, label: str, level: float, res: FoldResult) -> None:
        est, rows = res.estimator, res.artifacts["rows"]["training"]
        Xf, yf = torch.as_tensor(est.preprocess_.transform(X[rows])), torch.as_tensor(est.encode_target(y[rows]))
        reference[(label, level, fold)] = (res.measures["hessian_top_1"], _top_eigenvalue(est.module_, Xf, yf))

    settings = PruneSettings(("magnitude", "neuron"), (0.75,), finetune_epochs=1, timing=False)
    out = run_prune(exp, settings, on_step=check)
    assert len(reference) == 3 * 3
    logged, exact = np.array(list(reference.values())).T
    np.testing.assert_allclose(logged, exact, rtol=1e-3)  # Lanczos on the pruned module vs its dense Hessian
    f = out.folds.set_index(["method", "level", "fold"])
    for key, (value, _) in reference.items():
        assert f.loc[key, "hessian_top_1"] == pytest.approx(value, rel=1e-12)
    base = np.array([v for (lab, _, _), (v, _) in reference.items() if lab == BASELINE])
    for label in ("magnitude", "neuron"):  # a pruned network's curvature is its own, not the baseline's
        pruned = np.array([v for (lab, _, _), (v, _) in reference.items() if lab == label])
        assert np.all(np.abs(pruned - base) > 1e-3 * np.abs(base))
    t = out.table.set_index(["method", "level"])
    for key in [(BASELINE, 0.0), ("magnitude", 0.75), ("neuron", 0.75)]:
        vals = [v for (lab, lv, _), (v, _) in reference.items() if (lab, lv) == key]
        assert t.loc[key, "hessian_top_1_mean"] == pytest.approx(np.mean(vals), rel=1e-9)
        assert t.loc[key, "hessian_top_1_ci_low"] <= t.loc[key, "hessian_top_1_mean"] <= t.loc[key, "hessian_top_1_ci_high"]
    assert "hessian_top_iterations_mean" not in t  # diagnostics are not summarized as measures
    assert measure_columns(out.table) == ["hessian_top_1"]
    assert "hessian_top_1_mean" in prune_markdown(out)
    (path,) = plot_prune(out, tmp_path)
    assert path.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["batched", "auto"])
def test_a_batched_engine_spec_is_trained_by_skorch_with_a_clear_note(engine: str, caplog: pytest.LogCaptureFixture) -> None:
    exp = tiny(**{**FAST, "train.max_epochs": 1, "train.engine": engine})
    settings = PruneSettings(("magnitude",), (0.5,), finetune_epochs=0, timing=False)
    with caplog.at_level("WARNING", logger="gencv.studies.prune"):
        out = run_prune(exp, settings)
    assert out.experiment.train.engine == "skorch"
    assert out.notes[0] == engine_note(engine)
    assert f"train.engine={engine!r} is not used by gencv prune" in out.notes[0]
    assert "trained by the skorch engine" in out.notes[0] and "no batched pruning path" in out.notes[0]
    assert engine_note(engine) in caplog.text  # said when the sweep starts, not only in the final notes
    assert (out.table["folds_ok"] == 3).all()


def test_threads_option_is_checked_and_the_callers_setting_restored() -> None:
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    before = torch.get_num_threads()
    bad = CliRunner().invoke(app, ["prune", str(spec), "-m", "magnitude", "--threads", "-1", "--no-track"])
    assert bad.exit_code == 2 and "--threads: got -1" in bad.output
    bad = CliRunner().invoke(app, ["prune", str(spec), "-m", "channel", "--threads", "1", "--no-track"])
    assert bad.exit_code == 2 and "needs model.kind=cnn" in bad.output  # refused on one thread, then restored
    assert torch.get_num_threads() == before
