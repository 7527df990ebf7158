"""Perturbation-based sharpness: eps-sharpness (Keskar), adaptive sharpness (ASAM), PAC-Bayes flatness."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import Bounds, minimize

from gencv.measures._hvp import _Landscape

logger = logging.getLogger(__name__)

#: Magnitude-aware PAC-Bayes noise as in Jiang et al. (2020): variance_i = sigma'^2 w_i^2 + _MAG_EPS^2, with an
#: absolute floor _MAG_EPS that is not scaled by sigma' (it keeps zero weights perturbed).
_MAG_EPS = 1e-3
#: PAC-Bayes sigma search: bracket limits and the relative precision of the log-space bisection.
_SIGMA_MIN, _SIGMA_MAX, _SIGMA_START, _SIGMA_RTOL = 1e-8, 1e3, 1e-2, 1e-3
#: Precision of the intermediate roots, found with too few draws (the next, larger sample starts from them).
_SIGMA_COARSE_RTOL = 2e-2


def _eps_sharpness(
    land: _Landscape,
    loss0: float,
    *,
    eps: float,
    restarts: int,
    max_iter: int,
    tol: float,
    gen: torch.Generator,
    notes: list[str],
) -> dict[str, float]:
    """Keskar et al. (2017): 100 * (max_{|z_i| <= eps(|w_i|+1)} L(w+z) - L(w)) / (1 + L(w)).

    The loss is not concave in the box and has several local maxima once eps is not tiny, so the maximum
    is searched by `restarts` runs of scipy's L-BFGS-B, each until converged (relative loss change <= `tol`,
    or a zero projected gradient; at most `max_iter` iterations): the first from the box corner that
    maximises the linearised loss (sign of the gradient; random signs where it is exactly zero), the others
    from uniform random points of the box. The best loss seen at any evaluation is kept.
    """
    w0 = land.w0
    delta = eps * (w0.abs() + 1.0)
    _, g0 = land.loss_and_grad()
    signs = torch.sign(g0)
    rand = (torch.randint(0, 2, signs.shape, generator=gen).to(signs.dtype) * 2 - 1).to(signs.device)
    signs = torch.where(signs == 0, rand, signs)
    bound = delta.double().cpu().numpy()
    bounds = Bounds(-bound, bound)
    best = loss0
    evals = 0

    def objective(zn: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal best, evals
        z = torch.from_numpy(zn).to(dtype=land.dtype, device=land.device)
        value, grad = land.loss_and_grad(w0 + z)
        evals += 1
        if math.isfinite(value):
            best = max(best, value)
            return -value, -grad.double().cpu().numpy()
        return math.inf, np.zeros_like(zn)

    not_converged = 0
    for run in range(restarts):
        if run == 0:
            start = delta * signs
        else:
            start = (torch.rand(land.n_params, generator=gen, dtype=torch.float64) * 2 - 1).to(delta) * delta
        out = minimize(
            objective, start.double().cpu().numpy(), jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": max_iter, "maxfun": 3 * max_iter, "ftol": tol, "gtol": 0.0},
        )
        not_converged += int(out.status == 1)  # iteration/evaluation budget used up
    if not_converged:
        notes.append(
            f"eps_sharpness: {not_converged} of {restarts} L-BFGS-B runs stopped at ascent_max_iter {max_iter} "
            f"before reaching ascent_tol {tol:g}; raise ascent_max_iter for a tighter maximum"
        )
    increase = best - loss0
    return {
        "eps_sharpness": 100.0 * increase / (1.0 + loss0),
        "eps_sharpness_loss_increase": increase,
        "eps_sharpness_evals": float(evals),
    }


def _adaptive_sharpness(
    land: _Landscape, loss0: float, *, rho: float, steps: int, n_dirs: int, gen: torch.Generator
) -> dict[str, float]:
    """ASAM (Kwon et al. 2021) sharpness in the |w|-scaled space: z = |w| * zh with ||zh||_2 <= rho.

    worst: max L(w + |w| zh) - L(w) by `steps` projected, normalised gradient-ascent steps on zh (step
    rho / sqrt(t + 1); the first is the SAM point). avg: mean of L(w + |w| d) - L(w) over `n_dirs`
    Gaussian directions d scaled to ||d||_2 = rho. Because everything lives in zh-space, both are
    invariant to rescalings w -> s * w (s > 0 per coordinate) that leave the network function unchanged.
    """
    w0 = land.w0
    t_w = w0.abs()
    zh = torch.zeros_like(w0)
    best = loss0
    for t in range(steps):
        value, grad = land.loss_and_grad(w0 + t_w * zh)
        if math.isfinite(value):
            best = max(best, value)
        gh = t_w * grad
        norm = float(gh.norm())
        if norm == 0.0 or not math.isfinite(norm):
            break
        zh = zh + (rho / math.sqrt(t + 1.0)) * gh / norm
        zh_norm = float(zh.norm())
        if zh_norm > rho:
            zh = zh * (rho / zh_norm)
    final = land.loss(w0 + t_w * zh)
    if math.isfinite(final):
        best = max(best, final)
    increases = []
    for _ in range(n_dirs):
        d = torch.randn(land.n_params, generator=gen, dtype=land.dtype).to(land.device)
        d = d * (rho / d.norm())
        increases.append(land.loss(w0 + t_w * d) - loss0)
    return {"adaptive_sharpness_worst": best - loss0, "adaptive_sharpness_avg": float(np.mean(increases))}


def _increases(land: _Landscape, loss0: float, std: torch.Tensor, seed: int, mc: int) -> np.ndarray:
    """L(w + std * xi_s) - L(w) for the first `mc` draws xi_s ~ N(0, I) of the seeded sequence (common to every
    `std`, so the mean is a smooth function of sigma; a longer run extends the same sequence)."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty(mc)
    for s in range(mc):
        xi = torch.randn(land.n_params, generator=gen, dtype=land.dtype).to(land.device)
        out[s] = land.loss(land.w0 + std * xi) - loss0
    return out


def _largest_sigma(
    land: _Landscape,
    loss0: float,
    std_of: Callable[[float], torch.Tensor],
    *,
    target: float,
    seed: int,
    mc: int,
    max_mc: int,
    rel_se: float,
    notes: list[str],
    label: str,
) -> tuple[float, int, int]:
    """Largest sigma with E[L(w+u)] - L(w) <= target, u ~ N(0, diag(std_of(sigma))^2); sigma evaluations, draws.

    E is the mean over the first n draws of one seeded sequence (common random numbers). With n = `mc`, the
    root is bracketed by factors of 10 from _SIGMA_START and located by Illinois regula falsi in log sigma to
    relative precision _SIGMA_RTOL (the lower end of the final bracket is returned). While the standard error
    of the mean at that sigma is above `rel_se` * target, n grows (to what the observed spread needs, at least
    doubling, at most `max_mc`) and the root is found again from a bracket of factors 1.25 around the last one.
    At _SIGMA_MAX the search stops and reports the sigma reached (a lower bound, with a note); when even
    _SIGMA_MIN fails the target no sigma in the range is valid and the result is NaN with a note (so it is
    dropped from the metrics), never a clipped number that would read like a measurement.
    """
    evals = 0
    n = mc
    last: dict[float, np.ndarray] = {}

    def excess(sigma: float) -> float:
        """Mean increase minus target (inf when not finite); <= 0 means sigma is small enough."""
        nonlocal evals
        evals += 1
        inc = _increases(land, loss0, std_of(sigma), seed, n)
        last[sigma] = inc
        value = float(inc.mean()) - target
        return value if math.isfinite(value) else math.inf

    start, factor = _SIGMA_START, 10.0
    while True:
        last.clear()
        lo = hi = start
        f_lo = f_hi = excess(start)
        if f_lo <= 0:
            while True:
                hi = lo * factor
                f_hi = excess(hi)
                if f_hi > 0:
                    break
                lo, f_lo = hi, f_hi
                if lo >= _SIGMA_MAX:
                    notes.append(
                        f"{label}: loss increase stays <= target up to sigma {lo:g}; reported {lo:g} (a lower bound)"
                    )
                    return lo, evals, n
        else:
            while True:
                lo = hi / factor
                f_lo = excess(lo)
                if f_lo <= 0:
                    break
                hi, f_hi = lo, f_lo
                if hi <= _SIGMA_MIN:
                    notes.append(
                        f"{label}: the expected loss increase exceeds pacbayes_target even at sigma {hi:g} (the "
                        "search's lower limit); no sigma satisfies it, reported NaN (check that the loss is finite "
                        "and the weights are at a minimum, or raise pacbayes_target)"
                    )
                    return math.nan, evals, n
        # a coarse root first: when it shows that more draws are needed, precision at this n would be wasted
        lo, hi, f_lo, f_hi = _illinois(excess, lo, hi, f_lo, f_hi, rtol=_SIGMA_COARSE_RTOL)
        inc = last[lo]
        se = float(inc.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        if se <= rel_se * target or n >= max_mc:
            lo = _illinois(excess, lo, hi, f_lo, f_hi, rtol=_SIGMA_RTOL)[0]
            se = float(last[lo].std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
            if se > rel_se * target:
                notes.append(
                    f"{label}: Monte-Carlo standard error {se:.3g} of the loss increase is above pacbayes_rel_se "
                    f"{rel_se:g} x target after pacbayes_max_samples {max_mc} draws"
                )
            logger.debug("%s: sigma %.4g from %d draws (standard error %.3g)", label, lo, n, se)
            return lo, evals, n
        need = math.ceil(1.2 * n * (se / (rel_se * target)) ** 2) if math.isfinite(se) else 2 * n
        n = min(max_mc, max(2 * n, need))
        start, factor = lo, 1.25


def _illinois(
    f: Callable[[float], float], lo: float, hi: float, f_lo: float, f_hi: float, *, rtol: float
) -> tuple[float, float, float, float]:
    """Shrink [lo, hi] (f(lo) <= 0 < f(hi)) to hi / lo <= 1 + rtol by Illinois regula falsi in log sigma
    (bisection where f is not finite or after 40 steps); return the bracket and f at its ends."""
    side = 0
    steps = 0
    while math.log(hi / lo) > math.log1p(rtol):
        u_lo, u_hi = math.log(lo), math.log(hi)
        steps += 1
        u = 0.5 * (u_lo + u_hi)
        if steps <= 40 and math.isfinite(f_hi) and f_hi > f_lo:
            u = u_hi - f_hi * (u_hi - u_lo) / (f_hi - f_lo)
            # keep the trial point strictly inside, so that the bracket always shrinks
            margin = 0.25 * math.log1p(rtol)
            u = min(max(u, u_lo + margin), u_hi - margin)
        sigma = math.exp(u)
        value = f(sigma)
        if value <= 0:
            lo, f_lo = sigma, value
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            hi, f_hi = sigma, value
            if side == 1:
                f_lo *= 0.5
            side = 1
    return lo, hi, f_lo, f_hi


def _pacbayes_flatness(
    land: _Landscape,
    loss0: float,
    *,
    target: float,
    mc: int,
    max_mc: int,
    rel_se: float,
    seed: int,
    notes: list[str],
) -> dict[str, float]:
    """Jiang et al. (2020) PAC-Bayes flatness: largest sigma keeping the expected loss increase <= target.

    Plain: u ~ N(0, sigma^2 I). Magnitude-aware (the paper's form): u_i ~ N(0, sigma'^2 w_i^2 + eps^2) with
    eps = _MAG_EPS = 1e-3 not scaled by sigma', so sigma' is a relative noise level. Common random numbers
    (the same `mc` draws at every sigma) make the bisection deterministic. Bigger sigma = flatter; the
    1/sigma^2 "sharpness" forms are reported as well. A sigma that no value in [1e-8, 1e3] satisfies is NaN.
    """
    w2 = land.w0 * land.w0

    def plain(sigma: float) -> torch.Tensor:
        return torch.full_like(land.w0, sigma)

    def magnitude(sigma: float) -> torch.Tensor:
        return torch.sqrt(sigma * sigma * w2 + _MAG_EPS**2)

    kw = {"target": target, "mc": mc, "max_mc": max_mc, "rel_se": rel_se, "notes": notes}
    sigma, e1, n1 = _largest_sigma(land, loss0, plain, seed=seed, label="pacbayes_sigma", **kw)
    sigma_mag, e2, n2 = _largest_sigma(land, loss0, magnitude, seed=seed + 1, label="pacbayes_sigma_mag", **kw)
    return {
        "pacbayes_sigma": sigma,
        "pacbayes_sigma_mag": sigma_mag,
        "pacbayes_sharpness": 1.0 / sigma**2,
        "pacbayes_sharpness_mag": 1.0 / sigma_mag**2,
        "pacbayes_evals": float(e1 + e2),
        "pacbayes_mc_draws": float(n1),
        "pacbayes_mc_draws_mag": float(n2),
    }
