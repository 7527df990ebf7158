"""The measure catalogue and its settings: names, `MeasureConfig`, name validation.

Torch-free, so that validating a spec (`gencv validate --no-data`) does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gencv.errors import SpecError, did_you_mean

__all__ = ["DEFAULT_TRACE_MIN_PROBES", "EIG_METHODS", "LANDSCAPE_MEASURES", "MEASURE_NAMES", "MeasureConfig",
           "is_diagnostic", "radius_label", "validate_measure_names"]

MEASURE_NAMES: tuple[str, ...] = (
    "hessian_top",
    "hessian_trace",
    "hessian_diag",
    "ggn_trace",
    "fisher_trace",
    "eps_sharpness",
    "adaptive_sharpness",
    "pacbayes_flatness",
    "norms",
    "hessian_density",
    "landscape_1d",
    "landscape_2d",
    "interpolation",
)
#: Loss pictures (Li et al. 2018; Goodfellow et al. 2015): also computed on the refit model, on the
#: folds named by `MeasureConfig.landscape_folds`, and on the held-out rows beside the training rows.
LANDSCAPE_MEASURES: tuple[str, ...] = ("landscape_1d", "landscape_2d", "interpolation")
EIG_METHODS: tuple[str, ...] = ("lanczos", "power")

#: Output keys that describe how a measure was computed (iterations, probes, standard errors, the
#: sample), not the minimum it measures: reported beside the measures, never correlated with the gap.
_DIAGNOSTIC_SUFFIXES = ("_converged", "_iterations", "_evals", "_probes", "_mc_draws", "_mc_draws_mag", "_se",
                        "sample_size", "n_params")
_DIAGNOSTIC_KEYS = ("measure_loss",)


def is_diagnostic(key: str) -> bool:
    """True for a measure output that describes its computation (e.g. `hessian_top_iterations`)."""
    return key in _DIAGNOSTIC_KEYS or key.endswith(_DIAGNOSTIC_SUFFIXES)

_POSITIVE_INTS = (
    "top_k", "max_iter", "trace_max_probes", "diag_probes", "ascent_steps", "ascent_restarts", "ascent_max_iter",
    "n_random_directions", "pacbayes_mc_samples", "pacbayes_max_samples", "density_probes", "density_steps",
    "landscape_points_1d", "landscape_points_2d", "landscape_directions", "interpolation_points", "landscape_batch",
)
#: Hutchinson's default minimum probe count: with 10, about 1 seed in 40 stopped on an underestimated
#: standard error (heavy-tailed z^T A z) and missed the exact trace by 6-8 SE on the test nets; with 30, none.
DEFAULT_TRACE_MIN_PROBES = 30
_POSITIVE_FLOATS = (
    "eig_tol", "trace_rel_se", "eps", "ascent_tol", "adaptive_rho", "pacbayes_target", "pacbayes_rel_se",
    "landscape_radius", "landscape_rise_radius",
)


@dataclass(frozen=True)
class MeasureConfig:
    """Parameters of the curvature/sharpness measures (README, "Curvature and sharpness measures")."""

    sample_size: int | None = 512
    top_k: int = 1
    eig_method: str = "lanczos"
    eig_tol: float = 1e-4
    max_iter: int = 100
    trace_rel_se: float = 0.05
    trace_min_probes: int | None = None
    trace_max_probes: int = 200
    diag_probes: int = 100
    eps: float = 1e-3
    ascent_steps: int = 10
    ascent_restarts: int = 8
    ascent_max_iter: int = 500
    ascent_tol: float = 1e-9
    adaptive_rho: float = 0.05
    n_random_directions: int = 10
    pacbayes_target: float = 0.1
    pacbayes_mc_samples: int = 32
    pacbayes_rel_se: float = 0.03
    pacbayes_max_samples: int = 1000
    density_probes: int = 3
    density_steps: int = 30
    batch_size: int | None = None
    landscape_radius: float = 1.0
    landscape_points_1d: int = 51
    landscape_points_2d: int = 41
    landscape_directions: int = 3
    landscape_rise_radius: float = 0.5
    interpolation_points: int = 51
    landscape_batch: int = 256
    landscape_folds: str | tuple[int, ...] = "all"

    def __post_init__(self) -> None:
        self._check_landscape_folds()
        for name in ("sample_size", "batch_size", "trace_min_probes", *_POSITIVE_INTS):
            value = getattr(self, name)
            if value is None and name in ("sample_size", "batch_size", "trace_min_probes"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"MeasureConfig.{name} must be an int, got {value!r}; pass e.g. {name}=10")
            if value < 1:
                raise ValueError(f"MeasureConfig.{name} must be >= 1, got {value}; pass a positive count")
        for name in _POSITIVE_FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"MeasureConfig.{name} must be a float, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"MeasureConfig.{name} must be a finite number > 0, got {value}")
        if self.trace_min_probes is not None and self.trace_min_probes < 2:
            raise ValueError(
                f"MeasureConfig.trace_min_probes must be >= 2 (a standard error needs two probes), "
                f"got {self.trace_min_probes}"
            )
        if self.trace_min_probes is not None and self.trace_max_probes < self.trace_min_probes:
            raise ValueError(
                f"MeasureConfig.trace_max_probes ({self.trace_max_probes}) is below trace_min_probes "
                f"({self.trace_min_probes}); raise trace_max_probes"
            )
        if self.diag_probes < 2:
            raise ValueError(
                f"MeasureConfig.diag_probes must be >= 2 (a standard error needs two probes), got {self.diag_probes}"
            )
        if self.trace_max_probes < 2:
            raise ValueError(f"MeasureConfig.trace_max_probes must be >= 2, got {self.trace_max_probes}")
        if self.density_steps < 2:
            raise ValueError(f"MeasureConfig.density_steps must be >= 2, got {self.density_steps}")
        if self.pacbayes_max_samples < self.pacbayes_mc_samples:
            raise ValueError(
                f"MeasureConfig.pacbayes_max_samples ({self.pacbayes_max_samples}) is below pacbayes_mc_samples "
                f"({self.pacbayes_mc_samples}); raise pacbayes_max_samples"
            )
        if self.eig_method not in EIG_METHODS:
            raise ValueError(
                f"MeasureConfig.eig_method {self.eig_method!r} is unknown; use one of {EIG_METHODS}."
                + did_you_mean(self.eig_method, EIG_METHODS)
            )

        for name in ("landscape_points_1d", "landscape_points_2d"):
            value = getattr(self, name)
            if value < 3 or value % 2 == 0:
                raise ValueError(
                    f"MeasureConfig.{name} must be odd and >= 3 (the grid's centre is the final weights), got "
                    f"{value}; pass e.g. {value + 1 if value >= 3 else 3}"
                )
        if self.interpolation_points < 2:
            raise ValueError(f"MeasureConfig.interpolation_points must be >= 2, got {self.interpolation_points}")

    def _check_landscape_folds(self) -> None:
        value = self.landscape_folds
        if isinstance(value, str):
            if value not in ("all", "none"):
                raise ValueError(
                    f"MeasureConfig.landscape_folds: got {value!r}; use 'all', 'none' or a list of fold indices "
                    "such as [0, 2]"
                )
            return
        if isinstance(value, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
        ):
            object.__setattr__(self, "landscape_folds", tuple(sorted(set(value))))
            return
        raise ValueError(
            f"MeasureConfig.landscape_folds: got {value!r}; use 'all', 'none' or a list of fold indices (ints >= 0) "
            "such as [0, 2]"
        )

    def measures_for_fold(self, names: Sequence[str], fold: int) -> list[str]:
        """`names` without the landscape measures when `landscape_folds` leaves fold `fold` out."""
        folds = self.landscape_folds
        keep = folds == "all" or (not isinstance(folds, str) and fold in folds)
        return [n for n in names if keep or n not in LANDSCAPE_MEASURES]

    def min_trace_probes(self) -> int:
        """Hutchinson's minimum probe count: `trace_min_probes`, or min(30, trace_max_probes) when None."""
        if self.trace_min_probes is not None:
            return self.trace_min_probes
        return min(DEFAULT_TRACE_MIN_PROBES, self.trace_max_probes)


def radius_label(radius: float) -> str:
    """A radius as part of a metric name: 0.5 -> 'r0p5', 1 -> 'r1' (MLflow-safe, no dot)."""
    return "r" + f"{radius:g}".replace(".", "p").replace("-", "m").replace("+", "")


def validate_measure_names(names: Sequence[str]) -> list[str]:
    """Return the names deduplicated in order; raise `SpecError` (a ValueError) for unknown ones.

    Parameters
    ----------
    names
        Measure names from `MEASURE_NAMES`, e.g. ``["hessian_top", "norms"]``.
    """
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(
            f"measure names must be a list of strings, got {names!r}; pass e.g. [{names!r}]"
            if isinstance(names, str)
            else f"measure names must be a list of strings, got {type(names).__name__}"
        )
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"measure name {name!r} is not a string; use one of {MEASURE_NAMES}")
        if name not in MEASURE_NAMES:
            raise SpecError(
                f"measure {name!r} is unknown; use one of {', '.join(MEASURE_NAMES)}."
                + did_you_mean(name, MEASURE_NAMES)
            )
        if name not in out:
            out.append(name)
    return out
