"""Better than chance? The same cross-validation repeated with the target permuted (a permutation test).

As scikit-learn's `permutation_test_score` (Ojala & Garriga 2010, test 1): the CV score of the true
labels is compared with the CV scores of N label permutations, and the p-value is (C + 1) / (N + 1),
C the permuted scores at least as good as the true one. It tests whether the network found any
dependence between features and target at all; a small p-value says nothing about how good it is.

Choices, and where they differ from scikit-learn:

- **Same folds.** The folds are built once from the unpermuted data (`runner.prepare`) and every
  permutation is cross-validated on them; only the labels move. scikit-learn permutes y and then splits
  with the same cv object, so a stratified splitter re-stratifies on the permuted labels. Here a
  stratified scheme keeps its (true-label) folds: each permuted fold's class counts follow the
  hypergeometric draw of a random permutation instead of being balanced exactly. The difference to the
  null is small, and fixed folds make the true and permuted scores paired on the same row sets.
  Group folds keep their class counts exactly, since labels move only inside groups (below).
- **Groups.** With `data.group` the labels are permuted only among rows of the same group, as
  scikit-learn does with `groups`: each group keeps its label multiset.
- **Only the CV rows.** The held-out test set is neither permuted nor scored.
- **Seeds.** Permutation i draws from `derive_seed(seed, "permutation", i)`; the networks are trained with
  the run's own fold seeds, so the labels are the only thing that differs from the true CV.
- **Light.** No refit, no measures, no test-set scores, nothing tracked per permutation (NullTracker):
  the parent run gets the summary (p-value, N, null mean), the scores CSV and the null's histogram.
- **Not for time series.** Permuting a series destroys its order: the permuted data are not exchangeable
  with the true ones, so the null is wrong. Refused; use a block bootstrap or compare with a baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gencv.cv import cross_validate
from gencv.errors import GencvError
from gencv.metrics import METRICS
from gencv.seeds import derive_seed
from gencv.tracking import NullTracker

if TYPE_CHECKING:
    from gencv.cv import CVResult
    from gencv.data import Dataset
    from gencv.runner import Prepared, RunOutcome
    from gencv.spec import Experiment
    from gencv.tracking import Tracker

__all__ = ["PermutationError", "PermutationResult", "PermutationTest", "check_permutable", "permutation_null", "permutation_p_value",
           "permutation_test", "permute_labels", "plot_permutation_null"]

log = logging.getLogger(__name__)


class PermutationError(GencvError, ValueError):
    """A permutation test that cannot be run on this data or with these settings."""


@dataclass(frozen=True)
class PermutationResult:
    """The true CV score, the scores of the permuted CVs, and the p-value."""

    metric: str
    higher_is_better: bool
    true_score: float
    null_scores: np.ndarray  # one mean held-out score per permutation (NaN where every fold failed)
    p_value: float
    grouped: bool = False  # labels permuted within groups

    @property
    def n_permutations(self) -> int:
        return len(self.null_scores)

    @property
    def null_mean(self) -> float:
        finite = self.null_scores[np.isfinite(self.null_scores)]
        return float(finite.mean()) if len(finite) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"permutation": np.arange(self.n_permutations), f"valid_{self.metric}": self.null_scores})

    def metrics(self) -> dict[str, float]:
        """Logged on the parent run."""
        return {"permutation_p_value": self.p_value, "permutation_n": float(self.n_permutations),
                "permutation_null_mean": self.null_mean}

    def write_artifacts(self, directory: Path) -> None:
        """`permutation_scores.csv` and `plots/permutation_null.png` under `directory`."""
        self.to_frame().to_csv(directory / "permutation_scores.csv", index=False)
        (directory / "plots").mkdir(exist_ok=True)
        plot_permutation_null(self, directory / "plots" / "permutation_null.png")


@dataclass(frozen=True)
class PermutationTest:
    """`run_experiment(after_cv=[PermutationTest(n)])`: n permuted CVs on the run's folds (runner.AfterCV)."""

    n_permutations: int
    name: str = "permutation"

    def check(self, prep: Prepared) -> None:
        if self.n_permutations < 1:
            raise PermutationError(f"--permutations: got {self.n_permutations}; use a positive count "
                                   "(99 or more for a p-value that can reach 0.01)")
        check_permutable(prep.dataset)

    def __call__(self, prep: Prepared, result: CVResult) -> PermutationResult:
        return permutation_null(prep, self.n_permutations, true_score=result.mean_score("valid"))


def permutation_p_value(true_score: float, null_scores: Sequence[float] | np.ndarray, *,
                        higher_is_better: bool) -> float:
    """(C + 1) / (N + 1), C the permuted scores at least as good as `true_score` (scikit-learn's
    `permutation_test_score` p-value). Non-finite permuted scores (a permuted CV whose folds all failed)
    are left out of both C and N."""
    null = np.asarray(null_scores, dtype=float)
    null = null[np.isfinite(null)]
    c = int(np.sum(null >= true_score)) if higher_is_better else int(np.sum(null <= true_score))
    return (c + 1) / (len(null) + 1)


def permute_labels(y: np.ndarray, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """A permuted copy of `y`; with `groups`, labels move only among rows of the same group."""
    if groups is None:
        return y[rng.permutation(len(y))]
    out = y.copy()
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = y[rng.permutation(rows)]
    return out


def check_permutable(ds: Dataset, field: str = "--permutations") -> None:
    """Raise unless the rows are exchangeable under the null (not a time series)."""
    if ds.is_time_series:
        raise PermutationError(
            f"{field}: data.source={ds.name!r} is a time series (data.time, lag windows or cv.kind=rolling); "
            "permuting the target destroys the series' order, so the permuted data are not exchangeable with "
            "the true ones and the null distribution would be wrong. Use a block bootstrap, or compare with a "
            "baseline model (`gencv compare`) instead")


def permutation_null(prep: Prepared, n_permutations: int, *, true_score: float,
                     on_permutation: Callable[[int, float], None] | None = None) -> PermutationResult:
    """Cross-validate `prep` once per permutation of its CV rows' target, on its folds; no tracking.

    `true_score`: the mean held-out score of the unpermuted CV on the same folds.
    `on_permutation(i, score)` is called after each permuted CV (progress).
    """
    if n_permutations < 1:
        raise PermutationError(f"--permutations: got {n_permutations}; use a positive count (99 or more "
                               "for a p-value that can reach 0.01)")
    exp, ds = prep.experiment, prep.dataset
    check_permutable(ds)
    rows = prep.cv_idx
    groups = None if ds.groups is None else ds.groups[rows]
    scores = np.full(n_permutations, np.nan)
    for i in range(n_permutations):
        rng = np.random.default_rng(derive_seed(exp.seed, "permutation", i))
        y = ds.y.copy()
        y[rows] = permute_labels(ds.y[rows], rng, groups)
        res = cross_validate(prep.estimator, ds.X, y, prep.folds, metric=exp.metric, seed=exp.seed,
                             tracker=NullTracker(), keep_estimators=False, groups=ds.groups, engine=exp.train.engine)
        scores[i] = res.mean_score("valid")
        log.info("permutation %d of %d: valid_%s %.4f", i + 1, n_permutations, exp.metric, scores[i])
        if on_permutation is not None:
            on_permutation(i, float(scores[i]))
    hib = METRICS[exp.metric].higher_is_better
    if not np.all(np.isfinite(scores)):
        log.warning("%d of %d permuted CVs had no successful fold; the p-value uses the others",
                    int(np.sum(~np.isfinite(scores))), n_permutations)
    return PermutationResult(exp.metric, hib, float(true_score), scores,
                             permutation_p_value(true_score, scores, higher_is_better=hib), grouped=groups is not None)


def plot_permutation_null(result: PermutationResult, path: str | Path) -> Path:
    """Histogram of the permuted CV scores with the true score as a vertical line."""
    from gencv.report import pyplot

    plt = pyplot()
    null = result.null_scores[np.isfinite(result.null_scores)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if len(null):
        ax.hist(null, bins=min(30, max(5, len(null) // 3)), color="tab:grey", alpha=0.8,
                label=f"permuted labels (N={len(null)})")
    ax.axvline(result.true_score, color="tab:red", linewidth=2, label=f"true labels: {result.true_score:.4f}")
    better = "higher" if result.higher_is_better else "lower"
    ax.set_xlabel(f"mean held-out {result.metric} over folds ({better} is better)")
    ax.set_ylabel("permutations")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    how = "within groups" if result.grouped else "all CV rows"
    ax.set_title(f"Permutation test ({how}, same folds): p = {result.p_value:.4g}")
    ax.legend(loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def permutation_test(exp: Experiment, n_permutations: int, *, tracker: Tracker | None = None,
                     prepared: Prepared | None = None, **run_options: Any) -> RunOutcome:
    """`gencv run --permutations N`: the run, then N permuted CVs on its folds; `outcome.permutation` holds
    the result, logged on the parent run. `run_options` go to `run_experiment` (refit, progress, ...)."""
    from gencv.runner import run_experiment

    after = [*run_options.pop("after_cv", ()), PermutationTest(n_permutations)]
    return run_experiment(exp, tracker=tracker, prepared=prepared, after_cv=after, **run_options)
