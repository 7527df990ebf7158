"""stats: corrected resampled t-test, Kendall tau, granulated Kendall tau (Jiang et al. 2020)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from gencv.cv import CVResult, FoldResult
from gencv.stats import compare_cv, corrected_ttest, granulated_kendall, kendall_tau

A = [0.91, 0.88, 0.93, 0.90, 0.87, 0.92, 0.89, 0.94, 0.90, 0.91]
B = [0.89, 0.87, 0.90, 0.90, 0.85, 0.91, 0.86, 0.92, 0.88, 0.90]


def test_corrected_ttest_matches_the_formula() -> None:
    d = np.subtract(A, B)
    n_train, n_test = 90, 10
    se = math.sqrt((1 / len(d) + n_test / n_train) * d.var(ddof=1))
    t = d.mean() / se
    p = 2 * sps.t.sf(abs(t), len(d) - 1)
    res = corrected_ttest(A, B, n_train=n_train, n_test=n_test)
    assert res.t == pytest.approx(t, rel=1e-12)
    assert res.p_value == pytest.approx(p, rel=1e-10)
    assert res.df == 9 and res.n == 10
    assert res.ci_low < res.mean_diff < res.ci_high


def test_corrected_ttest_reduces_to_paired_ttest_without_overlap() -> None:
    res = corrected_ttest(A, B, n_train=1e12, n_test=1e-3)
    ref = sps.ttest_rel(A, B)
    assert res.t == pytest.approx(ref.statistic, rel=1e-6)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-5)


def test_correction_makes_the_test_more_conservative() -> None:
    corrected = corrected_ttest(A, B, n_train=90, n_test=10)
    naive = sps.ttest_rel(A, B)
    assert corrected.p_value > naive.pvalue


def test_one_sided_alternatives() -> None:
    two = corrected_ttest(A, B, n_train=90, n_test=10)
    greater = corrected_ttest(A, B, n_train=90, n_test=10, alternative="greater")
    less = corrected_ttest(A, B, n_train=90, n_test=10, alternative="less")
    assert greater.p_value == pytest.approx(two.p_value / 2, rel=1e-10)
    assert greater.p_value + less.p_value == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize(("a", "b", "kw", "match"), [
    ([1.0, 2.0], [1.0], {}, "paired"),
    ([1.0], [1.0], {}, "at least 2"),
    ([1.0, float("nan")], [1.0, 2.0], {}, "finite"),
    ([1.0, 2.0], [1.0, 2.5], {"n_train": 0}, "positive"),
])
def test_corrected_ttest_errors(a: list[float], b: list[float], kw: dict[str, float], match: str) -> None:
    args = {"n_train": 10.0, "n_test": 2.0, **kw}
    with pytest.raises(ValueError, match=match):
        corrected_ttest(a, b, **args)


def _cv(scores: list[float], metric: str = "accuracy") -> CVResult:
    folds = [FoldResult(index=i, seed=0, n_train=90, n_valid=10, valid_scores={metric: s}) for i, s in enumerate(scores)]
    return CVResult(folds=folds, metric=metric, task="classification", seed=0)


def test_compare_cv_orients_the_difference_so_positive_means_better() -> None:
    res = compare_cv(_cv(A), _cv(B))
    assert res.mean_diff > 0
    loss = compare_cv(_cv(B, "log_loss"), _cv(A, "log_loss"))  # lower loss is better: B better than A
    assert loss.mean_diff == pytest.approx(res.mean_diff)


def test_compare_cv_needs_the_same_folds() -> None:
    with pytest.raises(ValueError, match="different folds"):
        compare_cv(_cv(A), _cv(B[:5]))


def test_kendall_tau_matches_scipy_and_drops_nans() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    tau, p, n = kendall_tau(x, y)
    ref = sps.kendalltau(x, y)
    assert tau == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, abs=1e-12) and n == 30
    x2 = np.r_[x, np.nan]
    y2 = np.r_[y, 1.0]
    assert kendall_tau(x2, y2)[0] == pytest.approx(tau, abs=1e-12)
    assert math.isnan(kendall_tau([1, 1, 1, 1], [1, 2, 3, 4])[0])
    assert math.isnan(kendall_tau([1, 2], [1, 2])[0])


def test_granulated_kendall_on_a_grid() -> None:
    # Grid over a (3 values) x b (2 values). The gap rises with a and with b.
    grid = list(itertools.product([1, 2, 3], [1, 2]))
    a = [p[0] for p in grid]
    b = [p[1] for p in grid]
    gap = [ai + 10 * bi for ai, bi in grid]
    # A measure that follows a but not b: perfect when only a changes, undefined (constant) when only b does.
    follows_a = granulated_kendall([float(x) for x in a], gap, {"a": a, "b": b})
    assert follows_a.per_param["a"] == pytest.approx(1.0)
    assert math.isnan(follows_a.per_param["b"]) and follows_a.n_groups["b"] == 0
    assert follows_a.n_groups["a"] == 2 and follows_a.overall == pytest.approx(1.0)
    # A measure that moves with a but against b: psi_a = 1, psi_b = -1, Psi = 0.
    mixed = granulated_kendall([ai - 10.0 * bi for ai, bi in grid], gap, {"a": a, "b": b})
    assert mixed.per_param == pytest.approx({"a": 1.0, "b": -1.0})
    assert mixed.overall == pytest.approx(0.0)


def test_granulated_kendall_checks_lengths() -> None:
    with pytest.raises(ValueError, match="params"):
        granulated_kendall([1.0, 2.0], [1.0, 2.0], {"a": [1]})
