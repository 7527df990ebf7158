"""Public entry points: the measure registry, configuration, result type and `compute_measures`.

What each measure means, costs and takes: README.md, section "Curvature and sharpness measures".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gencv.errors import DataError
from gencv.measures._density import _broadened_density, _slq_nodes
from gencv.measures._gauss_newton import _fisher_trace, _ggn_quad
from gencv.measures._hessian import _hutchinson, _lanczos_top, _power_top
from gencv.measures._hvp import _Landscape
from gencv.measures._landscape import interpolation, landscape_1d, landscape_2d
from gencv.measures._norms import _norm_values
from gencv.measures._sharpness import (
    _adaptive_sharpness,
    _eps_sharpness,
    _pacbayes_flatness,
)
from gencv.measures.config import (  # noqa: F401  (re-exported)
    DEFAULT_TRACE_MIN_PROBES,
    EIG_METHODS,
    LANDSCAPE_MEASURES,
    MEASURE_NAMES,
    MeasureConfig,
    validate_measure_names,
)

logger = logging.getLogger(__name__)

@dataclass
class MeasureResult:
    """Flat finite metrics, the spectral density, top eigenvalues, landscapes, notes and per-measure wall time."""

    values: dict[str, float]
    density: tuple[np.ndarray, np.ndarray] | None = None
    eigenvalues: np.ndarray | None = None
    #: landscape_1d / landscape_2d / interpolation -> their axes and `train` (`valid`) loss arrays
    landscapes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _sub_seed(seed: int, label: str) -> int:
    """Deterministic 63-bit seed for one measure (or the subsample) derived from the user seed."""
    digest = hashlib.blake2b(f"gencv.measures:{seed}:{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(seed: int, label: str) -> torch.Generator:
    return torch.Generator().manual_seed(_sub_seed(seed, label))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own train/eval flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _prepare_data(
    X: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, device: torch.device, sample_size: int | None,
    seed: int, notes: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"X and y must be torch tensors, got {type(X).__name__} and {type(y).__name__}")
    if X.dim() == 0 or X.shape[0] == 0:
        raise DataError(f"X is empty (shape {tuple(X.shape)}); pass at least one training sample")
    if y.dim() == 0 or y.shape[0] != X.shape[0]:
        raise DataError(
            f"y has shape {tuple(y.shape)} but X has {X.shape[0]} samples; pass one target per sample"
        )
    n = int(X.shape[0])
    if sample_size is not None and sample_size < n:
        gen = _generator(seed, "sample")
        idx = torch.randperm(n, generator=gen)[:sample_size].sort().values
        X = X.index_select(0, idx.to(X.device))
        y = y.index_select(0, idx.to(y.device))
    elif sample_size is not None and sample_size > n:
        notes.append(f"sample_size {sample_size} > fold size {n}: used all {n}")
    X = X.to(device=device, dtype=dtype) if X.is_floating_point() else X.to(device=device)
    y = y.to(device=device, dtype=dtype) if y.is_floating_point() else y.to(device=device)
    return X, y


def compute_measures(
    module: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    names: Sequence[str],
    *,
    seed: int,
    config: MeasureConfig | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> MeasureResult:
    """Compute the named curvature/sharpness measures of the mean training loss at the module's weights.

    Parameters
    ----------
    module
        The trained network; evaluated in eval mode (restored afterwards), never modified.
    X, y
        The fold's training data (first dimension = samples); not modified. A seeded subsample of
        ``config.sample_size`` rows is used.
    loss_fn
        ``loss_fn(outputs, targets)`` returning the mean loss.
    names
        Measures from `MEASURE_NAMES`.
    seed
        Seeds every probe, direction and the subsample (one derived generator per measure).
    config
        `MeasureConfig`; defaults when None.
    init_state
        State dict at initialisation, for ``dist_from_init`` (skipped when None) and ``interpolation``.
    held_out
        ``(X, y)`` of rows the network was not fitted on: the landscape measures draw their loss beside
        the training loss (a seeded subsample of ``config.sample_size`` rows); the other measures ignore it.
    """
    names = validate_measure_names(names)
    config = MeasureConfig() if config is None else config
    if not isinstance(config, MeasureConfig):
        raise TypeError(f"config must be a MeasureConfig, got {type(config).__name__}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable(outputs, targets) -> mean loss, got {loss_fn!r}")
    seed = int(seed)
    trainable = [p for p in module.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"module {type(module).__name__} has no trainable parameters (requires_grad=True); "
            "curvature measures need at least one"
        )
    notes: list[str] = []
    X, y = _prepare_data(X, y, trainable[0].dtype, trainable[0].device, config.sample_size, seed, notes)
    result = MeasureResult(values={}, notes=notes)
    held: _Landscape | None = None
    if held_out is not None and any(n in LANDSCAPE_MEASURES for n in names):
        Xh, yh = _prepare_data(held_out[0], held_out[1], trainable[0].dtype, trainable[0].device,
                               config.sample_size, _sub_seed(seed, "held_out"), [])
        held = _Landscape(module, Xh, yh, loss_fn, batch_size=config.batch_size)
    with _eval_mode(module):
        land = _Landscape(module, X, y, loss_fn, batch_size=config.batch_size)
        try:
            loss0 = land.loss()
            if not math.isfinite(loss0):
                notes.append(f"training loss is {loss0} at these weights; the measures are not meaningful")
            result.values.update(
                {"loss": loss0, "sample_size": float(land.n_samples), "n_params": float(land.n_params)}
            )
            ctx = _Context(land, loss0, config, seed, init_state, result, tuple(names), held=held)
            for name in names:
                start = time.perf_counter()
                hvps_before = land.hvp_count
                _MEASURES[name](ctx)
                result.seconds[name] = time.perf_counter() - start
                logger.debug(
                    "%s: %.3fs, %d HVPs", name, result.seconds[name], land.hvp_count - hvps_before
                )
        finally:
            land.close()
    for key in list(result.values):
        value = float(result.values[key])
        if math.isfinite(value):
            result.values[key] = value
        else:
            del result.values[key]
            notes.append(f"{key} is {value} and was dropped (metrics must be finite)")
    return result


# -- one adapter per measure ------------------------------------------------------------------------------
@dataclass
class _Context:
    """What every measure adapter reads: landscape, loss at w, config, seed, init state; and the result."""

    land: _Landscape
    loss0: float
    cfg: MeasureConfig
    seed: int
    init_state: dict[str, torch.Tensor] | None
    result: MeasureResult
    names: tuple[str, ...] = ()
    done: set[str] = field(default_factory=set)
    held: _Landscape | None = None  # the held-out rows, for the landscape measures

    def generator(self, label: str) -> torch.Generator:
        """The measure's own generator, derived from the user seed."""
        return _generator(self.seed, label)


def _m_hessian_top(ctx: _Context) -> None:
    land, cfg, res = ctx.land, ctx.cfg, ctx.result
    k = cfg.top_k
    if k > land.n_params:
        res.notes.append(f"top_k {k} > n_params {land.n_params}: computed all {land.n_params}")
        k = land.n_params
    solver = _lanczos_top if cfg.eig_method == "lanczos" else _power_top
    top, hvps, converged = solver(
        land.hvp, land.n_params, k, max_iter=cfg.max_iter, tol=cfg.eig_tol,
        gen=ctx.generator("hessian_top"), dtype=land.dtype, device=land.device,
    )
    for i, value in enumerate(top, start=1):
        res.values[f"hessian_top_{i}"] = float(value)
    res.values["hessian_top_iterations"] = float(hvps)
    res.values["hessian_top_converged"] = 1.0 if converged else 0.0
    if not converged:
        res.notes.append(
            f"hessian_top: {cfg.eig_method} did not reach eig_tol {cfg.eig_tol:g} within max_iter "
            f"{cfg.max_iter}; raise max_iter for a tighter estimate"
        )
    res.eigenvalues = np.asarray(top, dtype=np.float64)


def _m_hutchinson(ctx: _Context) -> None:
    """hessian_trace and hessian_diag: one seeded probe sequence, run once when both are asked for.

    The trace uses the probes up to its stopping rule, the diagonal exactly the first `diag_probes`
    probes, so each one's numbers are the same whether or not the other is requested.
    """
    land, cfg, res = ctx.land, ctx.cfg, ctx.result
    if "hutchinson" in ctx.done:
        return
    ctx.done.add("hutchinson")
    want_trace = "hessian_trace" in ctx.names
    want_diag = "hessian_diag" in ctx.names
    est = _hutchinson(
        land.hvp, land.n_params, gen=ctx.generator("hutchinson"), dtype=land.dtype, device=land.device,
        rel_se=cfg.trace_rel_se, min_probes=cfg.min_trace_probes() if want_trace else 2,
        max_probes=cfg.trace_max_probes if want_trace else 2, diag_probes=cfg.diag_probes if want_diag else 0,
    )
    if want_trace:
        res.values.update(
            {"hessian_trace": est.mean, "hessian_trace_se": est.se, "hessian_trace_probes": float(est.probes)}
        )
        if est.se > cfg.trace_rel_se * abs(est.mean):
            res.notes.append(
                f"hessian_trace: standard error {est.se:.3g} is above trace_rel_se {cfg.trace_rel_se:g} x "
                f"|trace| after trace_max_probes {cfg.trace_max_probes}"
            )
    if want_diag and est.diag is not None and est.diag_se is not None:
        diag, diag_se = est.diag, est.diag_se
        i_max = int(torch.argmax(diag))
        res.values.update({
            "hessian_diag_mean": float(diag.mean()),
            "hessian_diag_max": float(diag[i_max]),
            "hessian_diag_min": float(diag.min()),
            "hessian_diag_abs_mean": float(diag.abs().mean()),
            "hessian_diag_entry_se": float(diag_se.mean()),
            "hessian_diag_max_se": float(diag_se[i_max]),
            "hessian_diag_probes": float(est.diag_probes),
        })


def _m_ggn_trace(ctx: _Context) -> None:
    land, cfg = ctx.land, ctx.cfg
    est = _hutchinson(
        None, land.n_params, gen=ctx.generator("ggn_trace"), dtype=land.dtype, device=land.device,
        rel_se=cfg.trace_rel_se, min_probes=cfg.min_trace_probes(), max_probes=cfg.trace_max_probes,
        quad=lambda z: _ggn_quad(land, z),
    )
    ctx.result.values.update({"ggn_trace": est.mean, "ggn_trace_se": est.se, "ggn_trace_probes": float(est.probes)})


def _m_fisher_trace(ctx: _Context) -> None:
    ctx.result.values["fisher_trace"] = _fisher_trace(ctx.land, ctx.result.notes)


def _m_eps_sharpness(ctx: _Context) -> None:
    ctx.result.values.update(
        _eps_sharpness(
            ctx.land, ctx.loss0, eps=ctx.cfg.eps, restarts=ctx.cfg.ascent_restarts,
            max_iter=ctx.cfg.ascent_max_iter, tol=ctx.cfg.ascent_tol, gen=ctx.generator("eps_sharpness"),
            notes=ctx.result.notes,
        )
    )


def _m_adaptive_sharpness(ctx: _Context) -> None:
    cfg = ctx.cfg
    ctx.result.values.update(
        _adaptive_sharpness(
            ctx.land, ctx.loss0, rho=cfg.adaptive_rho, steps=cfg.ascent_steps, n_dirs=cfg.n_random_directions,
            gen=ctx.generator("adaptive_sharpness"),
        )
    )


def _m_pacbayes(ctx: _Context) -> None:
    ctx.result.values.update(
        _pacbayes_flatness(
            ctx.land, ctx.loss0, target=ctx.cfg.pacbayes_target, mc=ctx.cfg.pacbayes_mc_samples,
            max_mc=ctx.cfg.pacbayes_max_samples, rel_se=ctx.cfg.pacbayes_rel_se,
            seed=_sub_seed(ctx.seed, "pacbayes_flatness"), notes=ctx.result.notes,
        )
    )


def _m_norms(ctx: _Context) -> None:
    ctx.result.values.update(_norm_values(ctx.land.module, ctx.init_state, ctx.result.notes))


def _m_hessian_density(ctx: _Context) -> None:
    land, cfg = ctx.land, ctx.cfg
    slq = _slq_nodes(
        land.hvp, land.n_params, probes=cfg.density_probes, steps=cfg.density_steps,
        gen=ctx.generator("hessian_density"), dtype=land.dtype, device=land.device,
    )
    nodes, weights = slq.nodes, slq.weights
    grid, density, width = _broadened_density(nodes, weights)
    ctx.result.density = (grid, density)
    ctx.result.values.update({
        "hessian_density_mean": float(np.sum(weights * nodes)),
        "hessian_density_negative_mass": float(np.sum(weights[nodes < 0])),
        "hessian_density_ritz_min": float(nodes.min()),
        "hessian_density_ritz_max": float(nodes.max()),
        "hessian_density_width": width,
    })


def _m_landscape_1d(ctx: _Context) -> None:
    values, grids = landscape_1d(ctx.land, ctx.held, ctx.cfg, ctx.generator("landscape_1d"), ctx.result.notes)
    ctx.result.values.update(values)
    ctx.result.landscapes["landscape_1d"] = grids


def _m_landscape_2d(ctx: _Context) -> None:
    values, grids = landscape_2d(ctx.land, ctx.held, ctx.cfg, ctx.generator("landscape_2d"), ctx.result.notes)
    ctx.result.values.update(values)
    ctx.result.landscapes["landscape_2d"] = grids


def _m_interpolation(ctx: _Context) -> None:
    if ctx.init_state is None:
        ctx.result.notes.append("interpolation: no initial weights (init_state) were given; skipped")
        return
    values, grids = interpolation(ctx.land, ctx.held, ctx.cfg, ctx.init_state, ctx.result.notes)
    ctx.result.values.update(values)
    ctx.result.landscapes["interpolation"] = grids


_MEASURES: dict[str, Callable[[_Context], None]] = {
    "hessian_top": _m_hessian_top,
    "hessian_trace": _m_hutchinson,
    "hessian_diag": _m_hutchinson,
    "ggn_trace": _m_ggn_trace,
    "fisher_trace": _m_fisher_trace,
    "eps_sharpness": _m_eps_sharpness,
    "adaptive_sharpness": _m_adaptive_sharpness,
    "pacbayes_flatness": _m_pacbayes,
    "norms": _m_norms,
    "hessian_density": _m_hessian_density,
    "landscape_1d": _m_landscape_1d,
    "landscape_2d": _m_landscape_2d,
    "interpolation": _m_interpolation,
}
