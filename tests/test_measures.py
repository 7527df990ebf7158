"""Curvature/sharpness measures against dense float64 references on tiny networks."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from torch import nn
from torch.func import functional_call

from gencv.measures import (
    MEASURE_NAMES,
    MeasureConfig,
    compute_measures,
    plot_density,
    validate_measure_names,
)
from gencv.measures._api import _generator, _sub_seed
from gencv.measures._density import _SLQ, _slq_nodes
from gencv.measures._gauss_newton import _ggn_vp
from gencv.measures._hessian import _hutchinson
from gencv.measures._hvp import HVP_BACKENDS, _Landscape

DT = torch.float64


# -- fixtures and references --------------------------------------------------------------------------
def _mlp(
    d_in: int = 4, hidden: tuple[int, ...] = (8, 8), d_out: int = 3, act: type[nn.Module] = nn.Tanh, seed: int = 0
) -> nn.Sequential:
    torch.manual_seed(seed)  # test-only: module init
    layers: list[nn.Module] = []
    prev = d_in
    for h in hidden:
        layers += [nn.Linear(prev, h), act()]
        prev = h
    layers.append(nn.Linear(prev, d_out))
    return nn.Sequential(*layers).to(DT)


def _data(n: int = 64, d: int = 4, classes: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return X, y.clamp(max=classes - 1)


def _train(
    module: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn, steps: int = 150, lr: float = 0.05
) -> nn.Module:
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(module(X), y).backward()
        opt.step()
    return module


def _dense_hessian(module: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in module.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return loss_fn(functional_call(module, parts, (X,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    X, y = _data()
    module = _train(_mlp(), X, y, F.cross_entropy)
    module.eval()
    return module, X, y, _dense_hessian(module, X, y, F.cross_entropy)


def _cfg(**kw) -> MeasureConfig:
    return MeasureConfig(sample_size=None, **kw)


# -- HVP core -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", HVP_BACKENDS)
@pytest.mark.parametrize("batch_size", [None, 7])
def test_hvp_matches_dense(trained, backend: str, batch_size: int | None) -> None:
    module, X, y, H = trained
    land = _Landscape(module, X, y, F.cross_entropy, batch_size=batch_size, backend=backend)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(land.n_params, generator=g, dtype=DT)
        torch.testing.assert_close(land.hvp(v), H @ v, atol=1e-10, rtol=0)


def test_chunked_loss_and_grad_match_full_batch(trained) -> None:
    module, X, y, _ = trained
    full = _Landscape(module, X, y, F.cross_entropy)
    chunked = _Landscape(module, X, y, F.cross_entropy, batch_size=10)
    l1, g1 = full.loss_and_grad()
    l2, g2 = chunked.loss_and_grad()
    assert l1 == pytest.approx(l2, rel=1e-12)
    torch.testing.assert_close(g1, g2, atol=1e-12, rtol=0)


# -- eigenvalues ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue(trained, method: str) -> None:
    module, X, y, H = trained
    exact = torch.linalg.eigvalsh(H)
    cfg = _cfg(eig_method=method, max_iter=300)
    res = compute_measures(module, X, y, F.cross_entropy, ["hessian_top"], seed=0, config=cfg)
    assert res.values["hessian_top_converged"] == 1.0
    assert abs(res.values["hessian_top_1"] - float(exact[-1])) <= 1e-4 * abs(float(exact[-1]))
    assert res.values["hessian_top_iterations"] <= 300


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_k_matches_eigvalsh(trained, method: str) -> None:
    module, X, y, H = trained
    exact = torch.linalg.eigvalsh(H).flip(0)[:3].numpy()  # largest algebraic, descending
    res = compute_measures(
        module, X, y, F.cross_entropy, ["hessian_top"], seed=0,
        config=_cfg(top_k=3, eig_method=method, max_iter=300, eig_tol=1e-6),
    )
    assert res.eigenvalues is not None and list(res.eigenvalues) == sorted(res.eigenvalues, reverse=True)
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-4)
    np.testing.assert_allclose([res.values[f"hessian_top_{i}"] for i in (1, 2, 3)], exact, rtol=1e-4)


def test_lanczos_finds_repeated_eigenvalues() -> None:
    """Linear model + MSE over 2 outputs: every eigenvalue is double; restarts on breakdown find both copies."""
    torch.manual_seed(0)
    module = nn.Linear(3, 2).to(DT)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=DT)
    y = torch.randn(40, 2, generator=g, dtype=DT)
    exact = torch.linalg.eigvalsh(_dense_hessian(module, X, y, F.mse_loss)).flip(0)[:4].numpy()
    res = compute_measures(module, X, y, F.mse_loss, ["hessian_top"], seed=0, config=_cfg(top_k=4))
    np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-8)


def test_power_iteration_finds_largest_algebraic_when_negative_dominates() -> None:
    """diag(-5, 2, 1, ...): power iteration alone finds -5; the shift restart must return 2."""
    from gencv.measures._hessian import _power_top

    diag = torch.tensor([-5.0, 2.0, 1.0, 0.5, 0.1], dtype=DT)
    top, _, converged = _power_top(
        lambda v: diag * v, 5, 2, max_iter=500, tol=1e-8, gen=torch.Generator().manual_seed(0), dtype=DT,
        device=torch.device("cpu"),
    )
    assert converged
    np.testing.assert_allclose(top, [2.0, 1.0], rtol=1e-6)


# -- trace and diagonal ---------------------------------------------------------------------------------
def test_trace_within_three_standard_errors(trained) -> None:
    module, X, y, H = trained
    res = compute_measures(module, X, y, F.cross_entropy, ["hessian_trace"], seed=0, config=_cfg(trace_max_probes=400))
    exact = float(torch.trace(H))
    v = res.values
    assert v["hessian_trace_probes"] >= 10
    assert abs(v["hessian_trace"] - exact) <= 3 * v["hessian_trace_se"]
    if v["hessian_trace_probes"] < 400:
        assert v["hessian_trace_se"] <= 0.05 * abs(v["hessian_trace"])


def test_diagonal_estimate(trained) -> None:
    """Mean |error| of mean(z * Hz) over m probes vs its expected size sqrt(sum_{j!=i} H_ij^2 / m)."""
    module, X, y, H = trained
    land = _Landscape(module, X, y, F.cross_entropy)
    m = 2000
    est = _hutchinson(
        land.hvp, land.n_params, gen=torch.Generator().manual_seed(0), dtype=DT, device=torch.device("cpu"),
        rel_se=1e-12, min_probes=2, max_probes=2, diag_probes=m,
    )
    assert est.diag is not None and est.diag_se is not None and est.diag_probes == m
    exact = torch.diagonal(H)
    off = (H**2).sum(1) - exact**2
    sd = torch.sqrt(off / m)  # exact standard deviation of each entry's estimate
    expected = float(sd.mean())  # E|err_i| <= sqrt(Var) = sqrt(off_i / m)
    err = float((est.diag - exact).abs().mean())
    assert err <= 1.2 * expected, (err, expected)
    # the reported per-entry standard errors estimate those standard deviations (2000 probes: a few %)
    assert float(est.diag_se.mean()) == pytest.approx(expected, rel=0.05)


def test_hessian_diag_summary_against_the_exact_diagonal(trained) -> None:
    module, X, y, H = trained
    k = 400
    cfg = _cfg(diag_probes=k)
    res = compute_measures(module, X, y, F.cross_entropy, ["hessian_diag"], seed=0, config=cfg).values
    exact = torch.diagonal(H)
    n = exact.numel()
    off = (H**2).sum(1) - exact**2
    sd = torch.sqrt(off / k)
    assert res["hessian_diag_probes"] == k and "hessian_trace" not in res
    # mean = (z^T H z averaged over k probes) / n, variance 2 sum_{i!=j} H_ij^2 / k / n^2: within 3 SE
    se_mean = math.sqrt(2.0 * float(off.sum()) / k) / n
    assert abs(res["hessian_diag_mean"] - float(exact.mean())) <= 3 * se_mean
    # |max est - max exact| <= max_i |err_i|; with 139 entries, 4 SD each (Gaussian tail 6e-5 per entry)
    assert abs(res["hessian_diag_max"] - float(exact.max())) <= 4 * float(sd.max())
    assert abs(res["hessian_diag_min"] - float(exact.min())) <= 4 * float(sd.max())
    # the reported standard errors against the exact ones: their mean, and the one of the entry at the max
    # (a standard deviation estimated from 400 probes is good to ~1/sqrt(800) = 3.5%; tolerance 15%)
    assert res["hessian_diag_entry_se"] == pytest.approx(float(sd.mean()), rel=0.15)
    land = _Landscape(module, X, y, F.cross_entropy)
    est = _hutchinson(
        land.hvp, land.n_params, gen=_generator(0, "hutchinson"), dtype=DT, device=torch.device("cpu"),
        rel_se=1.0, min_probes=2, max_probes=2, diag_probes=k,
    )
    i_max = int(torch.argmax(est.diag))
    assert res["hessian_diag_max"] == float(est.diag[i_max])
    assert res["hessian_diag_max_se"] == pytest.approx(float(sd[i_max]), rel=0.15)
    # the diagonal has its own probe budget and does not change the trace (nor the trace the diagonal)
    both = compute_measures(module, X, y, F.cross_entropy, ["hessian_trace", "hessian_diag"], seed=0, config=cfg).values
    alone = compute_measures(module, X, y, F.cross_entropy, ["hessian_trace"], seed=0, config=cfg).values
    assert {key: both[key] for key in alone} == alone
    assert {key: both[key] for key in res} == res


# -- Gauss-Newton and Fisher ----------------------------------------------------------------------------
def test_ggn_equals_hessian_for_linear_model_with_squared_loss() -> None:
    torch.manual_seed(0)
    module = nn.Linear(3, 2).to(DT)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=DT)
    y = torch.randn(40, 2, generator=g, dtype=DT)
    H = _dense_hessian(module, X, y, F.mse_loss)
    land = _Landscape(module, X, y, F.mse_loss, batch_size=16)
    eye = torch.eye(land.n_params, dtype=DT)
    G = torch.stack([_ggn_vp(land, e) for e in eye], dim=1)
    torch.testing.assert_close(G, H, atol=1e-10, rtol=0)
    res = compute_measures(module, X, y, F.mse_loss, ["ggn_trace", "hessian_trace"], seed=0, config=_cfg())
    exact = float(torch.trace(H))
    assert abs(res.values["ggn_trace"] - exact) <= 3 * res.values["ggn_trace_se"] + 1e-12


def _dense_ggn(module: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense J^T H_out J (J: Jacobian of the outputs, H_out: output-space Hessian of the loss) and H_out."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in module.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view(s) for n, t, s in zip(names, theta.split([p.numel() for p in params]), shapes)}
        return functional_call(module, parts, (X,))

    out = outputs(flat).detach()
    J = torch.autograd.functional.jacobian(outputs, flat).reshape(out.numel(), flat.numel())
    H_out = torch.autograd.functional.hessian(lambda o: loss_fn(o.view_as(out), y), out.reshape(-1))
    return J.T @ H_out @ J, H_out


@pytest.mark.parametrize("batch_size", [None, 7])
def test_ggn_matches_dense_jt_hout_j_on_a_nonlinear_net(trained, batch_size: int | None) -> None:
    """tanh MLP + cross-entropy: the GGN-vector product and ggn_trace against a dense float64 J^T H_out J."""
    module, X, y, H = trained
    G, H_out = _dense_ggn(module, X, y, F.cross_entropy)
    # the reference's H_out is the known one: block-diagonal (diag(p) - p p^T) / N for mean cross-entropy
    p = torch.softmax(module(X).detach(), dim=1)
    blocks = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / X.shape[0]
    torch.testing.assert_close(H_out, torch.block_diag(*blocks), atol=1e-14, rtol=0)
    assert not torch.allclose(G, H, atol=1e-3)  # a nonlinear net: the GGN is not the Hessian
    land = _Landscape(module, X, y, F.cross_entropy, batch_size=batch_size)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(land.n_params, generator=g, dtype=DT)
        torch.testing.assert_close(_ggn_vp(land, v), G @ v, atol=1e-12, rtol=1e-10)
    res = compute_measures(
        module, X, y, F.cross_entropy, ["ggn_trace"], seed=0, config=_cfg(batch_size=batch_size)
    )
    exact = float(torch.trace(G))
    assert abs(res.values["ggn_trace"] - exact) <= 3 * res.values["ggn_trace_se"], (res.values, exact)


def test_ggn_is_symmetric_psd_for_cross_entropy(trained) -> None:
    module, X, y, H = trained
    land = _Landscape(module, X, y, F.cross_entropy)
    G = torch.stack([_ggn_vp(land, e) for e in torch.eye(land.n_params, dtype=DT)], dim=1)
    torch.testing.assert_close(G, G.T, atol=1e-10, rtol=0)
    assert float(torch.linalg.eigvalsh(G)[0]) >= -1e-10


def test_fisher_trace_equals_per_sample_loop(trained) -> None:
    module, X, y, _ = trained
    res = compute_measures(module, X, y, F.cross_entropy, ["fisher_trace"], seed=0, config=_cfg())
    total = 0.0
    for i in range(X.shape[0]):
        module.zero_grad()
        F.cross_entropy(module(X[i : i + 1]), y[i : i + 1]).backward()
        total += sum(float((p.grad**2).sum()) for p in module.parameters())
    module.zero_grad(set_to_none=True)
    assert res.values["fisher_trace"] == pytest.approx(total / X.shape[0], rel=1e-10)


# -- spectral density -----------------------------------------------------------------------------------
def _slq(module: nn.Module, X: torch.Tensor, y: torch.Tensor, probes: int, steps: int, seed: int = 0) -> _SLQ:
    land = _Landscape(module, X, y, F.cross_entropy)
    gen = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    return _slq_nodes(land.hvp, land.n_params, probes=probes, steps=steps, gen=gen, dtype=DT, device=cpu)


def _cdf_mc_sd_integral(eig: np.ndarray, probes: int) -> float:
    """Integral over lambda of the standard deviation of the SLQ CDF at lambda (exact quadrature, m = n).

    With a full Lanczos run a probe's measure is sum_i q_i^2 delta(lambda_i), q uniform on the sphere, so
    its CDF at lambda is Beta(k/2, (n-k)/2)-distributed (k eigenvalues <= lambda): mean F = k/n, variance
    2F(1-F)/(n+2); averaged over `probes` probes. E[W1] = int E|F_slq - F| <= this integral.
    """
    n = eig.size
    grid = np.linspace(eig[0], eig[-1], 20001)
    cdf = np.searchsorted(eig, grid, side="right") / n
    return float(np.sum(np.sqrt(2.0 * cdf * (1.0 - cdf) / ((n + 2) * probes))) * (grid[1] - grid[0]))


def _cms_edge_error(nodes: np.ndarray, weights: np.ndarray, lam: float) -> float:
    """Chebyshev-Markov-Stieltjes: a Gauss rule's CDF and its measure's differ at lam by at most the
    weight of one of the two nodes around lam."""
    below = nodes <= lam
    left = float(weights[below][np.argmax(nodes[below])]) if below.any() else 0.0
    right = float(weights[~below][np.argmin(nodes[~below])]) if (~below).any() else 0.0
    return max(left, right)


def test_slq_quadrature_matches_exact_spectrum(trained) -> None:
    """The raw SLQ measure (Ritz values, weights; before broadening) against eigvalsh of the dense Hessian."""
    module, X, y, H = trained
    eig = torch.linalg.eigvalsh(H).numpy()
    n, probes, steps = eig.size, 20, 40
    slq = _slq(module, X, y, probes, steps)
    assert slq.hvps == probes * steps and slq.nodes.size == probes * steps
    # each probe's Gauss weights are a probability vector (squared first components of T's eigenvectors)
    per_probe = np.array([slq.weights[slq.probe == i].sum() for i in range(probes)]) * probes
    np.testing.assert_allclose(per_probe, 1.0, rtol=0, atol=1e-12)
    assert np.all(slq.weights >= 0)
    # Cauchy interlacing: Ritz values lie inside the spectrum (round-off margin 1e-10 of its span)
    span = eig[-1] - eig[0]
    assert slq.nodes.min() >= eig[0] - 1e-10 * span and slq.nodes.max() <= eig[-1] + 1e-10 * span
    # 1-Wasserstein distance to the uniform measure on the exact eigenvalues: <= 3x its Monte-Carlo size.
    # (Gauss quadrature with 40 of 139 steps adds a little; here W1 is ~0.3-1.5x the MC size over seeds.)
    tol = 3.0 * _cdf_mc_sd_integral(eig, probes)
    w1 = wasserstein_distance(slq.nodes, eig, u_weights=slq.weights)
    assert w1 <= tol, (w1, tol)
    assert tol <= 0.02 * span  # the check has power: the same measure vs a spectrum shifted by 3% of its span
    assert wasserstein_distance(slq.nodes, eig + 0.03 * span, u_weights=slq.weights) > tol
    # Mass of |lambda| < delta against the exact fraction: 3 Monte-Carlo SDs plus the quadrature error at the
    # two bin edges (Chebyshev-Markov-Stieltjes, per probe, averaged).
    delta = 0.1 * span
    p = float(np.mean(np.abs(eig) < delta))
    assert 0.5 < p < 1.0  # a bin that holds most (not all) of the spectrum
    sd = math.sqrt(2.0 * p * (1.0 - p) / ((n + 2) * probes))
    edge = np.mean([
        _cms_edge_error(slq.nodes[slq.probe == i], slq.weights[slq.probe == i] * probes, lam)
        for i in range(probes) for lam in (-delta, delta)
    ]) * 2
    mass = float(slq.weights[np.abs(slq.nodes) < delta].sum())
    assert abs(mass - p) <= 3 * sd + edge, (mass, p, sd, edge)
    # First moment: each probe's sum_j w_j theta_j = v^T H v for a unit Gaussian v: mean trace/n, variance
    # 2 (mean(lambda^2) - mean(lambda)^2) / (n + 2).
    se = math.sqrt(2.0 * (np.mean(eig**2) - eig.mean() ** 2) / (n + 2) / probes)
    assert abs(float(np.sum(slq.weights * slq.nodes)) - eig.mean()) <= 3 * se


def test_density_integrates_to_one_and_sits_on_the_spectrum(trained, tmp_path) -> None:
    module, X, y, H = trained
    probes = 20
    res = compute_measures(
        module, X, y, F.cross_entropy, ["hessian_density", "hessian_top"], seed=0,
        config=_cfg(density_probes=probes, density_steps=40),
    )
    assert res.density is not None
    grid, dens = res.density
    assert np.all(dens >= 0)
    assert np.sum((dens[1:] + dens[:-1]) * np.diff(grid)) / 2 == pytest.approx(1.0, abs=1e-3)
    eig = torch.linalg.eigvalsh(H).numpy()
    margin = 0.05 * (eig[-1] - eig[0])
    inside = (grid >= eig[0] - margin) & (grid <= eig[-1] + margin)
    g_in, d_in = grid[inside], dens[inside]
    assert np.sum((d_in[1:] + d_in[:-1]) * np.diff(g_in)) / 2 >= 0.95
    # Mean of the density: sum of v^T H v over unit Gaussian probes / probes, unbiased for trace/n.
    n = eig.size
    mean_exact = eig.mean()
    se = math.sqrt(2.0 * (np.mean(eig**2) - mean_exact**2) / (n + 2) / probes)
    mean_density = np.sum(grid * dens) * (grid[1] - grid[0])
    assert abs(mean_density - mean_exact) <= 3 * se
    assert abs(res.values["hessian_density_mean"] - mean_exact) <= 3 * se
    out = tmp_path / "sub" / "density.png"
    plot_density(grid, dens, out, eigenvalues=res.eigenvalues)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- rescaling invariance -------------------------------------------------------------------------------
def test_rescaling_invariance_of_adaptive_measures() -> None:
    X, y = _data(n=80, d=4)
    base = _train(_mlp(hidden=(10, 10), act=nn.ReLU, seed=2), X, y, F.cross_entropy, steps=200)
    scaled = _mlp(hidden=(10, 10), act=nn.ReLU, seed=2)
    scaled.load_state_dict(base.state_dict())
    a = 5.0
    with torch.no_grad():
        scaled[0].weight.mul_(a)
        scaled[0].bias.mul_(a)
        scaled[2].weight.div_(a)
    torch.testing.assert_close(scaled(X), base(X), atol=1e-10, rtol=0)
    names = ["hessian_top", "adaptive_sharpness", "pacbayes_flatness"]
    cfg = _cfg(pacbayes_max_samples=64)  # the same (capped) draw count for both nets: same draws
    r1 = compute_measures(base, X, y, F.cross_entropy, names, seed=5, config=cfg).values
    r2 = compute_measures(scaled, X, y, F.cross_entropy, names, seed=5, config=cfg).values
    assert abs(r2["hessian_top_1"] / r1["hessian_top_1"] - 1) > 0.10
    # Same seed => same directions in the |w|-scaled space: equal up to round-off (rtol 1e-6).
    assert r2["adaptive_sharpness_worst"] == pytest.approx(r1["adaptive_sharpness_worst"], rel=1e-6)
    assert r2["adaptive_sharpness_avg"] == pytest.approx(r1["adaptive_sharpness_avg"], rel=1e-6)
    # Magnitude-aware noise differs only through the 1e-3 floor; bisection precision 1e-3: rtol 2e-2.
    assert r2["pacbayes_sigma_mag"] == pytest.approx(r1["pacbayes_sigma_mag"], rel=2e-2)
    assert r1["adaptive_sharpness_worst"] > 0


# -- eps-sharpness --------------------------------------------------------------------------------------
class _TwoParams(nn.Module):
    """Two parameters w, output w per sample: with `_quad_loss` the loss is 0.5 * k * ||w - t||^2; with
    `_coupled_loss`, (ab - 1)^2 + sin(3a + 2b) / 2 (coupled, non-convex)."""

    def __init__(self, w: tuple[float, float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=DT))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.w.expand(X.shape[0], 2)


def _quad_loss(k: float):
    return lambda out, t: 0.5 * k * ((out - t) ** 2).sum(dim=1).mean()


def _brute_force_eps(module: nn.Module, X, y, loss_fn, eps: float, n_grid: int = 41) -> float:
    w = module.w.detach()
    delta = eps * (w.abs() + 1)
    base = float(loss_fn(module(X), y).detach())
    best = base
    for a, b in itertools.product(np.linspace(-1, 1, n_grid), repeat=2):
        ww = w + torch.tensor([a, b], dtype=DT) * delta
        best = max(best, float(loss_fn(ww.expand(X.shape[0], 2), y)))
    return 100 * (best - base) / (1 + base)


def test_eps_sharpness_matches_brute_force_and_orders_curvature() -> None:
    X = torch.zeros(5, 1, dtype=DT)
    y = torch.tensor([[1.0, -2.0]], dtype=DT).expand(5, 2).clone()
    cfg = _cfg(eps=1e-2)
    values = []
    for k in (1.0, 10.0):
        for w in ((0.3, 0.7), (1.0, -2.0)):  # off the minimum, and exactly at it (gradient 0)
            module = _TwoParams(w)
            res = compute_measures(module, X, y, _quad_loss(k), ["eps_sharpness"], seed=0, config=cfg)
            got = res.values["eps_sharpness"]
            ref = _brute_force_eps(module, X, y, _quad_loss(k), 1e-2)
            assert got > 0
            assert got == pytest.approx(ref, rel=1e-6)
            values.append(got)
    assert values[2] > values[0] and values[3] > values[1]


def _coupled_loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, b = out[:, 0], out[:, 1]
    return ((a * b - t[:, 0]) ** 2 + 0.5 * torch.sin(3 * a + 2 * b)).mean()


@pytest.mark.parametrize(
    ("w", "eps"),
    [((0.5, 0.8), 0.3), ((0.3, -0.6), 0.2)],  # maximum inside an edge / at another corner than the start
)
def test_eps_sharpness_finds_a_maximum_away_from_the_start_corner(w: tuple[float, float], eps: float) -> None:
    X = torch.zeros(4, 1, dtype=DT)
    y = torch.ones(4, 1, dtype=DT)
    module = _TwoParams(w)
    res = compute_measures(module, X, y, _coupled_loss, ["eps_sharpness"], seed=0, config=_cfg(eps=eps))
    # brute force on an 801 x 801 grid of the box |z_i| <= eps (|w_i| + 1)
    w0 = module.w.detach()
    delta = eps * (w0.abs() + 1)
    u = torch.linspace(-1, 1, 801, dtype=DT)
    A, B = torch.meshgrid(u, u, indexing="ij")
    grid = torch.stack([w0[0] + A.reshape(-1) * delta[0], w0[1] + B.reshape(-1) * delta[1]], dim=1)
    losses = (grid[:, 0] * grid[:, 1] - 1) ** 2 + 0.5 * torch.sin(3 * grid[:, 0] + 2 * grid[:, 1])
    base = float(_coupled_loss(w0.expand(4, 2), y))
    ref = 100 * (float(losses.max()) - base) / (1 + base)
    # the start corner (sign of the gradient) is not where the maximum is
    wt = w0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_coupled_loss(wt.expand(4, 2), y), wt)
    best = grid[int(torch.argmax(losses))]
    assert not torch.allclose(best, w0 + torch.sign(g) * delta, atol=1e-9)
    corner = float(_coupled_loss((w0 + torch.sign(g) * delta).expand(4, 2), y))
    assert 100 * (corner - base) / (1 + base) < ref - 1.0  # starting corner is worse by > 1 point
    assert res.values["eps_sharpness_evals"] > 1
    # grid spacing 2.5e-3 * delta: the grid maximum is below the true one by ~1e-5 relative at most
    assert res.values["eps_sharpness"] == pytest.approx(ref, rel=1e-5)


@pytest.fixture(scope="module")
def half_trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A briefly trained MLP (loss ~0.3): its loss has several local maxima in the larger eps boxes."""
    X, y = _data()
    module = _train(_mlp(), X, y, F.cross_entropy, steps=40, lr=0.02)
    module.eval()
    return module, X, y


def _multistart_eps(module: nn.Module, X, y, eps: float, starts: int = 6) -> float:
    """Reference eps-sharpness: L-BFGS-B (float64, tight tolerances) from w and `starts` uniform points of the box."""
    from scipy.optimize import Bounds, minimize

    land = _Landscape(module, X, y, F.cross_entropy)
    loss0 = land.loss()
    delta = (eps * (land.w0.abs() + 1)).numpy()
    rng = np.random.default_rng(123)

    def neg(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = land.loss_and_grad(land.w0 + torch.from_numpy(z))
        return -value, -grad.numpy()

    best = loss0
    for x0 in [np.zeros_like(delta)] + [rng.uniform(-1, 1, delta.shape) * delta for _ in range(starts)]:
        out = minimize(
            neg, x0, jac=True, method="L-BFGS-B", bounds=Bounds(-delta, delta),
            options={"maxiter": 5000, "maxfun": 20000, "ftol": 1e-12, "gtol": 1e-10},
        )
        best = max(best, -float(out.fun))
    return 100 * (best - loss0) / (1 + loss0)


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 5e-2, 0.2])
def test_eps_sharpness_matches_a_multistart_reference(half_trained, eps: float) -> None:
    """With the default settings the measure is within 2% of a 7-start L-BFGS-B maximum (the old 10-iteration
    single run was 3-26% below at eps >= 0.01 on this net)."""
    module, X, y = half_trained
    res = compute_measures(module, X, y, F.cross_entropy, ["eps_sharpness"], seed=0, config=_cfg(eps=eps))
    ref = _multistart_eps(module, X, y, eps)
    assert res.values["eps_sharpness"] == pytest.approx(ref, rel=2e-2)
    assert not any(n.startswith("eps_sharpness") for n in res.notes)


# -- PAC-Bayes flatness ---------------------------------------------------------------------------------
def _pacbayes_draws(seed: int, n: int, mc: int) -> torch.Tensor:
    """The Monte-Carlo draws `pacbayes_flatness` uses with this (derived) seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(n, generator=gen, dtype=DT) for _ in range(mc)])


@pytest.mark.parametrize(
    ("w", "k", "target"),
    [((1.0, -2.0), 10.0, 0.1), ((1e-3, 2e-3), 1.0, 2e-6)],  # second: the eps = 1e-3 floor matters
)
def test_pacbayes_sigma_solves_the_quadratic_in_closed_form(w: tuple[float, float], k: float, target: float) -> None:
    """At the minimum of 0.5 k ||w - t||^2 the Monte-Carlo loss increase is 0.5 k mean_s sum_i std_i^2 xi_si^2.

    Plain: std_i = sigma. Magnitude-aware (Jiang et al. 2020): std_i^2 = sigma'^2 w_i^2 + 1e-3^2. Solving
    for the sigma at which the increase equals the target gives the answer the bisection must bracket
    (it returns the lower end, within a factor 1.001).
    """
    X = torch.zeros(3, 1, dtype=DT)
    y = torch.tensor([w], dtype=DT).expand(3, 2).clone()
    mc = 10
    cfg = _cfg(pacbayes_target=target, pacbayes_mc_samples=mc, pacbayes_max_samples=mc)  # fixed draws
    res = compute_measures(_TwoParams(w), X, y, _quad_loss(k), ["pacbayes_flatness"], seed=3, config=cfg)
    seed = _sub_seed(3, "pacbayes_flatness")
    xi2 = _pacbayes_draws(seed, 2, mc) ** 2
    sigma = math.sqrt(target / (0.5 * k * float(xi2.sum(1).mean())))
    xi2 = _pacbayes_draws(seed + 1, 2, mc) ** 2
    w2 = torch.tensor(w, dtype=DT) ** 2
    s0, s1 = float(xi2.sum(1).mean()), float((xi2 * w2).sum(1).mean())
    sigma_mag = math.sqrt((target / (0.5 * k) - 1e-6 * s0) / s1)
    for got, exact in ((res.values["pacbayes_sigma"], sigma), (res.values["pacbayes_sigma_mag"], sigma_mag)):
        assert exact / 1.001 * (1 - 1e-9) <= got <= exact * (1 + 1e-9), (got, exact)
    assert res.values["pacbayes_sharpness_mag"] == pytest.approx(1 / res.values["pacbayes_sigma_mag"] ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pacbayes_sigma_reaches_the_target_under_fresh_draws(half_trained, seed: int) -> None:
    """At the returned sigmas, the loss increase averaged over 500 fresh draws is within 10% of the target
    (10 fixed draws, as before, gave 0.074-0.128 for the 0.1 target on this net)."""
    module, X, y = half_trained
    res = compute_measures(module, X, y, F.cross_entropy, ["pacbayes_flatness"], seed=seed, config=_cfg())
    land = _Landscape(module, X, y, F.cross_entropy)
    loss0 = land.loss()
    gen = torch.Generator().manual_seed(10_000 + seed)
    xis = torch.randn(500, land.n_params, generator=gen, dtype=DT)
    stds = (
        torch.full_like(land.w0, res.values["pacbayes_sigma"]),
        torch.sqrt(res.values["pacbayes_sigma_mag"] ** 2 * land.w0**2 + 1e-6),
    )
    for std in stds:
        increase = float(np.mean([land.loss(land.w0 + std * xi) for xi in xis])) - loss0
        assert abs(increase - 0.1) <= 0.1 * 0.1, increase
    assert not any(n.startswith("pacbayes") for n in res.notes)


def test_pacbayes_reports_nan_with_a_note_when_no_sigma_is_small_enough() -> None:
    X = torch.zeros(3, 1, dtype=DT)
    y = torch.tensor([[1.0, -2.0]], dtype=DT).expand(3, 2).clone()
    cfg = _cfg(pacbayes_target=1e-30, pacbayes_mc_samples=2)
    res = compute_measures(_TwoParams((1.0, -2.0)), X, y, _quad_loss(10.0), ["pacbayes_flatness"], seed=0, config=cfg)
    for key in ("pacbayes_sigma", "pacbayes_sigma_mag", "pacbayes_sharpness", "pacbayes_sharpness_mag"):
        assert key not in res.values
    assert "pacbayes_evals" in res.values
    for label in ("pacbayes_sigma", "pacbayes_sigma_mag"):
        assert any(n.startswith(f"{label}: ") and "no sigma satisfies it, reported NaN" in n for n in res.notes)


# -- modes, buffers, parameters ---------------------------------------------------------------------------
def test_batchnorm_dropout_net_is_left_untouched() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).to(DT)
    X, y = _data(n=48)
    _train(module, X, y, F.cross_entropy, steps=30)
    module.train()
    module[3].eval()  # mixed modes must be restored per submodule
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x_before, y_before = X.clone(), y.clone()
    cfg = _cfg(top_k=2, trace_max_probes=20, density_steps=10)
    for name in MEASURE_NAMES:
        res = compute_measures(module, X, y, F.cross_entropy, [name], seed=1, config=cfg, init_state=before)
        assert res.values and all(math.isfinite(v) for v in res.values.values())
        assert module.training and module[1].training and not module[3].training
        for k, v in module.state_dict().items():
            assert torch.equal(v, before[k]), (name, k)
    assert torch.equal(X, x_before) and torch.equal(y, y_before)
    # eval mode inside: dropout off, so two calls agree exactly
    r1 = compute_measures(module, X, y, F.cross_entropy, ["eps_sharpness"], seed=1, config=cfg)
    r2 = compute_measures(module, X, y, F.cross_entropy, ["eps_sharpness"], seed=1, config=cfg)
    assert r1.values == r2.values


def test_other_input_shapes_and_float32() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    X = torch.randn(20, 1, 8, 8)
    y = torch.randint(0, 2, (20,))
    res = compute_measures(conv, X, y, F.cross_entropy, ["norms", "hessian_top", "fisher_trace"], seed=0, config=_cfg())
    kernel = conv[0].weight.detach().reshape(3, -1).double()
    assert res.values["norm_spectral_0_weight"] == pytest.approx(float(torch.linalg.matrix_norm(kernel, 2)), rel=1e-6)
    assert res.values["n_params"] == sum(p.numel() for p in conv.parameters())

    class GRUReg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(2, 4, batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    rnn = GRUReg()
    Xs = torch.randn(16, 5, 2)
    ys = torch.randn(16, 1)
    names = ["hessian_trace", "ggn_trace", "eps_sharpness", "fisher_trace"]
    res = compute_measures(rnn, Xs, ys, F.mse_loss, names, seed=0, config=_cfg(trace_max_probes=20))
    assert all(math.isfinite(v) for v in res.values.values())
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", k) for k in res.values)


# -- seeding ----------------------------------------------------------------------------------------------
def test_same_seed_same_numbers_different_seed_different_probes(trained) -> None:
    module, X, y, _ = trained
    names = ["hessian_trace", "ggn_trace", "hessian_density", "adaptive_sharpness", "pacbayes_flatness", "hessian_top"]
    cfg = MeasureConfig(sample_size=40, trace_max_probes=30, pacbayes_max_samples=64)
    a = compute_measures(module, X, y, F.cross_entropy, names, seed=11, config=cfg)
    b = compute_measures(module, X, y, F.cross_entropy, names, seed=11, config=cfg)
    c = compute_measures(module, X, y, F.cross_entropy, names, seed=12, config=cfg)
    assert a.values == b.values
    np.testing.assert_array_equal(a.density[1], b.density[1])
    for key in ("hessian_trace", "ggn_trace", "hessian_density_mean", "adaptive_sharpness_avg", "loss"):
        assert a.values[key] != c.values[key], key


# -- errors ---------------------------------------------------------------------------------------------
def test_unknown_measure_name_suggests() -> None:
    with pytest.raises(ValueError, match=re.compile(r"did you mean 'hessian_top'\?", re.IGNORECASE)):
        validate_measure_names(["hessian_tpo"])
    assert validate_measure_names(["norms", "hessian_top", "norms"]) == ["norms", "hessian_top"]
    with pytest.raises(TypeError):
        validate_measure_names("norms")


def test_errors_and_notes(trained) -> None:
    module, X, y, _ = trained
    frozen = nn.Linear(4, 3).to(DT).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        compute_measures(frozen, X, y, F.cross_entropy, ["norms"], seed=0)
    with pytest.raises(ValueError, match="empty"):
        compute_measures(module, X[:0], y[:0], F.cross_entropy, ["norms"], seed=0)
    with pytest.raises(ValueError, match="(?i)did you mean"):
        compute_measures(module, X, y, F.cross_entropy, ["hessian_trac"], seed=0)
    with pytest.raises(ValueError, match="eig_method"):
        MeasureConfig(eig_method="lanczoz")
    with pytest.raises(ValueError, match="trace_max_probes"):
        MeasureConfig(trace_min_probes=20, trace_max_probes=10)
    res = compute_measures(module, X, y, F.cross_entropy, ["norms"], seed=0, config=MeasureConfig(sample_size=1000))
    assert res.values["sample_size"] == X.shape[0]
    assert any("sample_size 1000 > fold size 64: used all 64" in n for n in res.notes)
    with pytest.raises(ValueError, match="init_state"):
        compute_measures(module, X, y, F.cross_entropy, ["norms"], seed=0, init_state={})
