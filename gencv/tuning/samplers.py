"""Optuna samplers by name (`tune.sampler`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from gencv.errors import GencvError
from gencv.spec import Experiment
from gencv.tuning.space import Dimension, grid_search_space


def make_sampler(exp: Experiment, dims: list[Dimension], seed: int) -> Any:
    import optuna

    kind = exp.tune.sampler if exp.tune else "tpe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several samplers are flagged experimental
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if kind == "cmaes":
            try:
                import cmaes  # noqa: F401  (Optuna imports it lazily, at the second trial)
            except ImportError:
                raise GencvError("tune.sampler=cmaes needs the `cmaes` package: pip install cmaes "
                                 "(or choose another tune.sampler: tpe, random, gp, grid)") from None
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if kind == "grid":
            return _GridSampler(grid_search_space(dims), seed=seed)
        return optuna.samplers.TPESampler(seed=seed)


def _grid_sampler_class() -> Any:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without `study.stop()` in after_trial (our ask/tell loop checks
        `is_exhausted` itself; `stop` outside `optimize` raises)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def _GridSampler(search_space: Mapping[str, Sequence[Any]], seed: int) -> Any:
    return _grid_sampler_class()(dict(search_space), seed=seed)

