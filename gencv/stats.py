"""Statistics for comparing CV results and judging generalization measures.

- `corrected_ttest`: Nadeau & Bengio (2003) corrected resampled t-test for two models scored on the
  same CV folds (the plain paired t-test is far too confident because training sets overlap).
- `bayesian_correlated_ttest`: Benavoli, Corani, Demšar & Zaffalon (2017), "Time for a change", the
  correlated Bayesian t-test: posterior probabilities that a is worse, practically equivalent (ROPE)
  or better than b.
- `paired_ttest`: the plain paired t-test, only to show beside the corrected one how over-confident it is.
- `holm`: Holm-Bonferroni adjusted p-values for several comparisons.
- `kendall_tau`: rank correlation between a measure and the generalization gap.
- `granulated_kendall`: Jiang et al. (2020), "Fantastic generalization measures and where to find
  them": the rank correlation when only one hyperparameter changes at a time, averaged over the
  settings of the others; tells which hyperparameter's effect on the gap a measure captures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

__all__ = [
    "BayesianTTestResult",
    "GranulatedTau",
    "TTestResult",
    "bayesian_correlated_ttest",
    "compare_cv",
    "corrected_ttest",
    "granulated_kendall",
    "holm",
    "kendall_tau",
    "paired_ttest",
]

Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True)
class TTestResult:
    """Outcome of a t-test on paired fold differences a - b (test_train_ratio 0 for the plain test)."""

    mean_diff: float
    std_diff: float
    t: float
    df: int
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    test_train_ratio: float


def corrected_ttest(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_train: float,
    n_test: float,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
    n_repeats: int = 1,
) -> TTestResult:
    """Nadeau & Bengio's corrected resampled t-test of mean(a - b) = 0 over paired CV folds.

    The variance of the mean difference is inflated from sigma^2 / n to
    (1 / n + n_test / n_train) * sigma^2 to account for the overlap of training sets; df = n - 1.
    Reproduces the corrected t and p of scikit-learn's gallery "Statistical comparison of models
    using grid search" (t = 0.750; its one-sided p = 0.227 is our ``alternative="greater"``).

    Parameters
    ----------
    a, b : per-fold scores of the two models on the same folds (same order).
    n_train, n_test : training and held-out size of one fold (mean over folds if they vary).
    alternative : "greater" tests mean(a - b) > 0, "less" mean(a - b) < 0.
    n_repeats : r for r-times repeated k-fold CV. All n = r * k differences enter the test, with
        the ratio n_test / n_train of one fold (Bouckaert & Frank 2004, as in the gallery); r is
        only checked (n must be a multiple of it), it does not change the numbers.
    """
    x = _paired_differences(a, b, n_repeats)
    ratio = _ratio(n_train, n_test)
    return _ttest(x, ratio, alternative, confidence)


def paired_ttest(
    a: Sequence[float],
    b: Sequence[float],
    *,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
) -> TTestResult:
    """Plain paired t-test of mean(a - b) = 0 (scipy's ``ttest_rel``); shown only beside the corrected one.

    On CV folds it is over-confident: training sets overlap, so the fold scores are correlated and
    sigma^2 / n underestimates the variance of the mean (the gallery's uncorrected t = 2.611,
    one-sided p = 0.005, against the corrected t = 0.750, p = 0.227).
    """
    return _ttest(_paired_differences(a, b, 1), 0.0, alternative, confidence)


def _paired_differences(a: Sequence[float], b: Sequence[float], n_repeats: int) -> np.ndarray:
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float) if np.shape(a) == np.shape(b) else None
    if x is None or x.ndim != 1:
        raise ValueError(f"a and b must be 1-d and paired fold by fold; got shapes {np.shape(a)} and {np.shape(b)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("a and b must be finite on every fold; drop failed folds from both first")
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 paired folds, got {n}")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, (int, np.integer)) or n_repeats < 1:
        raise ValueError(f"n_repeats: got {n_repeats!r}; use a positive integer (1 for plain k-fold)")
    if n % n_repeats != 0:
        raise ValueError(f"n_repeats: got {n_repeats} for {n} folds; a and b must hold n_repeats * k scores, "
                         "all folds of every repetition")
    return x


def _ratio(n_train: float, n_test: float) -> float:
    if not (np.isfinite(n_train) and np.isfinite(n_test)) or n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got n_train={n_train}, n_test={n_test}; "
                         "pass the sizes of one fold")
    return float(n_test) / float(n_train)


def _ttest(x: np.ndarray, ratio: float, alternative: Alternative, confidence: float) -> TTestResult:
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative: got {alternative!r}; use 'two-sided', 'greater' or 'less'")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: got {confidence!r}; use a level in (0, 1) such as 0.95")
    n = len(x)
    mean = float(x.mean())
    std = float(x.std(ddof=1))
    df = n - 1
    se = math.sqrt((1.0 / n + ratio) * std**2)
    if se == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / se
    if alternative == "two-sided":
        p = float(2 * sps.t.sf(abs(t), df))
    elif alternative == "greater":
        p = float(sps.t.sf(t, df))
    else:
        p = float(sps.t.cdf(t, df))
    half = float(sps.t.ppf(0.5 + confidence / 2, df) * se)
    return TTestResult(mean, std, float(t), df, min(p, 1.0), mean - half, mean + half, n, ratio)


@dataclass(frozen=True)
class BayesianTTestResult:
    """Posterior of the mean fold difference a - b: Student t(df, mean, scale), split at -rope and rope."""

    p_below: float
    p_rope: float
    p_above: float
    mean: float
    scale: float
    df: int
    rope: float
    n: int


def bayesian_correlated_ttest(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_train: float,
    n_test: float,
    rope: float,
    n_repeats: int = 1,
) -> BayesianTTestResult:
    """Benavoli et al. (2017) correlated Bayesian t-test on paired CV fold scores, d = a - b.

    The posterior of mean(d) is Student t with df = n - 1, location mean(d) and scale
    sqrt((1 / n + n_test / n_train) * var(d, ddof=1)) (the Nadeau-Bengio correction).
    p_below = P(mean d < -rope), p_rope = P(-rope <= mean d <= rope), p_above = P(mean d > rope);
    with higher-is-better scores p_above is "a is practically better". Reproduces scikit-learn's
    gallery "Statistical comparison of models using grid search" (rope 0: P(rbf better than
    linear) = 0.773; rope 0.01: p_rope = 0.432) and ``baycomp.CorrelatedTTest.probs(b, a, rope, runs)``,
    which returns (p_below, p_rope, p_above) for its y - x = a - b (two values when rope is 0).

    Parameters
    ----------
    a, b : per-fold scores of the two models on the same folds (same order).
    n_train, n_test : training and held-out size of one fold (mean over folds if they vary).
    rope : half-width of the region of practical equivalence, in score units; 0 for none
        (then p_rope = 0 and p_below + p_above = 1).
    n_repeats : r for r-times repeated k-fold CV; all n = r * k differences are used with the ratio
        of one fold, as in `corrected_ttest`. Only checked (n must be a multiple of it); unlike
        baycomp's ``runs`` it does not set the ratio, which is n_test / n_train.

    When every difference is the same (variance 0) the posterior is a point mass at mean(d): each
    probability is 0 or 1, and a point inside the closed interval [-rope, rope] counts as in the
    ROPE, also for rope = 0 and mean 0 (baycomp splits that one case 0.5 / 0.5).
    """
    x = _paired_differences(a, b, n_repeats)
    ratio = _ratio(n_train, n_test)
    if isinstance(rope, bool) or not isinstance(rope, (int, float, np.integer, np.floating)) \
            or not math.isfinite(rope) or rope < 0:
        raise ValueError(f"rope: got {rope!r}; use a non-negative half-width in score units (0 for no ROPE)")
    rope = float(rope)
    n = len(x)
    df = n - 1
    mean = float(x.mean())
    scale = math.sqrt((1.0 / n + ratio) * float(x.var(ddof=1)))
    if scale == 0.0:
        below = float(mean < -rope)
        above = float(mean > rope)
        inside = 1.0 - below - above
    else:
        below = float(sps.t.cdf(-rope, df, loc=mean, scale=scale))
        above = float(sps.t.sf(rope, df, loc=mean, scale=scale))
        inside = 0.0 if rope == 0.0 else max(0.0, 1.0 - below - above)
    return BayesianTTestResult(below, inside, above, mean, scale, df, rope, n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    With p sorted ascending, adjusted p_(i) = max over j <= i of min(1, (m - j + 1) * p_(j)), m tests:
    monotone in p, capped at 1, never below the raw value. Reject where adjusted <= alpha.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a 1-d sequence; got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p_values must lie in [0, 1]; got {p.tolist()}; drop failed comparisons first")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(v) for v in adjusted]


def compare_cv(a: Any, b: Any, *, split: str = "valid", alternative: Alternative = "two-sided") -> TTestResult:
    """Corrected t-test between two `CVResult`s measured on the same folds (primary metric of `a`).

    The difference is oriented so that positive means `a` is better (sign flipped for losses).
    """
    fa = {f.index: f for f in a.folds}
    fb = {f.index: f for f in b.folds}
    if set(fa) != set(fb):
        raise ValueError(f"the two CV results have different folds: {sorted(fa)} vs {sorted(fb)}; "
                         "compare results of the same spec.cv and seed")
    key = f"{split}_{a.metric}"
    idx = [i for i in sorted(fa) if fa[i].ok and fb[i].ok]
    for i in idx:
        if (fa[i].n_train, fa[i].n_valid) != (fb[i].n_train, fb[i].n_valid):
            raise ValueError(f"fold {i} has different sizes in the two results; they were not split the same way")
    va = np.array([fa[i].flat_metrics().get(key, np.nan) for i in idx])
    vb = np.array([fb[i].flat_metrics().get(key, np.nan) for i in idx])
    ok = np.isfinite(va) & np.isfinite(vb)
    sign = 1.0 if a.higher_is_better else -1.0
    n_train = float(np.mean([fa[i].n_train for i in idx])) if idx else 1.0
    n_test = float(np.mean([fa[i].n_valid for i in idx])) if idx else 1.0
    return corrected_ttest(sign * va[ok], sign * vb[ok], n_train=n_train, n_test=n_test, alternative=alternative)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Kendall's tau-b between x and y over pairs where both are finite: (tau, p-value, n).

    NaN tau when fewer than 3 pairs remain or either side is constant.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.shape} and {ya.shape}")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(len(xa))
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return float("nan"), float("nan"), n
    res = sps.kendalltau(xa, ya)
    return float(res.statistic), float(res.pvalue), n


@dataclass(frozen=True)
class GranulatedTau:
    """Granulated Kendall tau of one measure: per hyperparameter psi_i and their mean Psi."""

    per_param: dict[str, float]
    n_groups: dict[str, int]
    overall: float


def granulated_kendall(
    measure: Sequence[float],
    gap: Sequence[float],
    params: Mapping[str, Sequence[Any]],
) -> GranulatedTau:
    """Jiang et al. (2020) granulated Kendall coefficient.

    For each hyperparameter i, group the points whose *other* hyperparameters are equal; within each
    group (at least 2 points, i varying) compute tau(measure, gap); psi_i is the mean over groups.
    Psi is the mean of the defined psi_i. Values in `params` are compared for equality, so bin
    continuous hyperparameters first (see `gencv.tuning`). psi_i is NaN when no group qualifies.
    """
    m = np.asarray(measure, dtype=float)
    g = np.asarray(gap, dtype=float)
    names = list(params)
    for name in names:
        if len(params[name]) != len(m):
            raise ValueError(f"params[{name!r}] has {len(params[name])} values, measure has {len(m)}")
    if len(g) != len(m):
        raise ValueError(f"gap has {len(g)} values, measure has {len(m)}")
    cols = {name: [_hashable(v) for v in params[name]] for name in names}
    per: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name in names:
        others = [o for o in names if o != name]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k in range(len(m)):
            groups.setdefault(tuple(cols[o][k] for o in others), []).append(k)
        taus = []
        for members in groups.values():
            if len(members) < 2 or len({cols[name][k] for k in members}) < 2:
                continue
            tau = _tau_small(m[members], g[members])
            if np.isfinite(tau):
                taus.append(tau)
        per[name] = float(np.mean(taus)) if taus else float("nan")
        counts[name] = len(taus)
    defined = [v for v in per.values() if np.isfinite(v)]
    return GranulatedTau(per, counts, float(np.mean(defined)) if defined else float("nan"))


def _tau_small(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b that also works on two points (scipy's is fine there, but guard constants)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(sps.kendalltau(x, y).statistic)


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v
