"""Tuning: search space checks, pruning, divergence, nested CV isolation, MLflow run tree, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gencv.cv
import gencv.runner
import gencv.tuning
import gencv.tuning.nested
import gencv.tuning.pruners
import gencv.tuning.study
import gencv.tuning.trials
import gencv.tuning.tune
from gencv.errors import GencvError, SpecError
from gencv.spec import Experiment, validate_experiment
from gencv.tracking import MlflowTracker
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


def _raising_on_call(real: Any, n: int, exc: BaseException) -> Any:
    """`real`, except that its n-th call raises `exc`."""
    calls = {"n": 0}

    def wrapper(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*a, **k)

    return wrapper


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

    monkeypatch.setattr(gencv.tuning.tune, "prepare", no_data)
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


def _spy_pruners(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    real = gencv.tuning.pruners.make_pruner

    def spy(*a: Any, **k: Any) -> Any:
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(gencv.tuning.study, "make_pruner", spy)
    return made


def test_pruner_options_reach_the_pruner(monkeypatch: pytest.MonkeyPatch) -> None:
    # The study of the test above: with gencv's defaults the median pruner prunes in these 6 trials;
    # with the warm-up covering every fold (steps are folds done: 1..5) nothing is pruned.
    made = _spy_pruners(monkeypatch)
    space = {"train.lr": {"low": 1e-4, "high": 1.0, "log": True}}
    base = {"cv.n_splits": 5, "tune.pruner": "median", "tune.sampler": "random"}
    default = tune_experiment(tune_exp(space, **base), storage=MEM, n_trials=6, refit=False)
    assert any(t.state == "PRUNED" for t in default.trials), _states(default)
    exp = tune_exp(space, **base, **{"tune.pruner_options": {"n_warmup_steps": 5}})
    out = tune_experiment(exp, storage=MEM, n_trials=6, refit=False)
    assert [t.state for t in out.trials] == ["COMPLETE"] * 6, _states(out)
    assert exp.tune is not None and exp.tune.pruner_settings() == {"n_startup_trials": 3, "n_warmup_steps": 5}
    assert [(m._n_startup_trials, m._n_warmup_steps) for m in made] == [(3, 2), (3, 5)]


@pytest.mark.parametrize(("pruner", "options", "match"), [
    ("wilcoxon", {"p_treshold": 0.2}, r"tune\.pruner_options\.p_treshold is not an option of the wilcoxon "
                                      r"pruner\. Did you mean 'p_threshold'"),
    ("wilcoxon", {"p_threshold": 1.5}, r"tune\.pruner_options\.p_threshold: got 1\.5; use a value between 0\.0 "
                                       r"and 1\.0"),
    ("wilcoxon", {"n_startup_steps": 2.5}, r"n_startup_steps: got 2\.5; use a whole number"),
    ("wilcoxon", {"n_warmup_steps": 1}, r"not an option of the wilcoxon pruner.*Options of wilcoxon: p_threshold, "
                                        r"n_startup_steps"),
    ("wilcoxon", {"n_startup_steps": float("inf")}, r"n_startup_steps: got inf; use a finite value from 0 to 1000000"),
    ("median", {"n_warmup_steps": float("nan")}, r"n_warmup_steps: got nan; use a finite value"),
    ("hyperband", {"reduction_factor": 101}, r"reduction_factor: got 101\.0; use a value from 2 to 100"),
    ("hyperband", {"reduction_factor": 1}, r"reduction_factor: got 1\.0; use a value from 2 to 100"),
])


def test_bad_pruner_options_are_spec_errors(pruner: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        tune_exp(**{"tune.pruner": pruner, "tune.pruner_options": options})


def test_hyperband_min_resource_must_leave_a_fold_to_prune_before(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*a: Any, **k: Any) -> None:
        raise AssertionError("a net was trained before the pruner options were checked")

    monkeypatch.setattr(gencv.tuning.trials, "make_estimator", no_training)
    exp = tune_exp(**{"tune.pruner": "hyperband", "tune.pruner_options": {"min_resource": 3}})
    with pytest.raises(SpecError, match=r"min_resource: got 3, but a trial has 3 folds \(cv\).*use a value from 1 to 2"):
        tune_experiment(exp, storage=MEM, n_trials=1)
    nested = exp.with_overrides({"tune.nested": True, "tune.inner_cv": {"kind": "stratified", "n_splits": 2}})
    with pytest.raises(SpecError, match=r"has 2 folds \(tune\.inner_cv\).*from 1 to 1"):
        tune_experiment(nested, storage=MEM, n_trials=1)


def _old_digest(exp: Experiment) -> str:
    """The study digest as gencv computed it before tune.pruner_options existed."""
    import hashlib

    raw = exp.model_dump(mode="json")
    for k in ("trials", "timeout", "max_consecutive_failures", "nested", "pruner_options", "batch_trials",
              "population_pruning"):  # (keys that did not exist then)
        raw["tune"].pop(k, None)
    raw.pop("name", None)
    raw.pop("sweep", None)  # nor the keys added since (train.engine, train.dtype, sweep, tracking, ...)
    raw.pop("tracking", None)
    raw["train"].pop("engine", None)
    raw["train"].pop("dtype", None)
    raw["train"].pop("stop_at_train_loss", None)
    raw["train"].pop("max_members", None)
    raw["data"].pop("train_fraction", None)
    for key in ("task", "sep", "categorical", "impute", "image_size"):
        raw["data"].pop(key, None)
    raw["data"]["lags"] = 12  # the old default, unused outside built-in series
    raw["model"].pop("module", None)  # model.kind: custom's keys
    raw["model"].pop("kwargs", None)
    raw["model"].pop("base", None)  # transfer learning's keys
    raw["train"].pop("base_lr_factor", None)
    raw["data"].pop("classes", None)
    raw["data"].pop("augment", None)  # data.augment (unset)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def test_pruner_options_do_not_change_the_study_digest(tmp_path: Path) -> None:
    omitted = tune_exp(**{"tune.pruner": "median"})
    explicit = omitted.with_overrides({"tune.pruner_options": {"n_startup_trials": 3, "n_warmup_steps": 2}})
    other = omitted.with_overrides({"tune.pruner_options": {"n_warmup_steps": 4}})
    digest = gencv.tuning.study.study_digest
    assert digest(omitted) == digest(explicit) == digest(other)
    assert digest(omitted, legacy=True) == _old_digest(omitted)
    assert digest(omitted.with_overrides({"train.dtype": "float64"}), legacy=True) == ""  # not what old studies ran
    assert digest(omitted.with_overrides({"data.train_fraction": 0.5}), legacy=True) == ""
    assert digest(omitted) != digest(omitted.with_overrides({"tune.pruner": "none"}))
    # A study made before the option (and train.engine, train.dtype) existed, with its stored digest, resumes.
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    study.set_user_attr("gencv.spec_digest", _old_digest(omitted))
    first = tune_experiment(omitted, storage=storage, study_name="old", n_trials=1, refit=False)
    again = tune_experiment(explicit, storage=storage, study_name="old", n_trials=1, refit=False)
    assert len(first.trials) == len(again.trials) == 1


def test_fold_order_is_shuffled_per_trial() -> None:
    exp = tune_exp(**{"cv.n_splits": 5})
    orders = {tuple(gencv.tuning.trials.fold_order(exp, n, 5)) for n in range(6)}
    assert len(orders) > 1


def test_direction_follows_the_metric() -> None:
    exp = tune_exp(**{"metric": "log_loss"})
    out = tune_experiment(exp, storage=MEM, n_trials=2, refit=False)
    assert out.direction == "minimize"


TWO_DIMS = {"train.lr": {"low": 0.01, "high": 0.5, "log": True}, "model.dropout": {"low": 0.0, "high": 0.3}}
TWO_GRID_DIMS = {"train.lr": {"low": 0.05, "high": 0.45, "step": 0.2}, "model.dropout": {"low": 0.0, "high": 0.3,
                                                                                         "step": 0.3}}


@pytest.mark.parametrize(("sampler", "pruner"), [
    ("tpe", "hyperband"), ("random", "median"), ("gp", "wilcoxon"), ("cmaes", "none"), ("grid", "wilcoxon"),
])


def test_every_sampler_and_pruner_runs_a_small_study(sampler: str, pruner: str) -> None:
    # Each sampler and each pruner at least once; cmaes and gp only use their model from the 2nd trial on.
    space = TWO_GRID_DIMS if sampler == "grid" else TWO_DIMS
    exp = tune_exp(space, **{"tune.sampler": sampler, "tune.pruner": pruner, "train.max_epochs": 2})
    out = tune_experiment(exp, storage=MEM, n_trials=3, refit=False)
    assert [t.state for t in out.trials if t.state not in ("COMPLETE", "PRUNED")] == [], _states(out)
    assert len(out.trials) == 3
    for t in out.trials:
        assert 0.01 <= t.params["train.lr"] <= 0.5 and 0.0 <= t.params["model.dropout"] <= 0.3
    assert len({tuple(t.params.values()) for t in out.trials}) == 3  # three configurations, not one
    assert out.best is not None


def test_a_failing_sampler_is_a_clear_error_and_leaves_no_running_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a missing `cmaes` did: the sampler's model raises at the 2nd trial's first suggestion.
    import optuna

    broken = _raising_on_call(optuna.samplers.RandomSampler.sample_relative, 2,
                              ModuleNotFoundError("No module named 'cmaes'", name="cmaes"))
    monkeypatch.setattr(optuna.samplers.RandomSampler, "sample_relative", broken)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(TuningError, match=r"random sampler failed to propose a configuration: ModuleNotFoundError: "
                                          r"No module named 'cmaes'\. Install the missing package: pip install cmaes"):
        tune_experiment(tune_exp(**{"train.max_epochs": 2}), storage=storage, study_name="s", n_trials=3, refit=False)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert "sampler failed" in trials[1].user_attrs["gencv.reason"]


def test_cmaes_without_its_package_is_a_clear_error_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cmaes", None)  # makes `import cmaes` fail
    with pytest.raises(GencvError, match=r"tune\.sampler=cmaes needs the `cmaes` package: pip install cmaes"):
        tune_experiment(tune_exp(**{"tune.sampler": "cmaes"}), storage=MEM, n_trials=1)


# --------------------------------------------------------------------------- divergence and failures


def _count_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = gencv.cv.score_fold  # called once for every fold an engine trained

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(a[0].fold.index)
        return real(*a, **k)

    monkeypatch.setattr(gencv.cv, "score_fold", counting)
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
    rmse = gencv.tuning.trials.divergence_penalty("rmse", y, "regression", [0.5, 0.9])
    assert np.isfinite(rmse) and rmse > 0.9
    r2 = gencv.tuning.trials.divergence_penalty("r2", y, "regression", [0.3, -0.2])
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

    monkeypatch.setattr(gencv.tuning.trials, "make_estimator", broken)
    exp = tune_exp(**{"tune.max_consecutive_failures": 3})
    with pytest.raises(TuningError, match=r"3 consecutive trials failed.*boom: no GPU here"):
        tune_experiment(exp, storage=MEM, n_trials=10, refit=False)


def test_a_failed_trial_does_not_stop_the_study(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gencv.tuning.trials, "make_estimator",
                        _raising_on_call(gencv.tuning.trials.make_estimator, 1, RuntimeError("transient")))
    out = tune_experiment(tune_exp(), storage=MEM, n_trials=2, refit=False)
    assert [t.state for t in out.trials] == ["FAIL", "COMPLETE", "COMPLETE"]  # failures do not use the budget
    assert "RuntimeError: transient" in out.trials[0].reason


def test_an_interrupted_trial_is_requeued_with_the_same_parameters(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from gencv.errors import Terminated

    real = gencv.tuning.trials.make_estimator
    monkeypatch.setattr(gencv.tuning.trials, "make_estimator", _raising_on_call(real, 2, Terminated("signal 15")))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    exp = tune_exp(**{"train.max_epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        tune_experiment(exp, storage=storage, study_name="int", n_trials=3, refit=False)
    trials = optuna.load_study(study_name="int", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]
    assert "interrupted (SIGTERM)" in trials[1].user_attrs["gencv.reason"]
    assert trials[2].params == trials[1].params and trials[2].system_attrs["failed_trial"] == 1
    monkeypatch.setattr(gencv.tuning.trials, "make_estimator", real)
    out = tune_experiment(exp, storage=storage, study_name="int", n_trials=3, refit=False)
    by_number = {t.number: t for t in out.trials}
    assert by_number[2].state == "COMPLETE" and by_number[2].params == by_number[1].params
    assert by_number[2].reason == ""  # the re-run does not inherit the interrupted run's reason
    assert [t.state for t in out.trials].count("COMPLETE") == 3 and len(out.trials) == 4


# --------------------------------------------------------------------------- nested CV


def test_nested_cv_never_lets_the_outer_test_fold_into_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    tuned: list[list[Any]] = []
    refits: list[Any] = []
    real_cv, real_fit = gencv.tuning.trials.cross_validate, gencv.tuning.nested.fit_and_score

    def spy_cv(est: Any, X: Any, y: Any, folds: Any, **k: Any) -> Any:
        tuned.append(list(folds))
        return real_cv(est, X, y, folds, **k)

    def spy_fit(est: Any, X: Any, y: Any, fold: Any, **k: Any) -> Any:
        refits.append(fold)
        return real_fit(est, X, y, fold, **k)

    monkeypatch.setattr(gencv.tuning.trials, "cross_validate", spy_cv)
    monkeypatch.setattr(gencv.tuning.nested, "fit_and_score", spy_fit)
    exp = tune_exp(**{"tune.nested": True, "tune.inner_cv": {"kind": "stratified", "n_splits": 2},
                      "tune.pruner": "median"})
    out = tune_experiment(exp, storage=MEM, n_trials=2)
    assert out.nested is not None and len(out.nested.folds) == 3
    prep = gencv.runner.prepare(exp)
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
    # where the interval is shown, it says the outer folds are treated as independent (so it is optimistic)
    from gencv.tuning import summary_markdown

    assert "treats the outer folds as independent" in summary_markdown(out)
    assert any("treated as independent" in n for n in out.notes)
    assert "optimism = mean best inner CV score" in summary_markdown(out)
    # The final model: an outer winner, refit on all non-test data, scored on the held-out test set.
    final = out.nested.final_outer_folds
    assert final and all(out.nested.folds[i].best_params == out.nested.final_params for i in final)
    assert out.best is not None and out.best.params == out.nested.final_params
    assert set(out.refit_test_scores) >= {"accuracy", "loss"}


class _Recorder:
    """A Tracker that keeps what would be logged: runs with parents, metrics, models, artifact file names."""

    def __init__(self) -> None:
        self.parents: dict[str, str | None] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.models: list[str] = []
        self.files: dict[str, set[str]] = {}

    def start_run(self, experiment: str, run_name: str, *, parent: str | None = None, tags: Any = None) -> str:
        run_id = f"run{len(self.parents)}"
        self.parents[run_id] = parent
        return run_id

    def log_params(self, *a: Any, **k: Any) -> None: ...
    def log_series(self, *a: Any, **k: Any) -> None: ...
    def set_tags(self, *a: Any, **k: Any) -> None: ...
    def log_text(self, *a: Any, **k: Any) -> None: ...
    def end_run(self, *a: Any, **k: Any) -> None: ...
    def log_all(self, *a: Any, **k: Any) -> None: ...
    def log_inputs(self, *a: Any, **k: Any) -> None: ...

    def log_metrics(self, run_id: str, metrics: Any, step: int = 0) -> None:
        self.metrics.setdefault(run_id, {}).update(metrics)

    def log_model(self, run_id: str, module: Any, input_example: Any, name: str = "model", **k: Any) -> None:
        self.models.append(run_id)

    def log_artifact(self, run_id: str, path: Any, artifact_path: str | None = None) -> None:
        p = Path(path)
        names = [str(f.relative_to(p.parent)) for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p.name]
        self.files.setdefault(run_id, set()).update(names)


def test_nested_study_logs_the_final_model_and_each_outer_studys_plots() -> None:
    tracker = _Recorder()
    exp = tune_exp(**{"tune.nested": True, "cv.n_splits": 2, "tune.inner_cv": {"kind": "stratified", "n_splits": 2},
                      "train.max_epochs": 2})
    out = tune_experiment(exp, tracker=tracker, storage=MEM, n_trials=2)
    root = out.run_id
    assert root is not None and tracker.parents[root] is None
    assert tracker.models == [root]  # the final model hangs on the nested study's run
    assert tracker.metrics[root]["refit_test_accuracy"] == out.refit_test_scores["accuracy"]
    assert {"nested.csv", "trials.csv", "summary.md", "plots/outer0/optimization_history.png",
            "plots/outer1/optimization_history.png"} <= tracker.files[root]


def _nf(index: int, params: dict[str, Any], inner: float) -> Any:
    e = np.array([], dtype=int)
    return gencv.tuning.NestedFold(index, e, e, [], f"s-outer{index}", params, inner, float("nan"))


def test_nested_final_configuration_is_the_most_frequent_winner_then_the_best_inner_score() -> None:
    choice = gencv.tuning.nested.nested_choice
    a, b, c = {"train.lr": 0.1}, {"train.lr": 0.2}, {"train.lr": 0.3}
    # Two outer folds chose `a`: it wins over `c`'s better inner score.
    assert choice([_nf(0, a, 0.80), _nf(1, c, 0.99), _nf(2, a, 0.70)], higher_is_better=True) == [0, 2]
    # All different: the best inner score, in the metric's direction.
    folds = [_nf(0, a, 0.5), _nf(1, b, 0.3), _nf(2, c, 0.4)]
    assert choice(folds, higher_is_better=True) == [0]
    assert choice(folds, higher_is_better=False) == [1]


def test_nested_penalty_sees_only_the_inner_training_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    real = gencv.tuning.trials.divergence_penalty

    def spy(metric: str, y: np.ndarray, *a: Any) -> float:
        seen.append(np.asarray(y))
        return real(metric, y, *a)

    monkeypatch.setattr(gencv.tuning.trials, "divergence_penalty", spy)
    exp = tune_exp({"train.lr": {"choices": [1e4, 0.5]}},  # 1e4 diverges even on these small inner folds
                   **{"tune.divergence": "penalty", "tune.sampler": "grid", "tune.nested": True, "cv.n_splits": 2,
                      "tune.inner_cv": {"kind": "stratified", "n_splits": 2}})
    out = tune_experiment(exp, storage=MEM, n_trials=2, refit=False)
    assert out.nested is not None and len(seen) == 2  # one diverged trial per outer fold
    ds = gencv.runner.prepare(exp).dataset
    for y, nf in zip(seen, out.nested.folds):
        assert len(y) == len(nf.outer_train)  # not the outer training + test labels (cv_idx)
        assert np.array_equal(y, ds.y[np.sort(nf.outer_train)])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the fake worker asks outside optimize()


def test_nested_refuses_a_second_worker(tmp_path: Path) -> None:
    import optuna

    from gencv.tuning.storage import make_storage

    storage = f"sqlite:///{tmp_path}/optuna.db"
    store = make_storage(storage, heartbeat_interval=60)
    other = optuna.create_study(study_name="n-outer1", storage=store, direction="maximize")
    trial = other.ask()  # another worker's trial, beating
    store.record_heartbeat(trial._trial_id)
    exp = tune_exp(**{"tune.nested": True, "tune.inner_cv": {"kind": "stratified", "n_splits": 2}})
    with pytest.raises(TuningError, match=r"study n-outer1 has 1 trial\(s\) RUNNING in another worker.*nested mode "
                                          r"runs one worker per study"):
        tune_experiment(exp, storage=storage, study_name="n", n_trials=1)
    assert "n-outer0" not in {s.study_name for s in store.get_all_studies()}  # refused before any outer fold ran


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
    assert {"trials.csv", "summary.md", "model_weights", "measures_vs_gap.csv", "plots/optimization_history.png",
            "plots/slice.png", "plots/measures_vs_gap_trials.png"} <= arts
    assert "plots/param_importances.png" not in arts  # 6 trials: fewer than MIN_IMPORTANCE_TRIALS
    (model,) = c.search_logged_models([study_run.info.experiment_id])
    assert model.source_run_id == out.run_id  # the refit best configuration, a LoggedModel of the study run
    (data,) = study_run.inputs.dataset_inputs  # the whole data set on the study run
    assert data.dataset.name == "iris" and data.dataset.digest == trial_runs[0].data.tags["gencv.data_digest"]
    fold_run = next(f for t in trial_runs for f in by_parent.get(t.info.run_id, []))
    assert {i.tags[0].value for i in fold_run.inputs.dataset_inputs} == {"training", "validation"}  # no early stopping
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


@pytest.mark.parametrize("sampler", ["random", "tpe"])


def test_a_resumed_study_does_not_repeat_the_first_sessions_configurations(tmp_path: Path, sampler: str) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    exp = tune_exp(TWO_DIMS, **{"tune.sampler": sampler, "train.max_epochs": 2, "cv.n_splits": 2})
    first = tune_experiment(exp, storage=storage, study_name="again", n_trials=2, refit=False)
    again = tune_experiment(exp, storage=storage, study_name="again", n_trials=4, refit=False)
    old = {tuple(t.params.values()) for t in first.trials}
    new = [tuple(t.params.values()) for t in again.trials if t.number >= 2]
    assert len(new) == 2 and not set(new) & old, (old, new)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the fake worker asks outside optimize()


def test_sqlite_warns_when_a_second_worker_shows_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import optuna

    from gencv.tuning.storage import make_storage

    storage = f"sqlite:///{tmp_path}/optuna.db"

    class OtherWorkerStarts:  # after this worker's first trial, another process takes a trial
        def study_start(self, *a: Any) -> None: ...
        def trial_start(self, *a: Any) -> None: ...
        def fold_end(self, *a: Any) -> None: ...

        def trial_end(self, record: Any, *a: Any) -> None:
            if record.number == 0:
                store = make_storage(storage, heartbeat_interval=1, grace_period=1)
                trial = optuna.load_study(study_name="two", storage=store).ask()
                store.record_heartbeat(trial._trial_id)  # then it dies: failed and re-queued after 1 s

    with caplog.at_level(logging.WARNING, logger="gencv.tuning"):
        out = tune_experiment(tune_exp(**{"train.max_epochs": 2}), storage=storage, study_name="two", n_trials=2,
                              refit=False, heartbeat_interval=1, grace_period=1, progress=OtherWorkerStarts())
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "SQLite is for one worker" in r.message]
    assert len(warned) == 1, caplog.text
    assert [t.state for t in out.trials] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_dead_trial_runs_are_closed_with_their_fold_runs(tmp_path: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    trial_run = tracker.start_run("dead", "trial-0")
    fold_run = tracker.start_run("dead", "fold-1", parent=trial_run)
    done_fold = tracker.start_run("dead", "fold-0", parent=trial_run)
    tracker.end_run(done_fold, "FINISHED")
    gencv.tuning.trials.flush_tracker(tracker)
    trial_run, fold_run, done_fold = (gencv.tuning.trials.real_run_id(tracker, r) for r in (trial_run, fold_run, done_fold))
    dead = gencv.tuning.TrialRecord(0, "FAIL", None, {}, run_id=trial_run)  # failed by heartbeat: no reason
    gencv.tuning.study.close_dead_trial_runs(tracker, [dead])
    gencv.tuning.trials.flush_tracker(tracker)
    status = {r: tracker.client.get_run(r).info.status for r in (trial_run, fold_run, done_fold)}
    assert status == {trial_run: "FAILED", fold_run: "FAILED", done_fold: "FINISHED"}
    assert "heartbeats" in tracker.client.get_run(fold_run).data.tags["gencv.reason"]


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
    from gencv.tuning.storage import redact_url

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
    from gencv.cli.tune import tune

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


def test_measure_on_a_study_run_rebuilds_the_best_trials_network(tmp_path: Path) -> None:
    """A study's refit has the best trial's width, not the spec's: `gencv measure` must rebuild that network."""
    from gencv.posthoc import measure_logged_run

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tune_exp({"model.hidden": {"choices": [[16]]}})
    out = tune_experiment(exp, storage=MEM, n_trials=1, tracker=tracker)
    assert out.refit_estimator is not None and list(out.refit_estimator.hidden) == [16]
    post = measure_logged_run(tracker, out.run_id, ["norms"], log_results=False)
    assert post.experiment.model.hidden == [16]
    assert post.result.values["n_params"] == sum(p.numel() for p in out.refit_estimator.module_.parameters())


@pytest.mark.slow


def test_workers_joining_one_sqlite_study_propose_distinct_configurations(tmp_path: Path) -> None:
    """Three `gencv tune` workers open the empty study while the test holds its lock, so each has
    joined before any trial exists; each worker's first trial must still be its own configuration."""
    import fcntl
    import os
    import subprocess
    import sys
    import time

    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    lock = Path(f"{tmp_path}/optuna.db.lock")
    spec = str(Path(__file__).resolve().parents[1] / "experiments" / "tune_iris.yaml")
    cmd = [sys.executable, "-m", "gencv.cli", "tune", spec, "-q", "--no-track", "--storage", storage, "--study", "shared",
           "--trials", "3", "--set", "tune.sampler=random", "--set", "train.max_epochs=2", "--set", "cv.n_splits=2"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(lock, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(3)]
        deadline = time.time() + 300
        waiting: set[int] = set()
        while len(waiting) < 3 and time.time() < deadline:  # each worker waits on the lock file
            time.sleep(0.3)
            for p in procs:
                try:
                    if any(str(lock) == os.readlink(f) for f in Path(f"/proc/{p.pid}/fd").iterdir()):
                        waiting.add(p.pid)
                except OSError:  # an fd closed while we looked
                    continue
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    assert len(waiting) == 3
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    first: dict[str, tuple[Any, ...]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        first.setdefault(t.user_attrs["gencv.worker"], tuple(t.params.values()))
    assert len(first) >= 2 and len(set(first.values())) == len(first), first
    seeds = {t.user_attrs["gencv.sampler_seed"] for t in trials}
    assert len(seeds) == len({t.user_attrs["gencv.worker"] for t in trials})


_OPEN_SQLITE_STORAGE = """
import sys, time
from pathlib import Path
import optuna.storages, sqlalchemy  # noqa: F401  (imported before the start signal)
from gencv.tuning.storage import make_storage
go = Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():
    time.sleep(0.005)
make_storage(sys.argv[1], heartbeat_interval=60)
"""


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_storage_together_all_succeed(tmp_path: Path) -> None:
    """Seen in a full run: a second worker died with `UNIQUE constraint failed: alembic_version`."""
    from tests.race import release_together

    release_together(_OPEN_SQLITE_STORAGE, f"sqlite:///{tmp_path}/store/optuna.db", 4, tmp_path)
