"""`tune.batch_trials`: trials asked together and trained as one population in the batched engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import gencv.tuning.study
from gencv.engines import BatchedEngine
from gencv.spec import drop_unset_custom_keys
from gencv.tracking import MlflowTracker
from gencv.tuning import tune_experiment
from tests.test_tuning import MEM, tune_exp

SPACE = {"train.lr": {"low": 1e-2, "high": 0.5, "log": True}, "train.weight_decay": {"low": 0.0, "high": 0.05},
         "train.l1": {"low": 0.0, "high": 1e-3}}
FAST = {"train.dtype": "float64", "train.max_epochs": 4, "train.early_stopping": {"patience": 2, "valid_fraction": 0.2}}


def _scores(out: Any) -> dict[int, tuple[dict[str, Any], dict[str, float]]]:
    return {t.number: (t.params, t.fold_scores) for t in out.trials}


def test_a_population_gives_each_trial_the_scores_it_gets_alone() -> None:
    alone = tune_experiment(tune_exp(SPACE, **FAST, **{"train.engine": "batched"}), storage=MEM, n_trials=4,
                            refit=False)
    together = tune_experiment(tune_exp(SPACE, **FAST, **{"tune.batch_trials": 4}), storage=MEM, n_trials=4,
                               refit=False)
    a, b = _scores(alone), _scores(together)
    assert [t.state for t in together.trials] == ["COMPLETE"] * 4
    assert a.keys() == b.keys() and len({v for _, (p, _) in a.items() for v in [p["train.lr"]]}) == 4
    for n in a:
        assert b[n][0] == a[n][0]  # the same proposals (random sampler, same seed, same asking order)
        assert b[n][1].keys() == a[n][1].keys()
        for fold, score in a[n][1].items():
            assert b[n][1][fold] == pytest.approx(score, abs=1e-6)
    assert together.best is not None and together.best.value == pytest.approx(alone.best.value, abs=1e-6)


def test_batch_trials_leaves_digests_unchanged() -> None:
    plain = tune_exp(SPACE)
    batched = plain.with_overrides({"tune.batch_trials": 8})
    assert plain.model_dump()["tune"]["batch_trials"] == 1
    assert batched.flat_params()["tune.batch_trials"] == "8"  # logged as a param
    raw = plain.model_dump(mode="json")  # the digest as computed before the key existed
    raw["tune"].pop("batch_trials")
    drop_unset_custom_keys(raw)
    raw.pop("tracking", None)
    raw.pop("sweep", None)
    assert plain.digest() == hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.digest() != batched.digest()  # set, it is part of the spec
    digest = gencv.tuning.study.study_digest
    assert digest(plain) == digest(batched)  # how many trials train together is not what a trial's value means


@pytest.mark.slow
def test_unsupported_configurations_run_alone_and_the_rest_together(caplog: pytest.LogCaptureFixture) -> None:
    exp = tune_exp({"train.optimizer": {"choices": ["sgd", "lbfgs"]}},
                   **{"tune.sampler": "grid", "tune.batch_trials": 2, "train.max_epochs": 2})
    with caplog.at_level("INFO", logger="gencv.tuning.trials"):
        out = tune_experiment(exp, storage=MEM, n_trials=2, refit=False)
    assert sorted(t.params["train.optimizer"] for t in out.trials) == ["lbfgs", "sgd"]
    assert [t.state for t in out.trials] == ["COMPLETE", "COMPLETE"]
    assert "runs alone, not in the population: train.optimizer: got 'lbfgs'" in caplog.text


def test_a_diverging_member_fails_its_trial_only() -> None:
    exp = tune_exp({"train.lr": {"choices": [0.1, 1000.0]}}, **{"tune.sampler": "grid", "tune.batch_trials": 2})
    out = tune_experiment(exp, storage=MEM, n_trials=2, refit=False)
    by_lr = {t.params["train.lr"]: t for t in out.trials}
    assert by_lr[0.1].state == "COMPLETE" and len(by_lr[0.1].fold_scores) == 3
    assert by_lr[1000.0].state == "PRUNED" and "diverged" in by_lr[1000.0].reason


def test_population_pruning_prunes_the_worse_half_of_a_population_and_says_why() -> None:
    exp = tune_exp({"train.lr": {"choices": [0.5, 0.2, 0.05, 0.01, 0.002, 0.0005]}},
                   **{"tune.sampler": "grid", "tune.batch_trials": 6, "tune.population_pruning": "median",
                      "train.max_epochs": 4})
    out = tune_experiment(exp, storage=MEM, n_trials=6, refit=False)
    states = sorted(t.state for t in out.trials)
    assert states == ["COMPLETE"] * 3 + ["PRUNED"] * 3
    for t in out.trials:
        if t.state == "PRUNED":
            assert t.reason.startswith("population pruning: stopped at epoch 1 of 4, its mean held-out loss")
            assert len(t.fold_scores) == 3  # its folds are still scored and recorded
    assert out.best is not None and out.best.state == "COMPLETE"
    digest = gencv.tuning.study.study_digest
    assert digest(exp) == digest(exp.with_overrides({"tune.population_pruning": "none"}))


@pytest.mark.slow
def test_an_interrupted_population_requeues_its_trials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchedEngine, "fit_population", interrupted)  # Ctrl-C while the population trains
    storage = f"sqlite:///{tmp_path}/optuna.db"
    exp = tune_exp(SPACE, **{"tune.batch_trials": 3, "train.max_epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        tune_experiment(exp, storage=storage, study_name="s", n_trials=3, refit=False)
    import optuna

    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states.count("FAIL") == 3 and states.count("WAITING") == 3  # each re-queued with its parameters
    monkeypatch.undo()
    out = tune_experiment(exp, storage=storage, study_name="s", n_trials=3, refit=False)
    assert sum(t.state == "COMPLETE" for t in out.trials) == 3


@pytest.mark.slow
def test_population_trials_are_recorded_as_trials_run_alone(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tune_exp(SPACE, **{"tune.batch_trials": 2, "train.max_epochs": 2, "tune.pruner": "wilcoxon"})
    out = tune_experiment(exp, tracker=tracker, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="pop",
                          n_trials=2)
    c = tracker.client
    runs = c.search_runs([c.get_run(out.run_id).info.experiment_id], max_results=100)
    trial_runs = [r for r in runs if r.data.tags.get("gencv.kind") == "trial"]
    assert len(trial_runs) == 2
    for r in trial_runs:
        assert r.data.tags["gencv.engine"] == "batched" and r.data.tags["gencv.state"] == "COMPLETE"
        assert r.data.tags["gencv.population"] == "trials 0,1 (2 x 3 folds)"
        folds = [f for f in runs if f.data.tags.get("mlflow.parentRunId") == r.info.run_id]
        assert len(folds) == 3 and all("curve_valid_loss" in f.data.metrics for f in folds)
    assert out.refit_estimator is not None
