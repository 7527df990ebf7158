"""Matrix-free spectral algorithms on a symmetric operator: Lanczos, power iteration, Hutchinson."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

logger = logging.getLogger(__name__)

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _random_unit(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    v = torch.randn(n, generator=gen, dtype=dtype).to(device)
    return v / v.norm()


def _rademacher(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (torch.randint(0, 2, (n,), generator=gen).to(dtype) * 2 - 1).to(device)


def _orthogonalize(w: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Remove the span of Q's rows from w (classical Gram-Schmidt, applied twice)."""
    if Q.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - Q.T @ (Q @ w)
    return w


def _tridiag_eig(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alphas, dtype=np.float64)
    if a.size == 1:
        return a.copy(), np.ones((1, 1))
    return eigh_tridiagonal(a, np.asarray(betas[: a.size - 1], dtype=np.float64))


@dataclass
class _LanczosResult:
    """Tridiagonal T (alphas, betas), its eigen-pairs, the HVP count and convergence."""

    alphas: list[float]
    betas: list[float]
    ritz: np.ndarray  # ascending
    ritz_vectors: np.ndarray  # eigenvectors of T, columns
    hvps: int
    converged: bool
    # |beta_m * last component| per Ritz value: in exact arithmetic the residual norm ||A x - theta x|| of
    # its Ritz vector x, which bounds the distance from theta to *some* eigenvalue of A (not necessarily
    # the one theta is meant to approximate).
    residuals: np.ndarray
    basis: torch.Tensor | None = None  # Lanczos vectors (rows), kept only with keep_basis=True


def _lanczos(
    matvec: MatVec,
    n: int,
    steps: int,
    *,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    top_k: int | None = None,
    tol: float = 0.0,
    restart_on_breakdown: bool = False,
    keep_basis: bool = False,
) -> _LanczosResult:
    """Lanczos with full reorthogonalization; stops early when the top-k Ritz residuals are below tol.

    The residual |beta_m s_{m,i}| bounds |theta_i - lambda| for some eigenvalue lambda; convergence
    means residual <= tol * max|theta| for each of the top_k Ritz values. On an invariant subspace
    (beta ~ 0) the run stops (SLQ) or continues with a fresh vector orthogonal to all previous ones
    (`restart_on_breakdown`, so repeated eigenvalues are found with their multiplicity); after a restart,
    convergence also needs the current block's top Ritz value to have converged.
    """
    steps = min(steps, n)
    eps = torch.finfo(dtype).eps
    Q = torch.zeros((steps, n), dtype=dtype, device=device)
    q = _random_unit(n, gen, dtype, device)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    converged = False
    ritz = np.zeros(0)
    vecs = np.zeros((0, 0))
    residuals = np.zeros(0)
    beta_prev = 0.0
    block_start = 0
    for j in range(steps):
        Q[j] = q
        w = matvec(q)
        alpha = float(q @ w)
        w = w - alpha * q
        if j > 0:
            w = w - beta_prev * Q[j - 1]
        w = _orthogonalize(w, Q[: j + 1])
        beta = float(w.norm())
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        breakdown = beta <= 10.0 * math.sqrt(n) * eps * max(scale, 1e-300)
        betas.append(0.0 if breakdown else beta)
        ritz, vecs = _tridiag_eig(alphas, betas)
        residuals = np.abs(betas[-1] * vecs[-1, :])
        if top_k is not None and j + 1 >= top_k:
            top = np.argsort(ritz)[::-1][:top_k]
            bound = tol * float(np.max(np.abs(ritz)))
            done = bool(np.all(residuals[top] <= bound))
            if done and breakdown and restart_on_breakdown and j + 1 < steps:
                done = False  # an invariant subspace: its complement may hold larger (or repeated) values
            elif done and block_start > 0:
                # after a restart, the current block's own top Ritz value must have converged too
                r_b, v_b = _tridiag_eig(alphas[block_start:], betas[block_start:])
                done = abs(betas[-1] * v_b[-1, int(np.argmax(r_b))]) <= bound
            if done:
                converged = True
                break
        if j + 1 == steps:
            converged = converged or (j + 1 == n)
            break
        if breakdown:
            if not restart_on_breakdown:
                converged = True
                break
            q = _orthogonalize(torch.randn(n, generator=gen, dtype=dtype).to(device), Q[: j + 1])
            q = q / q.norm()
            beta_prev = 0.0
            block_start = j + 1
        else:
            q = w / beta
            beta_prev = beta
    basis = Q[: len(alphas)] if keep_basis else None
    return _LanczosResult(alphas, betas, ritz, vecs, len(alphas), converged, residuals, basis)


def _lanczos_top(
    matvec: MatVec, n: int, k: int, *, max_iter: int, tol: float, gen: torch.Generator,
    dtype: torch.dtype, device: torch.device,
) -> tuple[np.ndarray, int, bool]:
    """Top-k (largest algebraic) eigenvalues, descending; HVPs used; converged."""
    res = _lanczos(
        matvec, n, max(max_iter, k), gen=gen, dtype=dtype, device=device, top_k=k, tol=tol,
        restart_on_breakdown=True,
    )
    top = np.sort(res.ritz)[::-1][:k]
    return top, res.hvps, res.converged


def _power_top(
    matvec: MatVec, n: int, k: int, *, max_iter: int, tol: float, gen: torch.Generator,
    dtype: torch.dtype, device: torch.device,
) -> tuple[np.ndarray, int, bool]:
    """Top-k (largest algebraic) eigenvalues by power iteration with deflation; HVPs used; converged.

    Each eigenvector is iterated in the orthogonal complement of those already found (deflation).
    Power iteration finds the largest *magnitude* eigenvalue; when that one is negative it is the
    smallest eigenvalue lambda_min, and the search restarts on H - lambda_min I (positive
    semi-definite), whose largest eigenvalue is the largest algebraic one of H. Stops when the Rayleigh
    quotient's change, extrapolated geometrically (delta * q / (1 - q), q = ratio of successive
    changes), is below tol * |theta|. At most `max_iter` HVPs per eigenvalue (restart included).
    """
    found: list[torch.Tensor] = []
    values: list[float] = []
    shift = 0.0
    hvps = 0
    all_converged = True
    for _ in range(min(k, n)):
        U = torch.stack(found) if found else torch.zeros((0, n), dtype=dtype, device=device)
        budget = max_iter
        while True:
            v = _orthogonalize(_random_unit(n, gen, dtype, device), U)
            v = v / v.norm()
            theta_prev: float | None = None
            delta_prev: float | None = None
            converged = False
            theta = 0.0
            used = 0
            while used < budget:
                w = matvec(v) - shift * v
                used += 1
                w = _orthogonalize(w, U)
                theta = float(v @ w)
                norm = float(w.norm())
                if theta_prev is not None:
                    delta = abs(theta - theta_prev)
                    q = min(delta / delta_prev, 0.99) if delta_prev else 0.99
                    limit = tol * max(abs(theta), 1e-300)
                    if delta <= limit and delta * q / (1.0 - q) <= limit:
                        converged = True
                    delta_prev = delta
                theta_prev = theta
                if norm == 0.0:  # v is in the null space of the (shifted, deflated) operator
                    converged = True
                if converged:
                    break
                v = w / norm
            hvps += used
            budget -= used
            if theta < 0.0 and shift == 0.0 and budget > 0:
                shift = theta  # the most negative eigenvalue of the complement: restart shifted
                continue
            break
        all_converged = all_converged and converged
        found.append(v)
        values.append(theta + shift)
    return np.sort(np.asarray(values))[::-1], hvps, all_converged


@dataclass
class _TraceEstimate:
    """Hutchinson estimate: trace mean, standard error and probes; the diagonal estimate when asked for."""

    mean: float
    se: float
    probes: int
    diag: torch.Tensor | None = None  # mean of z * Az over the first `diag_probes` probes
    diag_se: torch.Tensor | None = None  # per-entry standard error of `diag`
    diag_probes: int = 0


def _hutchinson(
    matvec: MatVec | None,
    n: int,
    *,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    rel_se: float,
    min_probes: int,
    max_probes: int,
    quad: Callable[[torch.Tensor], float] | None = None,
    diag_probes: int = 0,
) -> _TraceEstimate:
    """Trace of a symmetric operator from Rademacher probes z^T A z, adding probes until SE/|mean| < rel_se.

    With `matvec` and `diag_probes` > 0 the diagonal estimate mean(z * Az) is computed from exactly the
    first `diag_probes` probes of the same seeded sequence (probes are drawn until both the trace and
    the diagonal are done), so the trace is the same whether or not the diagonal is asked for, and
    vice versa. `quad` (z -> z^T A z) is used instead of `matvec` when only quadratic forms are
    available (e.g. the Gauss-Newton matrix); then there is no diagonal.
    """
    if matvec is None and quad is None:
        raise ValueError("_hutchinson needs matvec or quad")
    want_diag = matvec is not None and diag_probes > 0
    samples: list[float] = []
    trace_probes = 0  # 0 while the trace is still adding probes
    diag_mean = torch.zeros(n, dtype=dtype, device=device) if want_diag else None
    diag_m2 = torch.zeros(n, dtype=dtype, device=device) if want_diag else None  # Welford: sum of squared deviations
    drawn = 0
    while True:
        trace_done = trace_probes > 0
        diag_done = not want_diag or drawn >= diag_probes
        if trace_done and diag_done:
            break
        z = _rademacher(n, gen, dtype, device)
        drawn += 1
        if matvec is not None:
            zaz = z * matvec(z)
            value = float(zaz.sum())
            if want_diag and drawn <= diag_probes:
                delta = zaz - diag_mean
                diag_mean += delta / drawn  # type: ignore[operator]
                diag_m2 += delta * (zaz - diag_mean)  # type: ignore[operator]
        else:
            value = float(quad(z))  # type: ignore[misc]
        if trace_done:
            continue
        samples.append(value)
        m = len(samples)
        if m >= max_probes:
            trace_probes = m
        elif m >= min_probes:
            arr = np.asarray(samples)
            if float(arr.std(ddof=1) / math.sqrt(m)) <= rel_se * abs(float(arr.mean())):
                trace_probes = m
    arr = np.asarray(samples)
    m = len(samples)
    se = float(arr.std(ddof=1) / math.sqrt(m)) if m > 1 else math.inf
    out = _TraceEstimate(float(arr.mean()), se, m)
    if want_diag:
        k = diag_probes
        var = diag_m2 / (k - 1) if k > 1 else torch.full_like(diag_mean, math.inf)  # type: ignore[operator]
        out.diag, out.diag_se, out.diag_probes = diag_mean, torch.sqrt(var / k), k
    return out
