"""Tuning: search space checks, pruning, divergence, nested CV isolation, MLflow run tree, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gencv.cv
import gencv.tuning
from gencv.errors import GencvError, SpecError
from gencv.spec import Experiment, validate_experiment
from gencv.tracking import MlflowTracker, NullTracker
from gencv.tuning import TuningError, build_space, tune_experiment

MEM = ":memory:"


def tune_exp(space: dict[str, Any] | None = None, **overrides: Any) -> Experiment:
    """iris, one hidden layer of 8, few epochs, no early stopping, 3 folds; a one-dimensional lr space."""
    raw = {
        "name": "tune-test",
        "seed": 0,
        "data": {"source": "iris", "test_size": 0.2},
        "model": {"hidden": [8], "dropout": 0.0},
        "train": {"optimizer": "sgd", "lr": 0.1, "max_epochs": 5, "batch_size": 32, "early_stopping": None,
                  "schedule": "none"},
        "cv": {"kind": "stratified", "n_splits": 3},
        "metric": "accuracy",
        "tune": {"trials": 4, "sampler": "random", "pruner": "none",
                 "space": space or {"train.lr": {"low": 1e-3, "high": 1.0, "log": True}}},
    }
    exp = validate_experiment(raw)
    return exp.with_overrides(overrides) if overrides else exp


# --------------------------------------------------------------------------- space


def test_space_kinds_are_inferred_and_decoded() -> None:
    exp = tune_exp({"train.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                    "train.batch_size": {"low": 8, "high": 64, "step": 8},
                    "model.hidden": {"choices": [[8], [16, 16]]},
                    "model.activation": {"choices": ["relu", "tanh"]},
                    "model.dropout": {"low": 0.0, "high": 0.5}})
    dims = {d.path: d for d in build_space(exp)}
    assert dims["train.lr"].kind == "float" and dims["train.lr"].log
    assert dims["train.batch_size"].kind == "int"  # the spec field holds an int
    assert dims["model.hidden"].kind == "categorical" and dims["model.hidden"].encoded
    assert dims["model.hidden"].decode(dims["model.hidden"].optuna_choices()[1]) == [16, 16]
    assert not dims["model.activation"].encoded


@pytest.mark.parametrize(("space", "match"), [
    ({"train.lrr": {"low": 0.1, "high": 1.0}}, r"tune\.space\.train\.lrr.*Did you mean 'lr'"),
    ({"train.lr": {"low": 0.1, "high": 1e5}}, r"tune\.space\.train\.lr: the value 100000\.0 is not valid"),
    ({"model.activation": {"choices": ["relu", "swish"]}}, r"tune\.space\.model\.activation.*'swish'"),
    ({"data.source": {"choices": ["iris", "wine"]}}, r"tune\.space\.data\.source.*cannot be tuned"),
    ({"train.lr": {"low": 1e-3, "high": 1.0, "log": True, "step": 0.1}}, r"log=true and step"),
    ({"train.batch_size": {"low": 8.5, "high": 64, "type": "int"}}, r"whole-number bounds"),
])
def test_space_errors_name_the_field_before_training(space: dict[str, Any], match: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_data(*a: Any, **k: Any) -> None:
        raise AssertionError("data was loaded before the space was checked")

    monkeypatch.setattr(gencv.tuning, "prepare", no_data)
    with pytest.raises(SpecError, match=match):
        tune_experiment(tune_exp(space), storage=MEM)


def test_spec_level_distribution_errors_are_spec_errors() -> None:
    with pytest.raises(SpecError, match=r"tune\.space\.train\.lr.*low"):
        tune_exp().with_overrides({"tune.space": {"train.lr": {"low": 1.0, "high": 0.1}}})


def test_grid_needs_enumerable_dimensions() -> None:
    exp = tune_exp(**{"tune.sampler": "grid"})
    with pytest.raises(SpecError, match=r"sampler=grid needs choices"):
        build_space(exp)


def test_no_tune_section_is_a_spec_error() -> None:
    exp = tune_exp().with_overrides({"tune": None})
    with pytest.raises(SpecError, match="no tune section"):
        tune_experiment(exp, storage=MEM)


# --------------------------------------------------------------------------- objective, pruning


def _states(outcome: Any) -> list[tuple[int, str, Any, list[int]]]:
    return [(t.number, t.state, None if t.value is None else round(t.value, 6), t.folds_run) for t in outcome.trials]


@pytest.mark.parametrize("pruner", ["median", "wilcoxon"])
def test_pruning_stops_trials_before_all_folds_and_is_deterministic(pruner: str) -> None:
    # 5 folds; low learning rates are hopeless after 5 epochs of SGD, so they get pruned.
    exp = tune_exp({"train.lr": {"low": 1e-4, "high": 1.0, "log": True}},
                   **{"cv.n_splits": 5, "tune.pruner": pruner, "tune.sampler": "random"})
    a = tune_experiment(exp, storage=MEM, n_trials=10, refit=False)
    pruned = [t for t in a.trials if t.state == "PRUNED"]
    assert pruned, _states(a)
    for t in pruned:
        assert 0 < len(t.folds_run) < 5  # stopped early, and the folds it ran are recorded
        assert set(t.fold_scores) == set(t.folds_run)
        assert "pruned after" in t.reason
    complete = [t for t in a.trials if t.state == "COMPLETE"]
    assert complete and all(sorted(t.folds_run) == [0, 1, 2, 3, 4] for t in complete)
    assert all(np.isclose(t.value, np.mean(list(t.fold_scores.values()))) for t in complete)
    b = tune_experiment(exp, storage=MEM, n_trials=10, refit=False)
    assert _states(a) == _states(b)


def test_fold_order_is_shuffled_per_trial() -> None:
    exp = tune_exp(**{"cv.n_splits": 5})
    orders = {tuple(gencv.tuning._fold_order(exp, n, 5)) for n in range(6)}
    assert len(orders) > 1


def test_direction_follows_the_metric() -> None:
    exp = tune_exp(**{"metric": "log_loss"})
    out = tune_experiment(exp, storage=MEM, n_trials=2, refit=False)
    assert out.direction == "minimize"


# --------------------------------------------------------------------------- divergence and failures


def _count_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = gencv.cv.fit_and_score

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(a[3].index)
        return real(*a, **k)

    monkeypatch.setattr(gencv.cv, "fit_and_score", counting)
    return calls


def test_diverging_trial_is_pruned_at_once_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_folds(monkeypatch)
    exp = tune_exp({"train.lr": {"choices": [1000.0]}})
    out = tune_experiment(exp, storage=MEM, n_trials=1, refit=False)
    (t,) = out.trials
    assert t.state == "PRUNED"
    assert "diverged" in t.reason and ("nan" in t.reason or "inf" in t.reason)
    assert len(calls) == 1  # the other folds never ran
    assert t.folds_run == []


def test_diverging_trial_penalty_is_finite_and_worst(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tune_exp({"train.lr": {"choices": [1000.0, 0.5]}}, **{"tune.divergence": "penalty", "tune.sampler": "grid"})
    out = tune_experiment(exp, storage=MEM, n_trials=2, refit=False)
    by_lr = {t.params["train.lr"]: t for t in out.trials}
    bad = by_lr[1000.0]
    assert bad.state == "COMPLETE" and bad.penalized
    assert bad.value == 0.0 and np.isfinite(bad.value)  # worst possible accuracy, never NaN
    assert "diverged" in bad.reason and "penalised" in bad.reason
    assert out.best is not None and out.best.params["train.lr"] == 0.5


def test_penalty_for_unbounded_metrics_is_finite_and_bad() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    rmse = gencv.tuning._penalty("rmse", y, "regression", [0.5, 0.9])
    assert np.isfinite(rmse) and rmse > 0.9
    r2 = gencv.tuning._penalty("r2", y, "regression", [0.3, -0.2])
    assert np.isfinite(r2) and r2 < -0.2


@pytest.mark.slow
def test_sampler_learns_to_avoid_the_diverging_region() -> None:
    # SGD on iris diverges (NaN) for lr above ~30; the space spans 1e-4 .. 1e3 on a log scale.
    exp = tune_exp({"train.lr": {"low": 1e-4, "high": 1e3, "log": True}},
                   **{"tune.sampler": "tpe", "tune.pruner": "none", "train.max_epochs": 4})
    out = tune_experiment(exp, storage=MEM, n_trials=24, refit=False)
    diverged = [t for t in out.trials if "diverged" in t.reason]
    assert diverged, "the region above lr ~ 30 should diverge at least once"
    assert all(t.state == "PRUNED" for t in diverged)
    assert len(diverged) < len(out.trials) / 2
    later = [t for t in out.trials if t.number >= 12]
    assert sum("diverged" in t.reason for t in later) <= 3
    assert out.best is not None and out.best.params["train.lr"] < 30


def test_consecutive_failures_stop_the_study(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom: no GPU here")

    monkeypatch.setattr(gencv.tuning, "make_estimator", broken)
    exp = tune_exp(**{"tune.max_consecutive_failures": 3})
    with pytest.raises(TuningError, match=r"3 consecutive trials failed.*boom: no GPU here"):
        tune_experiment(exp, storage=MEM, n_trials=10, refit=False)


def test_a_failed_trial_does_not_stop_the_study(monkeypatch: pytest.MonkeyPatch) -> None:
    real = gencv.tuning.make_estimator
    calls = {"n": 0}

    def flaky(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient")
        return real(*a, **k)

    monkeypatch.setattr(gencv.tuning, "make_estimator", flaky)
    out = tune_experiment(tune_exp(), storage=MEM, n_trials=2, refit=False)
    assert [t.state for t in out.trials] == ["FAIL", "COMPLETE", "COMPLETE"]  # failures do not use the budget
    assert "RuntimeError: transient" in out.trials[0].reason


# --------------------------------------------------------------------------- nested CV


def test_nested_cv_never_lets_the_outer_test_fold_into_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    tuned: list[list[Any]] = []
    refits: list[Any] = []
    real_cv, real_fit = gencv.tuning.cross_validate, gencv.tuning.fit_and_score

    def spy_cv(est: Any, X: Any, y: Any, folds: Any, **k: Any) -> Any:
        tuned.append(list(folds))
        return real_cv(est, X, y, folds, **k)

    def spy_fit(est: Any, X: Any, y: Any, fold: Any, **k: Any) -> Any:
        refits.append(fold)
        return real_fit(est, X, y, fold, **k)

    monkeypatch.setattr(gencv.tuning, "cross_validate", spy_cv)
    monkeypatch.setattr(gencv.tuning, "fit_and_score", spy_fit)
    exp = tune_exp(**{"tune.nested": True, "tune.inner_cv": {"kind": "stratified", "n_splits": 2},
                      "tune.pruner": "median"})
    out = tune_experiment(exp, storage=MEM, n_trials=2)
    assert out.nested is not None and len(out.nested.folds) == 3
    prep = gencv.tuning.prepare(exp)
    test_set = set(prep.test_idx.tolist())
    calls = iter(tuned)
    for nf, outer in zip(out.nested.folds, prep.folds):
        assert np.array_equal(nf.outer_test, outer.valid) and np.array_equal(nf.outer_train, outer.train)
        outer_test = set(outer.valid.tolist())
        for inner in nf.inner_folds:
            assert set(inner.train) | set(inner.valid) <= set(outer.train.tolist())
        for _ in range(nf.n_trials):  # every trial of this outer fold's study
            folds = next(calls)
            used = set(np.concatenate([np.r_[f.train, f.valid] for f in folds]).tolist())
            assert not used & outer_test, "an outer test index entered tuning"
            assert not used & test_set
            assert used == set(outer.train.tolist())
    assert len(refits) == 3
    for fold, outer in zip(refits, prep.folds):  # winner refit on the whole outer training fold, scored once
        assert np.array_equal(fold.train, outer.train) and np.array_equal(fold.valid, outer.valid)
    est = out.nested.estimate
    assert est["n"] == 3 and est["ci_low"] <= est["mean"] <= est["ci_high"]
    assert np.isclose(out.nested.optimism, out.nested.inner_best["mean"] - est["mean"])


# --------------------------------------------------------------------------- MLflow, storage, resume


@pytest.mark.slow
def test_mlflow_run_tree(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tune_exp({"train.lr": {"low": 1e-4, "high": 1.0, "log": True}},
                   **{"tune.pruner": "median", "measures": ["norms"], "cv.n_splits": 3})
    out = tune_experiment(exp, tracker=tracker, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="tree",
                          n_trials=6)
    c = tracker.client
    study_run = c.get_run(out.run_id)
    assert study_run.data.tags["gencv.kind"] == "study"
    assert study_run.data.tags["gencv.study"] == "tree"
    assert study_run.data.tags["gencv.storage"].endswith("optuna.db")
    assert study_run.info.status == "FINISHED"
    runs = c.search_runs([study_run.info.experiment_id], max_results=500)
    by_parent: dict[str, list[Any]] = {}
    for r in runs:
        by_parent.setdefault(r.data.tags.get("mlflow.parentRunId", ""), []).append(r)
    trial_runs = by_parent[out.run_id]
    assert {r.data.tags["gencv.kind"] for r in trial_runs} == {"trial"}
    assert len(trial_runs) == len(out.trials) == 6
    states = {int(r.data.tags["gencv.trial"]): r for r in trial_runs}
    for t in out.trials:
        run = states[t.number]
        assert run.data.tags["gencv.state"] == t.state
        folds = by_parent.get(run.info.run_id, [])
        assert len(folds) == len(t.folds_run) and all(f.data.tags["gencv.kind"] == "fold" for f in folds)
        if t.state == "PRUNED":
            assert "pruned after" in run.data.tags["gencv.reason"]
        for f in folds:  # learning curves on every fold run
            assert len(c.get_metric_history(f.info.run_id, "curve_train_loss")) == exp.train.max_epochs
    best = [r for r in trial_runs if r.data.tags.get("gencv.best_trial") == "true"]
    assert len(best) == 1 and int(best[0].data.tags["gencv.trial"]) == out.best.number
    arts = {a.path for a in c.list_artifacts(out.run_id)} | {a.path for a in c.list_artifacts(out.run_id, "plots")}
    assert {"trials.csv", "summary.md", "model", "measures_vs_gap.csv", "plots/optimization_history.png",
            "plots/slice.png", "plots/measures_vs_gap_trials.png"} <= arts
    assert "refit_test_accuracy" in study_run.data.metrics
    assert out.measure_report is not None and {"tau", "granulated_tau"} <= set(out.measure_report.columns)


def test_resume_by_study_name_reaches_the_total(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    exp = tune_exp()
    first = tune_experiment(exp, storage=storage, study_name="resume-me", n_trials=2, refit=False)
    again = tune_experiment(exp, storage=storage, study_name="resume-me", n_trials=4, refit=False)
    assert len(again.trials) == 4  # a total, not 4 more
    assert _states(again)[:2] == _states(first)
    same = tune_experiment(exp, storage=storage, study_name="resume-me", n_trials=4, refit=False)
    assert len(same.trials) == 4
    with pytest.raises(TuningError, match="another spec or search space"):
        tune_experiment(exp.with_overrides({"train.max_epochs": 6}), storage=storage, study_name="resume-me",
                        n_trials=5)


def test_default_storage_is_sqlite_under_mlruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tune_experiment(tune_exp(), n_trials=1, refit=False)
    assert (tmp_path / "mlruns" / "optuna.db").exists()
    assert out.storage == "sqlite:///mlruns/optuna.db"


def test_grid_sampler_stops_when_exhausted() -> None:
    exp = tune_exp({"train.lr": {"choices": [0.05, 0.5]}, "model.dropout": {"low": 0.0, "high": 0.2, "step": 0.2}},
                   **{"tune.sampler": "grid"})
    out = tune_experiment(exp, storage=MEM, n_trials=50, refit=False)
    assert len(out.trials) == 4
    assert {(t.params["train.lr"], t.params["model.dropout"]) for t in out.trials} == \
        {(0.05, 0.0), (0.05, 0.2), (0.5, 0.0), (0.5, 0.2)}


def test_redact_url_hides_passwords() -> None:
    from gencv._tuning_storage import redact_url

    assert "s3cret" not in redact_url("postgresql+psycopg2://me:s3cret@db.example:5432/optuna")
    assert redact_url("postgresql://me:s3cret@db/optuna").startswith("postgresql://me:***@db")
    assert redact_url("sqlite:///mlruns/optuna.db") == "sqlite:///mlruns/optuna.db"


def test_bad_storage_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(GencvError, match=r"cannot open the Optuna storage") as info:
        tune_experiment(tune_exp(), storage="postgresql+psycopg2://me:s3cret@127.0.0.1:1/nope", n_trials=1)
    assert "s3cret" not in str(info.value)


# --------------------------------------------------------------------------- CLI


def _cli() -> Any:
    from gencv.cli import app
    from gencv.cli_tune import tune

    if not any(getattr(c.callback, "__name__", "") == "tune" for c in app.registered_commands):
        app.command()(tune)
    return app


def _spec(tmp_path: Path, exp: Experiment) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(exp.to_yaml())
    return p


def test_cli_json_and_tables(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    spec = _spec(tmp_path, tune_exp())
    res = CliRunner().invoke(_cli(), ["tune", str(spec), "--trials", "2", "--no-track", "--json",
                                      "--storage", f"sqlite:///{tmp_path}/o.db", "--study", "cli"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["study"] == "cli" and data["counts"]["COMPLETE"] + data["counts"]["PRUNED"] == 2
    assert data["refit_test_scores"]["accuracy"] >= 0
    res = CliRunner().invoke(_cli(), ["tune", str(spec), "--trials", "3", "--no-track", "-q",
                                      "--storage", f"sqlite:///{tmp_path}/o.db", "--study", "cli"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "best trials of study cli (3 complete" in text and "optimistic" in text and "<- quote this" in text


def test_cli_user_errors_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    spec = _spec(tmp_path, tune_exp())
    res = CliRunner().invoke(_cli(), ["tune", str(spec), "--no-track", "--storage", MEM,
                                      "--set", "tune.space={train.lrr: {low: 0.1, high: 1.0}}"])
    assert res.exit_code == 2
    assert "tune.space.train.lrr" in res.output
