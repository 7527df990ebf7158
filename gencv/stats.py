"""Statistics for comparing CV results and judging generalization measures.

- `corrected_ttest`: Nadeau & Bengio (2003) corrected resampled t-test for two models scored on the
  same CV folds (the plain paired t-test is far too confident because training sets overlap).
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
    "GranulatedTau",
    "TTestResult",
    "compare_cv",
    "corrected_ttest",
    "granulated_kendall",
    "kendall_tau",
]

Alternative = Literal["two-sided", "greater", "less"]


@dataclass(frozen=True)
class TTestResult:
    """Outcome of the corrected resampled t-test on paired fold differences a - b."""

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
) -> TTestResult:
    """Nadeau & Bengio's corrected resampled t-test of mean(a - b) = 0 over paired CV folds.

    The variance of the mean difference is inflated from sigma^2 / J to
    (1 / J + n_test / n_train) * sigma^2, J folds, to account for the overlap of training sets.

    Parameters
    ----------
    a, b : per-fold scores of the two models on the same folds (same order).
    n_train, n_test : training and held-out size of one fold (mean over folds if they vary).
    alternative : "greater" tests mean(a - b) > 0, "less" mean(a - b) < 0.
    """
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.shape(a) != np.shape(b) or x.ndim != 1:
        raise ValueError(f"a and b must be 1-d and paired fold by fold; got shapes {np.shape(a)} and {np.shape(b)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("a and b must be finite on every fold; drop failed folds from both first")
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got n_train={n_train}, n_test={n_test}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative: got {alternative!r}; use 'two-sided', 'greater' or 'less'")
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 paired folds, got {n}")
    ratio = float(n_test) / float(n_train)
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
