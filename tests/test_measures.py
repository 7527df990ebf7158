"""Curvature/sharpness measures against dense float64 references on tiny networks."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gencv.measures import (
    MEASURE_NAMES,
    MeasureConfig,
    compute_measures,
    plot_density,
    validate_measure_names,
)
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
        rel_se=1e-12, min_probes=m, max_probes=m,
    )
    exact = torch.diagonal(H)
    off = (H**2).sum(1) - exact**2
    expected = float(torch.sqrt(off / m).mean())  # E|err_i| <= sqrt(Var) = sqrt(off_i / m)
    err = float((est.diag - exact).abs().mean())
    assert err <= 1.2 * expected, (err, expected)
    res = compute_measures(module, X, y, F.cross_entropy, ["hessian_diag"], seed=0, config=_cfg())
    assert res.values["hessian_diag_max"] >= res.values["hessian_diag_mean"]


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


def test_ggn_is_psd_and_below_hessian_norm_for_cross_entropy(trained) -> None:
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
    assert abs(mean_density - mean_exact) <= 4 * se
    assert abs(res.values["hessian_density_mean"] - mean_exact) <= 4 * se
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
    cfg = _cfg()
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
class _Quadratic(nn.Module):
    """Two parameters; with `_quad_loss` the loss is 0.5 * k * ||w - t||^2."""

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
            module = _Quadratic(w)
            res = compute_measures(module, X, y, _quad_loss(k), ["eps_sharpness"], seed=0, config=cfg)
            got = res.values["eps_sharpness"]
            ref = _brute_force_eps(module, X, y, _quad_loss(k), 1e-2)
            assert got > 0
            assert got == pytest.approx(ref, rel=1e-6)
            values.append(got)
    assert values[2] > values[0] and values[3] > values[1]


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
    cfg = MeasureConfig(sample_size=40, trace_max_probes=30)
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
