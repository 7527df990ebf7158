"""A population (configurations x folds) in the batched engine: each member as if its configuration ran alone."""

from __future__ import annotations

import numpy as np
import pytest

from gencv.engines import BatchedEngine, UnsupportedSettingError, get_engine
from tests.test_engines_batched import ATOL, SEEDS, _data, _est, _max_weight_diff

ES = {"valid_fraction": 0.3, "restore_best": True}


def _alone_and_together(ests: list, task: str = "classification") -> tuple[list[list], list[list]]:
    X, y, folds = _data(task)
    alone = [list(get_engine("batched").fit_folds(e, X, y, folds, SEEDS)) for e in ests]
    together = BatchedEngine().fit_population(ests, X, y, folds, SEEDS)
    return alone, together


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsprop", "nadam"])
def test_each_member_of_a_population_trains_as_its_configuration_alone(optimizer: str) -> None:
    # lr, weight decay, L1 and early-stopping patience / min_delta differ per configuration
    a = _est(optimizer=optimizer, lr=0.2 if optimizer == "sgd" else 0.05, weight_decay=0.0, l1=0.0, max_epochs=25,
             early_stopping={**ES, "patience": 1})
    b = _est(optimizer=optimizer, lr=0.01, weight_decay=0.05, l1=1e-3, max_epochs=25,
             early_stopping={**ES, "patience": 4, "min_delta": 1e-3})
    alone, together = _alone_and_together([a, b])
    for solo, pop in zip(alone, together):
        assert _max_weight_diff(solo, pop) < ATOL
        assert [f.estimator.epochs_run_ for f in pop] == [f.estimator.epochs_run_ for f in solo]
        assert [f.estimator.best_epoch_ for f in pop] == [f.estimator.best_epoch_ for f in solo]
        for fs, fp in zip(solo, pop):
            hs, hp = fs.estimator.net_.history, fp.estimator.net_.history
            for key in ("train_loss", "valid_loss", "curve_valid_loss"):
                assert [r[key] for r in hp] == pytest.approx([r[key] for r in hs], abs=ATOL), key
    assert _max_weight_diff(together[0], together[1]) > 1e-3  # the configurations really differ
    stops = [f.estimator.epochs_run_ for pop in together for f in pop]
    assert len(set(stops)) > 1  # patience differs per member: the members stopped at different epochs


@pytest.mark.parametrize("schedule", [{"kind": "cosine"}, {"kind": "plateau", "patience": 0, "factor": 0.5}])
def test_per_member_learning_rates_follow_each_members_schedule(schedule: dict) -> None:
    ests = [_est("regression", optimizer="momentum", lr=lr, max_epochs=6, schedule=schedule) for lr in (0.02, 0.002)]
    alone, together = _alone_and_together(ests, "regression")
    for solo, pop in zip(alone, together):
        assert _max_weight_diff(solo, pop) < ATOL


def test_architectures_and_batch_sizes_go_in_different_stacks(caplog: pytest.LogCaptureFixture) -> None:
    ests = [_est(lr=0.05), _est(lr=0.1, model={"hidden": [6]}), _est(lr=0.02, batch_size=32)]
    with caplog.at_level("INFO", logger="gencv.engines.batched"):
        alone, together = _alone_and_together(ests)
    assert "3 configurations x 4 folds in 3 stack(s)" in caplog.text
    for solo, pop in zip(alone, together):
        assert _max_weight_diff(solo, pop) < ATOL


def test_dropout_rate_is_per_member() -> None:
    no_drop, drop = _est(lr=0.05, max_epochs=4), _est(lr=0.05, max_epochs=4, model={"dropout": 0.5})
    alone, together = _alone_and_together([no_drop, drop])
    assert _max_weight_diff(alone[0], together[0]) < ATOL  # rate 0 keeps every unit, in a stack with dropout
    X, y, folds = _data("classification")
    again = BatchedEngine().fit_population([no_drop, drop], X, y, folds, SEEDS)
    assert _max_weight_diff(together[1], again[1]) == 0.0  # seeded masks: reproducible
    for f0, f1 in zip(together[0], together[1]):  # the dropout member's masks changed its training
        w0, w1 = (np.concatenate([p.detach().numpy().ravel() for p in f.estimator.module_.parameters()]) for f in (f0, f1))
        assert np.abs(w0 - w1).max() > 1e-3


def test_a_diverging_member_fails_its_configuration_only() -> None:
    X, y, folds = _data("regression")
    ests = [_est("regression", lr=0.01), _est("regression", lr=1e4)]
    with np.errstate(all="ignore"):
        together = BatchedEngine().fit_population(ests, X, y, folds, SEEDS)
    assert all(f.error is None for f in together[0])
    assert any(type(f.error).__name__ == "DivergenceError" for f in together[1])
    alone = list(get_engine("batched").fit_folds(ests[0], X, y, folds, SEEDS))
    assert _max_weight_diff(alone, together[0]) < ATOL


def test_an_unsupported_configuration_is_named() -> None:
    X, y, folds = _data("classification")
    with pytest.raises(UnsupportedSettingError, match=r"estimator 1: train.optimizer: got 'lbfgs'"):
        BatchedEngine().fit_population([_est(), _est(optimizer="lbfgs")], X, y, folds, SEEDS)


def test_median_population_pruning_stops_the_worse_half_at_a_quarter_of_the_epochs() -> None:
    """prune="median": the configurations whose mean held-out loss at epoch ceil(epochs / 4) is above the median
    stop there (as the unpruned run's histories say they should); the others train on exactly as unpruned."""
    lrs = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    ests = [_est(optimizer="sgd", lr=lr, max_epochs=8) for lr in lrs]
    X, y, folds = _data("classification")
    full = BatchedEngine().fit_population(ests, X, y, folds, SEEDS)
    pruned = BatchedEngine().fit_population(ests, X, y, folds, SEEDS, prune="median")
    at = 2  # ceil(8 / 4)
    loss = [np.mean([f.estimator.net_.history[at - 1]["curve_valid_loss"] for f in fits]) for fits in full]
    expect = [v > np.median(loss) for v in loss]
    assert sum(expect) == 3
    for fits_full, fits_pruned, worse, v in zip(full, pruned, expect, loss):
        for a, b in zip(fits_full, fits_pruned):
            if worse:
                assert b.estimator.epochs_run_ == at
                epoch, value, median = b.estimator.population_pruned_
                assert (epoch, value, median) == (at, pytest.approx(v, abs=1e-12), pytest.approx(np.median(loss)))
            else:
                assert b.estimator.epochs_run_ == 8 and b.estimator.population_pruned_ is None
                assert _max_weight_diff([a], [b]) < 1e-12  # the stack rebuilt without the pruned half
    with pytest.raises(ValueError, match="prune: got 'mean'"):
        BatchedEngine().fit_population(ests, X, y, folds, SEEDS, prune="mean")
