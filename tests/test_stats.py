"""stats: corrected and plain t-tests, correlated Bayesian t-test, Holm, Kendall tau, granulated Kendall tau."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from gencv.cv import CVResult, FoldResult
from gencv.stats import (
    bayesian_correlated_ttest,
    compare_cv,
    corrected_ttest,
    granulated_kendall,
    holm,
    kendall_tau,
    paired_ttest,
)

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


# --- scikit-learn gallery "Statistical comparison of models using grid search" -----------------------
# The gallery's own code (make_moons, SVC kernels, 10 x 10 repeated stratified k-fold, roc_auc) and its
# own corrected_std / compute_corrected_ttest / scipy.stats.t posterior, written here as the reference.
# The page prints (3 decimals): corrected t 0.750, p 0.227 (one-sided); uncorrected t 2.611, p 0.005;
# P(rbf better than linear) 0.773; with ROPE [-0.01, 0.01] P(practically equivalent) 0.432.


def _gallery_corrected_std(differences: np.ndarray, n_train: int, n_test: int) -> float:
    kr = len(differences)
    corrected_var = np.var(differences, ddof=1) * (1 / kr + n_test / n_train)
    return float(np.sqrt(corrected_var))


def _gallery_compute_corrected_ttest(
    differences: np.ndarray, df: int, n_train: int, n_test: int
) -> tuple[float, float]:
    mean = np.mean(differences)
    std = _gallery_corrected_std(differences, n_train, n_test)
    t_stat = mean / std
    p_val = sps.t.sf(np.abs(t_stat), df)  # right-tailed t-test
    return float(t_stat), float(p_val)


@pytest.fixture(scope="module")
def gallery() -> dict[str, object]:
    import pandas as pd
    from sklearn.datasets import make_moons
    from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold
    from sklearn.svm import SVC

    X, y = make_moons(noise=0.352, random_state=1, n_samples=100)
    param_grid = [{"kernel": ["linear"]}, {"kernel": ["poly"], "degree": [2, 3]}, {"kernel": ["rbf"]}]
    cv = RepeatedStratifiedKFold(n_splits=10, n_repeats=10, random_state=0)
    search = GridSearchCV(estimator=SVC(random_state=0), param_grid=param_grid, scoring="roc_auc", cv=cv)
    search.fit(X, y)
    results_df = pd.DataFrame(search.cv_results_).sort_values(by=["rank_test_score"])
    results_df = results_df.set_index(
        results_df["params"].apply(lambda x: "_".join(str(val) for val in x.values()))
    ).rename_axis("kernel")
    model_scores = results_df.filter(like="split", axis=1)
    first_split = next(cv.split(X, y))
    return {
        "names": list(model_scores.index[:2]),
        "model_1": model_scores.iloc[0].to_numpy(dtype=float),
        "model_2": model_scores.iloc[1].to_numpy(dtype=float),
        "n_train": len(first_split[0]),
        "n_test": len(first_split[1]),
    }


def test_gallery_setup_is_the_published_one(gallery: dict) -> None:
    assert gallery["names"] == ["rbf", "linear"]
    assert (gallery["n_train"], gallery["n_test"]) == (90, 10)
    assert len(gallery["model_1"]) == 100  # r * k = 10 * 10 folds, all used


def test_corrected_ttest_reproduces_the_gallery(gallery: dict) -> None:
    m1, m2, n_train, n_test = gallery["model_1"], gallery["model_2"], gallery["n_train"], gallery["n_test"]
    differences = m1 - m2
    t_ref, p_ref = _gallery_compute_corrected_ttest(differences, len(differences) - 1, n_train, n_test)
    res = corrected_ttest(m1, m2, n_train=n_train, n_test=n_test, alternative="greater", n_repeats=10)
    assert res.t == pytest.approx(t_ref, rel=1e-12, abs=1e-12)
    assert res.p_value == pytest.approx(p_ref, rel=1e-12, abs=1e-12)
    assert (round(res.t, 3), round(res.p_value, 3)) == (0.750, 0.227)
    assert res.n == 100 and res.df == 99 and res.test_train_ratio == pytest.approx(10 / 90, rel=1e-15)
    two = corrected_ttest(m1, m2, n_train=n_train, n_test=n_test, n_repeats=10)
    assert two.p_value == pytest.approx(2 * p_ref, rel=1e-12)


def test_paired_ttest_reproduces_the_gallerys_uncorrected_test(gallery: dict) -> None:
    m1, m2 = gallery["model_1"], gallery["model_2"]
    differences = m1 - m2
    n = len(differences)
    t_ref = np.mean(differences) / np.sqrt(np.var(differences, ddof=1) / n)
    p_ref = sps.t.sf(np.abs(t_ref), n - 1)
    res = paired_ttest(m1, m2, alternative="greater")
    assert res.t == pytest.approx(t_ref, rel=1e-12) and res.p_value == pytest.approx(p_ref, rel=1e-12)
    assert (round(res.t, 3), round(res.p_value, 3)) == (2.611, 0.005)
    corrected = corrected_ttest(m1, m2, n_train=gallery["n_train"], n_test=gallery["n_test"], alternative="greater")
    assert res.p_value < 0.05 < corrected.p_value  # "significant" only without the correction


@pytest.mark.parametrize(("rope", "published"), [
    (0.0, {"p_above": 0.773, "p_below": 0.227, "p_rope": 0.0}),
    (0.01, {"p_rope": 0.432}),
])
def test_bayesian_correlated_ttest_reproduces_the_gallery(gallery: dict, rope: float, published: dict) -> None:
    m1, m2, n_train, n_test = gallery["model_1"], gallery["model_2"], gallery["n_train"], gallery["n_test"]
    differences = m1 - m2
    df = len(differences) - 1
    t_post = sps.t(df, loc=np.mean(differences), scale=_gallery_corrected_std(differences, n_train, n_test))
    res = bayesian_correlated_ttest(m1, m2, n_train=n_train, n_test=n_test, rope=rope, n_repeats=10)
    assert res.p_below == pytest.approx(t_post.cdf(-rope), rel=1e-12, abs=1e-12)
    assert res.p_above == pytest.approx(1 - t_post.cdf(rope), rel=1e-12, abs=1e-12)
    assert res.p_rope == pytest.approx(t_post.cdf(rope) - t_post.cdf(-rope), rel=1e-12, abs=1e-12)
    assert res.mean == pytest.approx(np.mean(differences), rel=1e-12)
    assert res.scale == pytest.approx(t_post.std() * math.sqrt((df - 2) / df), rel=1e-12)
    assert (res.df, res.n, res.rope) == (99, 100, rope)
    assert {k: round(getattr(res, k), 3) for k in published} == published


# --- baycomp.CorrelatedTTest: probs(x, y) works on y - x, so probs(b, a) = (p_below, p_rope, p_above) ---


def _baycomp_cases() -> list[tuple[np.ndarray, np.ndarray, int, int, float]]:
    rng = np.random.default_rng(3)
    cases = []
    for k, r, shift, rope in [(10, 1, 0.01, 0.01), (10, 10, 0.002, 0.005), (5, 3, -0.02, 0.01), (3, 2, 0.0, 0.0)]:
        a = rng.normal(0.8, 0.03, size=k * r)
        cases.append((a, a - shift + rng.normal(0, 0.02, size=k * r), k, r, rope))
    return cases


@pytest.mark.parametrize(("a", "b", "k", "runs", "rope"), _baycomp_cases())
def test_bayesian_correlated_ttest_matches_baycomp(
    a: np.ndarray, b: np.ndarray, k: int, runs: int, rope: float
) -> None:
    baycomp = pytest.importorskip("baycomp")
    # baycomp's ratio is 1 / (k - 1): a k-fold split of N rows has n_test / n_train = (N / k) / (N - N / k).
    res = bayesian_correlated_ttest(a, b, n_train=k - 1, n_test=1, rope=rope, n_repeats=runs)
    ref = baycomp.CorrelatedTTest.probs(b, a, rope=rope, runs=runs)
    ours = (res.p_below, res.p_rope, res.p_above) if rope > 0 else (res.p_below, res.p_above)
    assert ours == pytest.approx(tuple(ref), abs=1e-9)
    flipped = baycomp.CorrelatedTTest.probs(a, b, rope=rope, runs=runs)  # a - b reversed
    assert ours[::-1] == pytest.approx(tuple(flipped), abs=1e-9)


def test_bayesian_correlated_ttest_matches_baycomp_on_the_gallery(gallery: dict) -> None:
    baycomp = pytest.importorskip("baycomp")
    m1, m2 = gallery["model_1"], gallery["model_2"]
    for rope in (0.0, 0.01):
        res = bayesian_correlated_ttest(m1, m2, n_train=gallery["n_train"], n_test=gallery["n_test"], rope=rope,
                                        n_repeats=10)
        ref = baycomp.CorrelatedTTest.probs(m2, m1, rope=rope, runs=10)
        ours = (res.p_below, res.p_rope, res.p_above) if rope > 0 else (res.p_below, res.p_above)
        assert ours == pytest.approx(tuple(ref), abs=1e-9)


# --- repeated k-fold, zero variance, ROPE 0, errors -----------------------------------------------------


def test_repeated_kfold_uses_all_r_times_k_differences_with_the_one_fold_ratio() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.02, size=30), rng.normal(0.79, 0.02, size=30)  # 3 x 10-fold
    d = a - b
    se = math.sqrt((1 / 30 + 10 / 90) * d.var(ddof=1))
    freq = corrected_ttest(a, b, n_train=90, n_test=10, n_repeats=3)
    bayes = bayesian_correlated_ttest(a, b, n_train=90, n_test=10, rope=0.0, n_repeats=3)
    assert freq.n == bayes.n == 30 and freq.df == bayes.df == 29
    assert freq.t == pytest.approx(d.mean() / se, rel=1e-12)
    assert bayes.scale == pytest.approx(se, rel=1e-12)
    # r is only checked: the numbers are those of the 30 differences, whatever r divides them.
    assert corrected_ttest(a, b, n_train=90, n_test=10) == freq
    assert bayesian_correlated_ttest(a, b, n_train=90, n_test=10, rope=0.0) == bayes
    # same t on both sides: P(mean d > 0) is the one-sided p of "less", P(mean d < 0) that of "greater"
    greater = corrected_ttest(a, b, n_train=90, n_test=10, alternative="greater")
    assert bayes.p_below == pytest.approx(greater.p_value, rel=1e-12)


@pytest.mark.parametrize(("shift", "rope", "expected"), [
    (0.25, 0.1, (0.0, 0.0, 1.0)),   # a better by 0.25 on every fold
    (-0.25, 0.1, (1.0, 0.0, 0.0)),
    (0.25, 0.25, (0.0, 1.0, 0.0)),  # on the ROPE's edge: inside (closed interval)
    (0.0, 0.0, (0.0, 1.0, 0.0)),    # identical scores, no ROPE: the point mass sits on [0, 0]
    (0.25, 0.0, (0.0, 0.0, 1.0)),
])
def test_zero_variance_is_a_point_mass(shift: float, rope: float, expected: tuple[float, float, float]) -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    res = bayesian_correlated_ttest(a, a - shift, n_train=3, n_test=1, rope=rope)
    assert (res.p_below, res.p_rope, res.p_above) == expected
    assert res.scale == 0.0 and res.mean == shift


def test_rope_zero_leaves_nothing_in_the_rope() -> None:
    res = bayesian_correlated_ttest(A, B, n_train=90, n_test=10, rope=0)
    assert res.p_rope == 0.0
    assert res.p_below + res.p_above == pytest.approx(1.0, abs=1e-15)
    wide = bayesian_correlated_ttest(A, B, n_train=90, n_test=10, rope=0.01)
    assert wide.p_below + wide.p_rope + wide.p_above == pytest.approx(1.0, abs=1e-15)
    assert wide.p_above < res.p_above and wide.p_rope > 0


@pytest.mark.parametrize(("kw", "match"), [
    ({"rope": -0.01}, "rope: got -0.01"),
    ({"rope": float("nan")}, "rope: got nan"),
    ({"rope": "0.01"}, "rope: got '0.01'"),
    ({"n_repeats": 3}, "n_repeats: got 3 for 10 folds"),
    ({"n_repeats": 0}, "n_repeats: got 0"),
    ({"n_repeats": 2.0}, "n_repeats: got 2.0"),
    ({"n_train": 0}, "positive"),
    ({"n_test": float("inf")}, "positive"),
])
def test_bayesian_correlated_ttest_errors(kw: dict, match: str) -> None:
    args = {"n_train": 90.0, "n_test": 10.0, "rope": 0.01, **kw}
    with pytest.raises(ValueError, match=match):
        bayesian_correlated_ttest(A, B, **args)


@pytest.mark.parametrize(("a", "b", "match"), [
    ([1.0, 2.0], [1.0, 2.0, 3.0], "paired"),
    ([[1.0, 2.0]], [[1.0, 2.0]], "paired"),
    ([1.0], [1.0], "at least 2"),
    ([1.0, float("inf")], [1.0, 2.0], "finite"),
])
def test_bayesian_correlated_ttest_checks_the_scores(a: list, b: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bayesian_correlated_ttest(a, b, n_train=9, n_test=1, rope=0.0)


def test_corrected_ttest_checks_n_repeats() -> None:
    with pytest.raises(ValueError, match="n_repeats: got 4 for 10 folds"):
        corrected_ttest(A, B, n_train=90, n_test=10, n_repeats=4)


# --- plain paired t-test -------------------------------------------------------------------------------


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_ttest_matches_scipy(alternative: str) -> None:
    res = paired_ttest(A, B, alternative=alternative)
    ref = sps.ttest_rel(A, B, alternative=alternative)
    assert res.t == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    if alternative == "two-sided":
        ci = ref.confidence_interval(0.95)
        assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert res.test_train_ratio == 0.0 and res.df == 9


def test_paired_ttest_is_overconfident_beside_the_corrected_one() -> None:
    plain = paired_ttest(A, B)
    corrected = corrected_ttest(A, B, n_train=90, n_test=10)
    assert plain.mean_diff == corrected.mean_diff and plain.std_diff == corrected.std_diff
    assert plain.p_value < corrected.p_value
    # the correction widens the interval by sqrt((1/n + n_test/n_train) / (1/n)) = sqrt(1 + 10 * 10/90)
    width = (corrected.ci_high - corrected.ci_low) / (plain.ci_high - plain.ci_low)
    assert width == pytest.approx(math.sqrt(1 + 10 * 10 / 90), rel=1e-12)


# --- Holm-Bonferroni -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "expected"), [
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    # 3*0.02=0.06, 2*0.3=0.6, 1*0.9=0.9
    ([0.3, 0.9, 0.02], [0.6, 0.9, 0.06]),
    # 2*0.5=1.0, then max(1.0, 0.6): monotone and capped at 1
    ([0.6, 0.5], [1.0, 1.0]),
    # ties: 2*0.01=0.02, max(0.02, 0.01)
    ([0.01, 0.01], [0.02, 0.02]),
    ([0.2], [0.2]),
    ([], []),
    ([0.0, 1.0], [0.0, 1.0]),
])
def test_holm_by_hand(p: list[float], expected: list[float]) -> None:
    out = holm(p)
    assert isinstance(out, list) and all(isinstance(v, float) for v in out)
    assert out == pytest.approx(expected, abs=1e-15)


def test_holm_properties() -> None:
    p = np.random.default_rng(2).uniform(0, 0.2, size=25)
    adj = np.array(holm(p))
    order = np.argsort(p)
    assert np.all(adj >= p) and np.all(adj <= 1.0)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj <= np.minimum(1.0, len(p) * p) + 1e-15)  # never above Bonferroni


@pytest.mark.parametrize(("p", "match"), [
    ([0.1, 1.2], "in \\[0, 1\\]"),
    ([0.1, -0.1], "in \\[0, 1\\]"),
    ([0.1, float("nan")], "in \\[0, 1\\]"),
    ([[0.1, 0.2]], "1-d"),
])
def test_holm_errors(p: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        holm(p)
