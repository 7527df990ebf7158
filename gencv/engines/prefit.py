"""An engine that hands back fits trained beforehand: one configuration's members of a population."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gencv.engines.base import EpochCallback, FoldFit, FoldStartCallback
from gencv.splits import Fold

__all__ = ["PrefitEngine"]


class PrefitEngine:
    """`fit_folds` that yields fits already trained (by `BatchedEngine.fit_population`), so that
    `cross_validate` scores, records and reports them exactly as it does its own engine's.

    The folds asked for must be the folds the fits were trained on (same index and training rows);
    the fold-start and per-epoch callbacks are replayed from each fit's history.
    """

    def __init__(self, fits: Sequence[FoldFit], name: str = "batched") -> None:
        self.name = name
        self.fits = {f.fold.index: f for f in fits}
        #: (epoch, loss, median) when population pruning stopped these fits (`fit_population(prune="median")`)
        self.pruned = next((p for f in fits if (p := getattr(f.estimator, "population_pruned_", None))), None)

    def fit_folds(self, estimator: Any, X: np.ndarray, y: np.ndarray, folds: Sequence[Fold], seeds: Sequence[int],
                  *, groups: np.ndarray | None = None, eval_on_valid: bool = True,
                  on_fold_start: FoldStartCallback | None = None,
                  on_epoch: EpochCallback | None = None) -> Iterator[FoldFit]:
        for fold, seed in zip(folds, seeds):
            fit = self.fits.get(fold.index)
            if fit is None or fit.seed != seed or not np.array_equal(fit.fold.train, fold.train):
                raise ValueError(f"fold {fold.index}: no fit trained on these rows with seed {seed}; the population "
                                 "was trained on other folds")
        return self._replay(list(folds), on_fold_start, on_epoch)

    def _replay(self, folds: list[Fold], on_fold_start: FoldStartCallback | None,
                on_epoch: EpochCallback | None) -> Iterator[FoldFit]:
        for fold in folds:
            fit = self.fits[fold.index]
            if on_fold_start is not None:
                on_fold_start(fold.index)
            if on_epoch is not None and fit.estimator is not None:
                for row in getattr(getattr(fit.estimator, "net_", None), "history", []):
                    on_epoch(fold.index, int(row["epoch"]), dict(row))
            yield fit
