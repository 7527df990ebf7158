"""Hessian spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019) and its plot."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gencv.measures._hessian import MatVec, _lanczos

logger = logging.getLogger(__name__)

#: Gaussian broadening = this fraction of the Ritz-value span; the grid extends this many widths past it.
_BROADENING = 0.01
_PAD_WIDTHS = 6.0
_GRID_POINTS = 1001


@dataclass
class _SLQ:
    """Stochastic Lanczos quadrature: Ritz values, their weights, which probe each came from, HVPs used.

    Per probe the weights are the squared first components of T's eigenvectors (they sum to 1), divided
    by the number of probes, so all weights sum to 1: (nodes, weights) is a discrete probability measure
    that approximates the uniform measure on the Hessian's eigenvalues.
    """

    nodes: np.ndarray
    weights: np.ndarray
    probe: np.ndarray
    hvps: int


def _slq_nodes(
    matvec: MatVec, n: int, *, probes: int, steps: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device
) -> _SLQ:
    """Run `probes` Lanczos runs of `steps` steps from unit Gaussian vectors; the quadrature over all of them."""
    nodes: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    probe: list[np.ndarray] = []
    hvps = 0
    for i in range(probes):
        res = _lanczos(matvec, n, steps, gen=gen, dtype=dtype, device=device)
        hvps += res.hvps
        nodes.append(res.ritz)
        weights.append(res.ritz_vectors[0, :] ** 2 / probes)
        probe.append(np.full(res.ritz.size, i))
    return _SLQ(np.concatenate(nodes), np.concatenate(weights), np.concatenate(probe), hvps)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (np.trapezoid needs numpy >= 2)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def _broadened_density(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Sum of Gaussians at `nodes` on a uniform grid, normalised to integrate to 1 (trapezoid); width."""
    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo
    width = _BROADENING * span if span > 0 else _BROADENING * max(abs(hi), 1e-12)
    grid = np.linspace(lo - _PAD_WIDTHS * width, hi + _PAD_WIDTHS * width, _GRID_POINTS)
    z = (grid[:, None] - nodes[None, :]) / width
    density = (np.exp(-0.5 * z * z) * weights[None, :]).sum(axis=1) / (width * math.sqrt(2.0 * math.pi))
    density = density / _trapezoid(density, grid)
    return grid, density, width


def plot_density(
    grid: np.ndarray, density: np.ndarray, path: str | Path, eigenvalues: np.ndarray | None = None
) -> None:
    """Save the spectral density (log scale) as a PNG, with optional top eigenvalues as dashed lines.

    Parameters
    ----------
    grid, density
        1-D arrays of equal length, as in `MeasureResult.density`.
    path
        Output PNG path; missing parent folders are created.
    eigenvalues
        Optional eigenvalues (e.g. `MeasureResult.eigenvalues`) marked with vertical lines.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.asarray(grid, dtype=float)
    density = np.asarray(density, dtype=float)
    if grid.ndim != 1 or grid.shape != density.shape or grid.size < 2:
        raise ValueError(
            f"grid and density must be 1-D arrays of equal length >= 2, got shapes {grid.shape} and "
            f"{density.shape}; pass MeasureResult.density unchanged"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    floor = max(float(density.max()) * 1e-8, 1e-300)
    ax.semilogy(grid, np.maximum(density, floor), color="C0", lw=1.2)
    if eigenvalues is not None:
        for i, ev in enumerate(np.atleast_1d(np.asarray(eigenvalues, dtype=float))):
            ax.axvline(ev, color="C3", ls="--", lw=0.8, label="top eigenvalues" if i == 0 else None)
        ax.legend(loc="upper right")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (SLQ, Gaussian broadening)")
    ax.set_title("Hessian spectral density")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    logger.debug("saved Hessian density plot to %s", path)
