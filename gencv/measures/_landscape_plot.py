"""Files of the loss landscapes: PNGs (1D curves, 2D contours with the minimum marked, interpolation)
and the grids as NPZ and CSV, training and held-out rows side by side."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_SPLITS = {"train": ("training rows", "C0"), "valid": ("held-out rows", "C3")}


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _positive(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all(values > 0))


def _plot_curves(x: np.ndarray, grids: Mapping[str, np.ndarray], path: Path, *, xlabel: str, title: str,
                 marks: tuple[float, ...] = ()) -> None:
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    curves = [np.atleast_2d(grids[s]) for s in _SPLITS if s in grids]
    log_y = all(_positive(c) for c in curves)
    for split, (label, color) in _SPLITS.items():
        if split not in grids:
            continue
        for k, row in enumerate(np.atleast_2d(grids[split])):
            ax.plot(x, row, color=color, lw=1.4 if k == 0 else 0.9, alpha=1.0 if k == 0 else 0.55,
                    label=label if k == 0 else None)
    for m in marks:
        ax.axvline(m, color="0.5", ls=":", lw=0.8)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean loss" + (" (log scale)" if log_y else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)


def _plot_2d(grids: Mapping[str, np.ndarray], path: Path, *, title: str) -> None:
    splits = [s for s in _SPLITS if s in grids]
    fig = _figure(5.2 * len(splits) + 0.6, 4.6)
    a, b = grids["alpha"], grids["beta"]
    values = np.concatenate([grids[s].ravel() for s in splits])
    log_z = _positive(values)
    z_all = np.log10(values) if log_z else values
    levels = np.linspace(float(np.nanmin(z_all)), float(np.nanmax(z_all)), 25)
    for k, split in enumerate(splits):
        ax = fig.add_subplot(1, len(splits), k + 1)
        grid = grids[split]
        z = np.log10(grid) if log_z else grid
        # grid[i, j] is at alpha = a[i], beta = b[j]: contour wants z[row = beta, column = alpha]
        filled = ax.contourf(a, b, z.T, levels=levels, cmap="viridis")
        ax.contour(a, b, z.T, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
        i, j = np.unravel_index(int(np.nanargmin(grid)), grid.shape)
        ax.plot([a[i]], [b[j]], marker="*", color="red", ms=13, ls="none", label=f"grid minimum {grid[i, j]:.3g}")
        centre = grid[len(a) // 2, len(b) // 2]
        ax.plot([0.0], [0.0], marker="x", color="white", ms=9, mew=2, ls="none",
                label=f"final weights {centre:.3g}")
        ax.set_xlabel("direction 1 (filter-normalized)")
        ax.set_ylabel("direction 2 (filter-normalized)")
        ax.set_title(_SPLITS[split][0], fontsize=10)
        ax.set_aspect("equal")
        ax.locator_params(nbins=5)
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
        cbar = fig.colorbar(filled, ax=ax, shrink=0.85)
        cbar.set_label("log10 mean loss" if log_z else "mean loss", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)


def _csv_1d(grids: Mapping[str, np.ndarray], path: Path) -> None:
    import pandas as pd

    rows = []
    for k in range(np.atleast_2d(grids["train"]).shape[0]):
        row = {"direction": k, "alpha": grids["alpha"]}
        row.update({f"loss_{s}": np.atleast_2d(grids[s])[k] for s in _SPLITS if s in grids})
        rows.append(pd.DataFrame(row))
    pd.concat(rows, ignore_index=True).to_csv(path, index=False)


def _csv_2d(grids: Mapping[str, np.ndarray], path: Path) -> None:
    import pandas as pd

    a, b = np.meshgrid(grids["alpha"], grids["beta"], indexing="ij")
    frame = {"alpha": a.ravel(), "beta": b.ravel()}
    frame.update({f"loss_{s}": grids[s].ravel() for s in _SPLITS if s in grids})
    pd.DataFrame(frame).to_csv(path, index=False)


def _csv_interp(grids: Mapping[str, np.ndarray], path: Path) -> None:
    import pandas as pd

    frame = {"t": grids["t"]}
    frame.update({f"loss_{s}": grids[s] for s in _SPLITS if s in grids})
    pd.DataFrame(frame).to_csv(path, index=False)


def save_landscapes(landscapes: Mapping[str, Mapping[str, np.ndarray]], directory: str | Path,
                    label: str) -> list[Path]:
    """Write `MeasureResult.landscapes` under `directory`: `plots/<measure>_<label>.png` and
    `landscape/<measure>_<label>.csv`, plus all grids in `landscape/landscape_<label>.npz`.

    Parameters
    ----------
    landscapes
        `MeasureResult.landscapes` (measure name -> arrays: axes, and `train` / `valid` losses).
    directory
        The run's artifact root being assembled (folders `plots/` and `landscape/` are created).
    label
        What was measured, in the file names and titles: e.g. ``fold0`` or ``refit``.
    """
    directory = Path(directory)
    plots, data = directory / "plots", directory / "landscape"
    plots.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    who = "refit model" if label == "refit" else label.replace("fold", "fold ")
    for name, grids in landscapes.items():
        png, csv = plots / f"{name}_{label}.png", data / f"{name}_{label}.csv"
        if name == "landscape_1d":
            r = float(grids["rise_radius"]) if "rise_radius" in grids else None
            marks = (-r, r) if r is not None else ()  # where the reported rise is measured
            _plot_curves(grids["alpha"], grids, png, xlabel="step along a filter-normalized random direction",
                         title=f"1D loss landscape, {who} (Li et al. 2018; one line per direction)", marks=marks)
            _csv_1d(grids, csv)
        elif name == "landscape_2d":
            _plot_2d(grids, png, title=f"2D loss landscape, {who} (filter-normalized directions, Li et al. 2018)")
            _csv_2d(grids, csv)
        elif name == "interpolation":
            _plot_curves(grids["t"], grids, png, xlabel="t: (1 - t) initial + t final weights",
                         title=f"Linear interpolation init -> final, {who} (Goodfellow et al. 2015)")
            _csv_interp(grids, csv)
        else:
            continue
        written += [png, csv]
    if landscapes:
        npz = data / f"landscape_{label}.npz"
        np.savez_compressed(npz, **{f"{name}__{key}": np.asarray(v) for name, grids in landscapes.items()
                                    for key, v in grids.items()})
        written.append(npz)
    logger.debug("saved %d landscape files for %s", len(written), label)
    return written


class LandscapeFiles:
    """A `MeasureResult`'s values (with `prefix`) and its landscape files under `label`: a run's extra
    (`gencv.runner.RunExtra`), as the refit model's landscapes are logged on the parent run."""

    def __init__(self, result: Any, label: str, *, prefix: str = "") -> None:
        self.result, self.label, self.prefix = result, label, prefix

    def metrics(self) -> dict[str, float]:
        return {f"{self.prefix}{k}": float(v) for k, v in self.result.values.items()}

    def write_artifacts(self, directory: Path) -> None:
        save_landscapes(self.result.landscapes, directory, self.label)
