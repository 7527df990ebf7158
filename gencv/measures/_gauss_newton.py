"""Gauss-Newton (J^T H_out J) products and the empirical Fisher from per-sample gradients."""

from __future__ import annotations

import logging

import torch
from torch.func import functional_call, grad as func_grad, jvp, vjp, vmap

from gencv.measures._hvp import _Landscape

logger = logging.getLogger(__name__)

#: Per-sample gradients are materialised in chunks of at most this many elements (chunk * n_params).
_PER_SAMPLE_BUDGET = 2**24


def _output_hvp(
    land: _Landscape, out: torch.Tensor, yc: torch.Tensor, weight: float, u: torch.Tensor
) -> torch.Tensor:
    """Hessian of the (weighted) chunk loss w.r.t. the module outputs, times `u`."""
    with torch.enable_grad():
        o = out.detach().requires_grad_(True)
        value = land.loss_fn(o, yc) * weight
        (g,) = torch.autograd.grad(value, o, create_graph=True)
        if not g.requires_grad:  # loss linear in the outputs
            return torch.zeros_like(u)
        (hu,) = torch.autograd.grad(g, o, grad_outputs=u, allow_unused=True)
    return torch.zeros_like(u) if hu is None else hu


def _ggn_quad(land: _Landscape, z: torch.Tensor) -> float:
    """z^T G z with G = J^T H_out J: one Jacobian-vector product per chunk, no backward through the net."""
    total = 0.0
    for Xc, yc, weight in land.chunks:
        out, u = jvp(lambda th, Xc=Xc: land.outputs(th, Xc), (land.w0,), (z,))
        total += float((u * _output_hvp(land, out, yc, weight, u)).sum())
    return total


def _ggn_vp(land: _Landscape, v: torch.Tensor) -> torch.Tensor:
    """Gauss-Newton matrix times `v`: J^T (H_out (J v)), summed over chunks."""
    result = torch.zeros_like(v)
    for Xc, yc, weight in land.chunks:
        out, u = jvp(lambda th, Xc=Xc: land.outputs(th, Xc), (land.w0,), (v,))
        hu = _output_hvp(land, out, yc, weight, u)
        _, pullback = vjp(lambda th, Xc=Xc: land.outputs(th, Xc), land.w0)
        (jt,) = pullback(hu)
        result += jt
    return result


def _per_sample_sq_norms_vmap(land: _Landscape, Xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    def sample_loss(theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(land.module, land.unflatten(theta), (x.unsqueeze(0),))
        return land.loss_fn(out, t.unsqueeze(0))

    grads = vmap(func_grad(sample_loss), in_dims=(None, 0, 0))(land.w0, Xc, yc)
    return (grads * grads).sum(dim=1)


def _per_sample_sq_norms_loop(land: _Landscape, Xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    out = torch.empty(Xc.shape[0], dtype=land.dtype, device=land.device)
    with torch.enable_grad():
        for i in range(Xc.shape[0]):
            th = land.w0.detach().requires_grad_(True)
            value = land.chunk_loss(th, Xc[i : i + 1], yc[i : i + 1])
            (g,) = torch.autograd.grad(value, th, allow_unused=True)
            out[i] = 0.0 if g is None else (g * g).sum()
    return out


def _fisher_trace(land: _Landscape, notes: list[str]) -> float:
    """Empirical Fisher trace: mean over samples of ||grad of the per-sample loss||^2.

    The per-sample loss is `loss_fn` on a batch of one (exact for mean-reduced losses). Uses
    `vmap(grad)` in chunks; falls back to a per-sample loop (with a note) when vmap cannot run the model.
    """
    n = land.n_samples
    chunk = max(1, _PER_SAMPLE_BUDGET // max(land.n_params, 1))
    X = torch.cat([c[0] for c in land.chunks])
    y = torch.cat([c[1] for c in land.chunks])
    total = 0.0
    use_vmap = True
    for start in range(0, n, chunk):
        Xc, yc = X[start : start + chunk], y[start : start + chunk]
        if use_vmap:
            try:
                total += float(_per_sample_sq_norms_vmap(land, Xc, yc).sum())
                continue
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                use_vmap = False
                logger.warning("fisher_trace: vmap failed (%s); falling back to a per-sample loop", exc)
                notes.append(
                    f"fisher_trace: vmap could not run the model ({type(exc).__name__}); used a per-sample loop"
                )
        total += float(_per_sample_sq_norms_loop(land, Xc, yc).sum())
    return total / n
