"""Loss landscapes: filter-normalized random directions in 1D and 2D (Li et al. 2018) and the linear
interpolation from the initial to the final weights (Goodfellow et al. 2015), many weight points per
forward pass (`torch.func.vmap` over `functional_call`)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap

from gencv.measures._hvp import _Landscape
from gencv.measures.config import MeasureConfig, radius_label

logger = logging.getLogger(__name__)

#: Points on the circle of radius `landscape_rise_radius` whose mean loss rise `landscape_2d` reports.
_CIRCLE_POINTS = 16
DIRECTION_NORMS: tuple[str, ...] = ("filter", "none")


@dataclass
class _Evaluator:
    """Mean loss of one `_Landscape` at a batch of flat weight vectors, `batch` of them per forward pass.

    Falls back to one `functional_call` per weight vector (with a note) when vmap cannot run the model.
    """

    land: _Landscape
    batch: int
    notes: list[str]
    vmapped: bool = True
    evaluations: int = 0

    def _chunk_losses(self, thetas: torch.Tensor, Xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        land = self.land

        def one(theta: torch.Tensor) -> torch.Tensor:
            return land.loss_fn(functional_call(land.module, land.unflatten(theta), (Xc,)), yc)

        if self.vmapped:
            try:
                return vmap(one)(thetas)
            except Exception as exc:  # an op without a batching rule (e.g. an RNN kernel)
                self.vmapped = False
                note = (f"landscape: vmap cannot run this model ({type(exc).__name__}); evaluated one weight "
                        "vector at a time")
                if note not in self.notes:
                    self.notes.append(note)
        return torch.stack([one(theta) for theta in thetas])

    def losses(self, base: torch.Tensor, coefs: torch.Tensor, dirs: torch.Tensor) -> np.ndarray:
        """Mean loss over the sample at each weight vector base + coefs[i] @ dirs, as float64.

        `coefs` (points, k), `dirs` (k, n_params): the weight vectors are built `batch` at a time, so a
        large grid of a large network never holds all of them.
        """
        out = torch.zeros(coefs.shape[0], dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, coefs.shape[0], self.batch):
                block = base[None, :] + coefs[start : start + self.batch] @ dirs
                total = torch.zeros(block.shape[0], dtype=torch.float64)
                for Xc, yc, weight in self.land.chunks:
                    total += weight * self._chunk_losses(block, Xc, yc).detach().to("cpu", torch.float64)
                out[start : start + block.shape[0]] = total
        self.evaluations += int(coefs.shape[0])
        return out.numpy()


def random_direction(land: _Landscape, gen: torch.Generator, normalize: str = "filter") -> torch.Tensor:
    """A Gaussian direction over the flat trainable parameters, filter-normalized as Li et al. (2018).

    `filter`: for each weight with >= 2 dims, each filter (conv kernel, linear row: one output unit)
    of the direction is scaled to the norm of the same filter of the weights; parameters with <= 1 dim
    (biases, batch-norm scales and shifts) get 0, as the paper's `ignore='biasbn'`. `none`: the raw draw.
    The draw depends only on the parameter shapes and `gen`, never on the weights.
    """
    if normalize not in DIRECTION_NORMS:
        raise ValueError(f"normalize {normalize!r} is unknown; use one of {DIRECTION_NORMS}")
    parts = []
    for w, shape in zip(land.w0.split(land.numels), land.shapes, strict=True):
        d = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
        if normalize == "filter":
            if len(shape) <= 1:
                d = torch.zeros_like(d)
            else:
                rows = d.reshape(shape[0], -1)
                w_rows = w.detach().to("cpu", torch.float64).reshape(shape[0], -1)
                scale = w_rows.norm(dim=1, keepdim=True) / (rows.norm(dim=1, keepdim=True) + 1e-10)
                d = (rows * scale).reshape(tuple(shape))
        parts.append(d.reshape(-1))
    return torch.cat(parts).to(device=land.device, dtype=land.dtype)


def _rise_pairs(values: np.ndarray, loss0: float) -> float:
    return float(np.mean(values) - loss0)


def _splits(ctx_land: _Landscape, held: _Landscape | None) -> list[tuple[str, _Landscape]]:
    return [("train", ctx_land)] + ([("valid", held)] if held is not None else [])


def _timing_note(name: str, what: str, evaluators: list[_Evaluator], seconds: float) -> str:
    rows = " + ".join(f"{e.land.n_samples} {side}" for e, side in zip(evaluators, ("training", "held-out")))
    how = f"vmap, {evaluators[0].batch} per pass" if all(e.vmapped for e in evaluators) else "one at a time"
    return f"{name}: {what}, {sum(e.evaluations for e in evaluators)} losses on {rows} rows in {seconds:.2f} s ({how})"


def landscape_1d(land: _Landscape, held: _Landscape | None, cfg: MeasureConfig, gen: torch.Generator,
                 notes: list[str]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Loss along `landscape_directions` filter-normalized directions, alpha in [-R, R]; rise at ±r."""
    start = time.perf_counter()
    alphas = np.linspace(-cfg.landscape_radius, cfg.landscape_radius, cfg.landscape_points_1d)
    r = cfg.landscape_rise_radius
    steps = np.concatenate([alphas, [-r, r]])
    k = cfg.landscape_directions
    dirs = torch.stack([random_direction(land, gen) for _ in range(k)])
    coefs = torch.as_tensor(np.kron(np.eye(k), steps[:, None]), dtype=land.dtype, device=land.device)
    values: dict[str, float] = {}
    grids: dict[str, np.ndarray] = {"alpha": alphas, "rise_radius": np.asarray(r)}
    evaluators = []
    for split, lnd in _splits(land, held):
        ev = _Evaluator(lnd, cfg.landscape_batch, notes)
        losses = ev.losses(land.w0, coefs, dirs).reshape(k, len(steps))
        evaluators.append(ev)
        grids[split] = losses[:, : len(alphas)]
        center = float(losses[0, len(alphas) // 2])
        values[f"landscape_1d_rise_{radius_label(r)}_{split}"] = _rise_pairs(losses[:, len(alphas):], center)
    notes.append(_timing_note("landscape_1d", f"{len(dirs)} directions x {len(alphas)} points",
                              evaluators, time.perf_counter() - start))
    return values, grids


def landscape_2d(land: _Landscape, held: _Landscape | None, cfg: MeasureConfig, gen: torch.Generator,
                 notes: list[str]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Loss on an n x n grid over two filter-normalized directions; rise on the circle of radius r;
    the distance of the grid's minimum from the centre (the final weights)."""
    start = time.perf_counter()
    n = cfg.landscape_points_2d
    axis = np.linspace(-cfg.landscape_radius, cfg.landscape_radius, n)
    a, b = np.meshgrid(axis, axis, indexing="ij")  # loss[i, j] at alpha = axis[i], beta = axis[j]
    angles = np.linspace(0.0, 2 * math.pi, _CIRCLE_POINTS, endpoint=False)
    r = cfg.landscape_rise_radius
    ca = np.concatenate([a.ravel(), r * np.cos(angles)])
    cb = np.concatenate([b.ravel(), r * np.sin(angles)])
    dirs = torch.stack([random_direction(land, gen), random_direction(land, gen)])
    coefs = torch.as_tensor(np.stack([ca, cb], axis=1), dtype=land.dtype, device=land.device)
    values: dict[str, float] = {}
    grids: dict[str, np.ndarray] = {"alpha": axis, "beta": axis}
    evaluators = []
    for split, lnd in _splits(land, held):
        ev = _Evaluator(lnd, cfg.landscape_batch, notes)
        losses = ev.losses(land.w0, coefs, dirs)
        evaluators.append(ev)
        grid = losses[: n * n].reshape(n, n)
        grids[split] = grid
        center = float(grid[n // 2, n // 2])
        values[f"landscape_2d_rise_{radius_label(r)}_{split}"] = _rise_pairs(losses[n * n :], center)
        i, j = np.unravel_index(int(np.nanargmin(grid)), grid.shape)
        values[f"landscape_2d_min_dist_{split}"] = float(math.hypot(axis[i], axis[j]))
    notes.append(_timing_note("landscape_2d", f"{n} x {n} grid", evaluators, time.perf_counter() - start))
    return values, grids


def interpolation(land: _Landscape, held: _Landscape | None, cfg: MeasureConfig,
                  init_state: dict[str, torch.Tensor], notes: list[str]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Loss at (1 - t) w_init + t w_final for t in [0, 1]; the largest rise along the way (0 = monotone)."""
    start = time.perf_counter()
    missing = [name for name in land.names if name not in init_state]
    if missing:
        raise ValueError(f"init_state has no entry {missing[0]!r} (a trainable parameter); pass the module's "
                         "state_dict() captured before training")
    w_init = torch.cat([init_state[name].detach().to(land.device, land.dtype).reshape(-1) for name in land.names])
    if w_init.numel() != land.n_params:
        raise ValueError(f"init_state has {w_init.numel()} trainable values, the module {land.n_params}; pass the "
                         "state_dict of this same architecture")
    ts = np.linspace(0.0, 1.0, cfg.interpolation_points)
    # (1 - t) w_init + t w_final with coefficients 0 and 1 at the ends: exactly the initial and final weights
    coefs = torch.as_tensor(np.stack([1.0 - ts, ts], axis=1), dtype=land.dtype, device=land.device)
    dirs = torch.stack([w_init, land.w0])
    values: dict[str, float] = {}
    grids: dict[str, np.ndarray] = {"t": ts}
    evaluators = []
    for split, lnd in _splits(land, held):
        ev = _Evaluator(lnd, cfg.landscape_batch, notes)
        losses = ev.losses(torch.zeros_like(land.w0), coefs, dirs)
        evaluators.append(ev)
        grids[split] = losses
        values[f"interpolation_max_bump_{split}"] = float(np.max(losses - np.minimum.accumulate(losses)))
        values[f"interpolation_loss_init_{split}"] = float(losses[0])
    notes.append(_timing_note("interpolation", f"{len(ts)} points", evaluators, time.perf_counter() - start))
    return values, grids
