from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from gencv.cli import app
from gencv.runner import prepare, run_experiment
from gencv.studies.permutation import (
    PermutationError,
    PermutationTest,
    permutation_p_value,
    permutation_test,
    permute_labels,
)

from .conftest import tiny


@pytest.mark.parametrize(("higher", "null", "expected"), [
    (True, [0.5, 0.8, 0.9, 0.7], 3 / 5),  # 0.8 and 0.9 are at least as good as 0.8
    (False, [0.5, 0.8, 0.9, 0.7], 4 / 5),  # lower is better: 0.5, 0.8, 0.7
    (True, [0.1, 0.2, 0.3], 1 / 4),  # nothing reaches the true score: the smallest p-value
    (True, [0.9, np.nan, 0.1], 2 / 3),  # a permuted CV without any successful fold counts in neither C nor N
])
def test_p_value_is_c_plus_one_over_n_plus_one(higher: bool, null: list[float], expected: float) -> None:
    assert permutation_p_value(0.8, null, higher_is_better=higher) == pytest.approx(expected, abs=1e-12)


def test_within_group_permutation_keeps_each_groups_labels() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 10)
    y = rng.integers(0, 3, size=60)
    perm = permute_labels(y, np.random.default_rng(1), groups)
    assert not np.array_equal(perm, y)
    for g in np.unique(groups):
        assert sorted(perm[groups == g]) == sorted(y[groups == g])
    # without groups, labels move across the groups too (the multiset of the whole column is kept)
    free = permute_labels(y, np.random.default_rng(1))
    assert sorted(free) == sorted(y)
    assert any(sorted(free[groups == g]) != sorted(y[groups == g]) for g in np.unique(groups))


def test_on_iris_the_true_score_beats_every_permutation() -> None:
    exp = tiny(**{"train.max_epochs": 25, "train.lr": 0.05})
    out = permutation_test(exp, 5, refit=False)
    perm = out.permutation
    assert perm.n_permutations == 5 and np.all(np.isfinite(perm.null_scores))
    assert perm.true_score == out.cv.mean_score("valid") > perm.null_scores.max()
    assert perm.p_value == pytest.approx(1 / 6, abs=1e-12)
    assert perm.null_mean < 0.6  # three balanced classes: chance is 1/3


def test_permuted_scores_are_reproducible_from_the_root_seed() -> None:
    exp = tiny(**{"train.max_epochs": 2})
    prep = prepare(exp)
    a = permutation_test(exp, 2, prepared=prep, refit=False).permutation
    b = run_experiment(exp, refit=False, after_cv=[PermutationTest(2)]).permutation
    np.testing.assert_array_equal(a.null_scores, b.null_scores)


@pytest.mark.parametrize("overrides", [{"cv.kind": "rolling"},
                                       {"data.source": "synthetic_timeseries", "metric": "rmse", "cv.kind": "rolling"}])
def test_time_series_are_refused_before_training(overrides: dict[str, object]) -> None:
    with pytest.raises(PermutationError, match="time series.*block bootstrap"):
        permutation_test(tiny(**overrides), 3)


def test_a_count_below_one_is_refused() -> None:
    with pytest.raises(PermutationError, match="--permutations: got 0"):
        permutation_test(tiny(), 0)


def test_cli_refuses_permutations_on_a_time_series_with_exit_2() -> None:
    res = CliRunner().invoke(app, ["run", "--no-track", "-q", "--set", "data.source=synthetic_timeseries",
                                   "--set", "metric=rmse", "--set", "cv.kind=rolling", "--permutations", "3"])
    assert res.exit_code == 2, res.output
    assert "not exchangeable" in res.output and "Traceback" not in res.output


def test_cli_prints_the_p_value_and_puts_it_in_the_json() -> None:
    import json

    args = ["run", "--no-track", "-q", "--set", "train.max_epochs=2", "--set", "cv.n_splits=3", "--permutations", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "permutation test (2 CVs on the same folds" in res.output and "p-value" in res.output
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout.strip().splitlines()[-1])["permutation"]
    assert found["permutation_n"] == 2 and found["permutation_p_value"] in (1 / 3, 2 / 3, 1.0)
