"""Cost and convergence of the curvature core on an ~85k-parameter MLP (run: python benchmarks/curvature.py).

Prints (a) one HVP / one full-batch gradient for each HVP implementation, timed side by side;
(b) HVPs that Lanczos and power iteration need for the top eigenvalue to reach 1e-3 relative error
against a converged float64 reference (its residual is checked); (c) Hutchinson probes needed for a 5%
standard error along one probe sequence (from m = 2, and with the default minimum); and the wall time
of every measure through `compute_measures` with the default configuration. Not a test.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gencv.measures import MEASURE_NAMES, MeasureConfig, compute_measures  # noqa: E402
from gencv.measures._hessian import _lanczos, _power_top, _rademacher  # noqa: E402
from gencv.measures._hvp import DEFAULT_HVP_BACKEND, _Landscape  # noqa: E402

HVP_TARGET = 3.0  # one HVP <= 3 gradients
EIG_TARGET = 30  # top eigenvalue to 1e-3 relative error in <= 30 HVPs
EIG_RTOL = 1e-3
REF_RTOL = 1e-6  # the float64 reference must have residual <= this x |lambda|
TRACE_RTOL = 0.05
TRACE_PROBES = 200
SEED = 0


def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    X_np, y_np = make_classification(
        n_samples=2000, n_features=20, n_informative=12, n_redundant=4, n_classes=3, random_state=SEED
    )
    X = torch.tensor(X_np, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.int64)
    torch.manual_seed(SEED)  # benchmark script: fixed init
    model = nn.Sequential(
        nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 248), nn.ReLU(), nn.Linear(248, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(5):  # a few epochs: away from init, not converged
        for idx in torch.randperm(len(X), generator=gen).split(128):
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model, X, y


def _reference_top(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, int, float, float]:
    """Top eigenvalue in float64 (Lanczos to a 1e-12 residual estimate); HVPs; estimated and true residual.

    The true residual ||H x - theta x|| of the unit Ritz vector x is recomputed with one more HVP, so
    it does not rely on the Lanczos vectors staying orthogonal.
    """
    model64 = copy.deepcopy(model).double()
    land = _Landscape(model64, X.double(), y, F.cross_entropy)
    run = _lanczos(land.hvp, land.n_params, 150, gen=torch.Generator().manual_seed(2), dtype=torch.float64,
                   device=land.device, top_k=1, tol=1e-12, keep_basis=True)
    i = int(np.argmax(run.ritz))
    theta = float(run.ritz[i])
    assert run.basis is not None
    x = run.basis.T @ torch.as_tensor(run.ritz_vectors[:, i], dtype=torch.float64)
    x = x / x.norm()
    true_res = float((land.hvp(x) - theta * x).norm())
    land.close()
    return theta, run.hvps, float(run.residuals[i]), true_res


def _median_times(funcs: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall time of each function, interleaved round-robin so load affects all alike."""
    for f in funcs.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in funcs}
    for _ in range(reps):
        for name, f in funcs.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    """Run the benchmark and print the tables."""
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, X, y = _model_and_data()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MLP 20-256-248-64-3: {n_params} parameters, {len(X)} samples, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"training loss after 5 epochs: {F.cross_entropy(model(X), y).item():.4f}\n")

    # (a) HVP cost ------------------------------------------------------------------------------------
    auto = _Landscape(model, X, y, F.cross_entropy, backend="autograd")
    func = _Landscape(model, X, y, F.cross_entropy, backend="func")
    chunked = _Landscape(model, X, y, F.cross_entropy, batch_size=500, backend="autograd")
    chunked_func = _Landscape(model, X, y, F.cross_entropy, batch_size=500, backend="func")
    v = torch.randn(auto.n_params, generator=torch.Generator().manual_seed(1))
    funcs = {
        "gradient (full batch)": auto.loss_and_grad,
        "autograd, cached 1st-order graph": lambda: auto.hvp(v),
        "autograd, graph rebuilt per HVP": lambda: auto._hvp_autograd_chunked(v),
        "torch.func jvp(grad)": lambda: func.hvp(v),
        "autograd, 4 chunks of 500": lambda: chunked.hvp(v),
        "torch.func, 4 chunks of 500": lambda: chunked_func.hvp(v),
    }
    med = _median_times(funcs, reps=15)
    grad_t = med["gradient (full batch)"]
    print("(a) one HVP / one full-batch gradient (median of 15, interleaved)")
    print(f"    {'implementation':<36}{'ms':>9}{'x grad':>9}")
    for name, t in med.items():
        print(f"    {name:<36}{t * 1e3:>9.1f}{t / grad_t:>9.2f}")
    default_key = "autograd, cached 1st-order graph" if DEFAULT_HVP_BACKEND == "autograd" else "torch.func jvp(grad)"
    default_ratio = med[default_key] / grad_t
    print(f"    default backend = {DEFAULT_HVP_BACKEND!r}: {default_ratio:.2f}x gradient  "
          f"target <= {HVP_TARGET:g}x  {_verdict(default_ratio <= HVP_TARGET)}\n")

    # (b) top eigenvalue -------------------------------------------------------------------------------
    dev, dt = auto.device, auto.dtype
    ref, ref_hvps, ref_res_est, ref_res_true = _reference_top(model, X, y)
    print(f"(b) top eigenvalue: reference {ref:.8f} (float64 Lanczos, {ref_hvps} HVPs; residual ||Hx - theta x|| "
          f"{ref_res_true:.1e}, Lanczos estimate {ref_res_est:.1e}; it bounds the distance to some eigenvalue)")
    if not ref_res_true <= REF_RTOL * abs(ref):
        print(f"    WARNING: the reference residual {ref_res_true:.1e} is above {REF_RTOL:g} x |lambda| = "
              f"{REF_RTOL * abs(ref):.1e}: the reference is not converged and the HVP counts below are unreliable")
    run = _lanczos(auto.hvp, auto.n_params, 60, gen=torch.Generator().manual_seed(3), dtype=dt, device=dev)
    lanczos_hvps = None
    for m in range(1, len(run.alphas) + 1):
        off = np.asarray(run.betas[: m - 1])
        T = np.diag(np.asarray(run.alphas[:m])) + np.diag(off, 1) + np.diag(off, -1)
        top = float(np.max(np.linalg.eigvalsh(T)))
        if abs(top - ref) <= EIG_RTOL * abs(ref):
            lanczos_hvps = m
            break
    rayleigh: list[float] = []

    def recording_hvp(q: torch.Tensor) -> torch.Tensor:
        w = auto.hvp(q)
        rayleigh.append(float(q @ w) / float(q @ q))
        return w

    _power_top(recording_hvp, auto.n_params, 1, max_iter=150, tol=1e-9, gen=torch.Generator().manual_seed(3),
               dtype=dt, device=dev)
    power_hvps = next((i + 1 for i, r in enumerate(rayleigh) if abs(r - ref) <= EIG_RTOL * abs(ref)), None)
    print(f"    HVPs to {EIG_RTOL:g} relative error (target <= {EIG_TARGET}):")
    for name, hv in (("Lanczos (full reorth.)", lanczos_hvps), ("power iteration", power_hvps)):
        shown = ">" + str(len(run.alphas) if name.startswith("L") else len(rayleigh)) if hv is None else str(hv)
        print(f"    {name:<36}{shown:>9}  {_verdict(hv is not None and hv <= EIG_TARGET)}")
    for method in ("lanczos", "power"):
        for tol in (1e-3, 1e-4):
            start = time.perf_counter()
            res = compute_measures(model, X, y, F.cross_entropy, ["hessian_top"], seed=SEED,
                                   config=MeasureConfig(sample_size=None, eig_method=method, eig_tol=tol))
            err = abs(res.values["hessian_top_1"] - ref) / abs(ref)
            print(f"    built-in stop, {method:<8} eig_tol {tol:g}: {res.values['hessian_top_iterations']:>3.0f} HVPs, "
                  f"rel. error {err:.1e}, {time.perf_counter() - start:.1f}s")
    print()

    # (c) Hutchinson -----------------------------------------------------------------------------------
    # One seeded probe sequence (the one `_hutchinson` draws), with SE/|trace| after every probe: the
    # first m >= 2 below 5% (what min_probes=2 would report), the default rule (MeasureConfig's minimum), and the m
    # from which it stays below 5% for the rest of the run.
    gen = torch.Generator().manual_seed(4)
    samples: list[float] = []
    rel: list[float] = []
    for _ in range(TRACE_PROBES):
        z = _rademacher(auto.n_params, gen, dt, dev)
        samples.append(float(z @ auto.hvp(z)))
        arr = np.asarray(samples)
        rel.append(float(arr.std(ddof=1) / np.sqrt(arr.size) / abs(arr.mean())) if arr.size > 1 else np.inf)
    rel_arr = np.asarray(rel)
    below = rel_arr <= TRACE_RTOL
    first = next((m + 1 for m in range(1, TRACE_PROBES) if below[m]), None)
    min_default = MeasureConfig().min_trace_probes()
    first_default = next((m + 1 for m in range(min_default - 1, TRACE_PROBES) if below[m]), None)
    stays = next((m + 1 for m in range(1, TRACE_PROBES) if below[m:].all()), None)
    arr = np.asarray(samples)
    print(f"(c) Hutchinson trace: {arr.mean():.4f} +- {arr.std(ddof=1) / np.sqrt(arr.size):.4f} after "
          f"{TRACE_PROBES} probes; probes to {TRACE_RTOL:.0%} standard error:")
    for name, m in (("first m >= 2 (min_probes=2)", first), (f"default rule (min_probes={min_default})", first_default),
                    ("stays below from", stays)):
        print(f"    {name:<36}{'>' + str(TRACE_PROBES) if m is None else str(m):>9}")
    shown = [m for m in (2, 3, 5, 10, 20, 50, 100, 200) if m <= TRACE_PROBES]
    print("    SE/|trace| at m = " + ", ".join(f"{m}: {rel_arr[m - 1]:.3f}" for m in shown) + "\n")
    auto.close()

    # per-measure cost with the default configuration ----------------------------------------------------
    res = compute_measures(model, X, y, F.cross_entropy, MEASURE_NAMES, seed=SEED, config=MeasureConfig())
    print("measure cost, default MeasureConfig (sample_size 512):")
    shared = {"hessian_diag": "probes shared with hessian_trace"} if "hessian_trace" in MEASURE_NAMES else {}
    for name in MEASURE_NAMES:
        print(f"    {name:<22}{res.seconds[name]:>7.2f}s  {shared.get(name, '')}".rstrip())
    print(f"    HVP probes: hessian_trace {res.values['hessian_trace_probes']:.0f}, hessian_diag "
          f"{res.values['hessian_diag_probes']:.0f}, ggn_trace {res.values['ggn_trace_probes']:.0f}")
    print(f"    notes: {res.notes}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
