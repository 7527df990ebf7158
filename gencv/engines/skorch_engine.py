"""The reference engine: one cloned skorch net per fold, fitted one fold after another."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone

from gencv.engines.base import EpochCallback, FoldFit, FoldStartCallback
from gencv.splits import Fold

__all__ = ["SkorchEngine"]

log = logging.getLogger(__name__)


class SkorchEngine:
    """scikit-learn semantics: `clone(estimator).set_params(random_state=...)`, then `fit` on the fold's training rows."""

    name = "skorch"

    def fit_folds(
        self,
        estimator: Any,
        X: np.ndarray,
        y: np.ndarray,
        folds: Sequence[Fold],
        seeds: Sequence[int],
        *,
        groups: np.ndarray | None = None,
        eval_on_valid: bool = True,
        on_fold_start: FoldStartCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> Iterator[FoldFit]:
        if len(folds) != len(seeds):
            raise ValueError(f"got {len(folds)} folds but {len(seeds)} seeds; pass one seed per fold")
        for fold, seed in zip(folds, seeds):
            if on_fold_start is not None:
                on_fold_start(fold.index)
            yield self._fit_one(estimator, X, y, groups, fold, seed, eval_on_valid, on_epoch)

    @staticmethod
    def _fit_one(estimator: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fold: Fold, seed: int,
                 eval_on_valid: bool,
                 on_epoch: EpochCallback | None) -> FoldFit:
        est = clone(estimator).set_params(random_state=seed)
        index = fold.index

        def epoch_end(epoch: int, row: dict[str, Any]) -> None:
            if on_epoch is not None:
                on_epoch(index, epoch, row)

        X_eval, y_eval = (X[fold.valid], y[fold.valid]) if eval_on_valid else (None, None)
        t0 = time.perf_counter()
        try:
            est.fit(X[fold.train], y[fold.train], X_eval=X_eval, y_eval=y_eval, on_epoch=epoch_end,
                    groups=None if groups is None else groups[fold.train])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a fold's failure is reported, the other folds go on
            log.debug("fold %d failed:\n%s", index, traceback.format_exc())
            return FoldFit(fold, seed, None, exc, time.perf_counter() - t0)
        return FoldFit(fold, seed, est, None, time.perf_counter() - t0)
