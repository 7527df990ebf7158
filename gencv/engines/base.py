"""The engine seam: what a training engine is given and what it must hand back, per fold.

An engine fits the folds of one configuration. Whatever it does inside (one skorch net per fold,
or all folds as one stacked model), it yields one `FoldFit` per fold, holding a fitted model with
the `FittedModel` interface below. Cross-validation, measures, refits, network pruning and
transfer consume only that interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gencv.splits import Fold

__all__ = ["Engine", "EpochCallback", "FittedModel", "FoldFit", "FoldStartCallback"]


@runtime_checkable
class FittedModel(Protocol):
    """A network fitted on one fold, with its preprocessing; the same interface from every engine."""

    task: str  # "classification" | "regression"
    n_classes: int  # the network's outputs for classification (labels 0..n_classes-1 in gencv's runs)
    epochs_run_: int  # epochs trained
    best_epoch_: int  # the epoch early stopping judged best (= epochs_run_ without early stopping)
    inner_valid_positions_: np.ndarray | None  # positions in the training fold of the early-stopping split
    fit_positions_: np.ndarray | None  # positions in the training fold the network was fitted on (None: all)
    init_state_: dict[str, Any] | None  # the network's weights before training
    preprocess_: Any  # the fitted feature preprocessing (a scikit-learn transformer)

    @property
    def module_(self) -> Any: ...  # the torch network, on preprocessed inputs
    def predict(self, X: np.ndarray) -> np.ndarray: ...
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...  # classification only
    def loss(self, X: np.ndarray, y: np.ndarray) -> float: ...  # mean criterion, eval mode, no penalty
    def encode_target(self, y: np.ndarray) -> np.ndarray: ...  # targets as the network is trained on them
    def epoch_history(self) -> list[dict[str, float]]: ...  # one row per epoch (curve_* keys, seconds)
    # a self-contained module: raw features in (preprocessed rows for categorical data: `export_input`),
    # probabilities/values out
    def to_torch(self) -> Any: ...


@dataclass
class FoldFit:
    """One fold's fit: the fitted model, or the error that ended it (a diverged fold is not fatal)."""

    fold: Fold
    seed: int
    estimator: FittedModel | None
    error: Exception | None = None
    seconds: float = 0.0


#: (fold index) -> None, called as training of a fold begins.
FoldStartCallback = Callable[[int], None]
#: (fold index, epoch, history row) -> None, called after every epoch of a fold.
EpochCallback = Callable[[int, int, dict[str, Any]], None]


class Engine(Protocol):
    """Fits one configuration on many folds."""

    name: str

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
        """Fit a fresh copy of `estimator` per fold on `X[fold.train]`, seeded with `seeds[i]`.

        `groups` (one label per row of X, or None): early stopping inside a training fold then
        holds out whole groups. Yields one FoldFit per fold, in the order given, as each is ready (lazily: a consumer
        that stops iterating stops the training of folds not yet started). With `eval_on_valid`
        the held-out rows feed the per-epoch learning curve only, never any training decision.
        KeyboardInterrupt (Ctrl-C, SIGTERM) propagates; any other error of a fold is returned in
        its FoldFit.
        """
        ...
