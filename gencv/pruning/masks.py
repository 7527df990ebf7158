"""Unstructured pruning: saliency scores per weight, masks of exact sparsity, `torch.nn.utils.prune` masks.

A mask zeroes the `level` fraction of a layer's weights (per layer) or of all prunable weights
(global) with the lowest saliency; the count is `round(level * n)`, ties broken by position, so the
stated sparsity is reached exactly. Masks are applied as `torch.nn.utils.prune` reparametrizations
(`weight = weight_orig * weight_mask`), which keeps pruned weights at zero while fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["SaliencyData", "Scope", "apply_masks_", "bake_", "hessian_diagonal", "masks_from_scores",
           "prunable", "rewind_", "saliency", "sparsity"]

Scope = Literal["layer", "global"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def prunable(module: nn.Module) -> dict[str, nn.Module]:
    """Submodule name -> Linear / Conv2d layer whose `weight` is pruned (biases and norms are left alone)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


def _weight(layer: nn.Module) -> torch.Tensor:
    """The effective weight (masked, when the layer is already pruned)."""
    return layer.weight.detach()


@dataclass(frozen=True)
class SaliencyData:
    """What the data-driven saliencies need: the fold's fitted rows (preprocessed), the loss, a seed.

    hessian_probes : Rademacher probes of the Hutchinson diagonal; 0 = the exact diagonal from one
        Hessian-vector product per parameter (affordable for a few thousand parameters).
    """

    X: torch.Tensor | None = None
    y: torch.Tensor | None = None
    loss_fn: LossFn | None = None
    seed: int = 0
    hessian_probes: int = 0


def _need_data(data: SaliencyData, method: str) -> tuple[torch.Tensor, torch.Tensor, LossFn]:
    if data.X is None or data.y is None or data.loss_fn is None:
        raise ValueError(f"saliency {method!r} needs the training rows, targets and loss (SaliencyData X, y, loss_fn)")
    return data.X, data.y, data.loss_fn


def _eval_params(module: nn.Module) -> tuple[nn.Module, bool]:
    was = module.training
    module.eval()
    return module, was


def _gradients(module: nn.Module, data: SaliencyData, layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """d(mean loss)/d(effective weight) of each layer, full batch, dropout and batch-norm updates off."""
    X, y, loss_fn = _need_data(data, "gradient")
    module, was = _eval_params(module)
    try:
        weights = {n: (lay.weight_orig if hasattr(lay, "weight_orig") else lay.weight) for n, lay in layers.items()}
        with torch.enable_grad():
            loss = loss_fn(module(X), y)
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    finally:
        module.train(was)
    out = {}
    for (n, lay), g in zip(layers.items(), grads):
        g = torch.zeros_like(_weight(lay)) if g is None else g
        if hasattr(lay, "weight_mask"):  # d loss / d weight_orig = mask * d loss / d weight
            g = g * lay.weight_mask
        out[n] = g.detach()
    return out


def hessian_diagonal(module: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *,
                     probes: int = 0, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Diagonal of the mean training loss's Hessian over every trainable parameter, and its standard error.

    Uses the Hessian-vector-product core `gencv.measures.LossLandscape` (its `hvp`). probes=0: exact, one
    product per unit vector (standard error 0). probes=k >= 2: Hutchinson, mean of z * Hz over k
    Rademacher probes (Bekas et al. 2007), standard error from their spread. Returns name -> tensor
    shaped like the parameter (names as `module.named_parameters()`), for value and standard error.
    """
    from gencv.measures import LossLandscape

    module, was = _eval_params(module)
    try:
        land = LossLandscape(module, X, y, loss_fn)
        n = land.n_params
        if probes == 0:
            diag = torch.empty(n, dtype=land.dtype, device=land.device)
            e = torch.zeros(n, dtype=land.dtype, device=land.device)
            for i in range(n):
                e[i] = 1.0
                diag[i] = land.hvp(e)[i]
                e[i] = 0.0
            se = torch.zeros_like(diag)
        else:
            if probes < 2:
                raise ValueError(f"hessian probes: got {probes}; use 0 (exact) or at least 2")
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            total = torch.zeros(n, dtype=land.dtype, device=land.device)
            total_sq = torch.zeros_like(total)
            for _ in range(probes):
                z = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(land.dtype).to(land.device)
                zhz = z * land.hvp(z)
                total += zhz
                total_sq += zhz * zhz
            diag = total / probes
            var = (total_sq - probes * diag * diag).clamp_min(0) / (probes - 1)
            se = torch.sqrt(var / probes)
        land.close()
    finally:
        module.train(was)
    return land.unflatten(diag), land.unflatten(se)


def _hessian_scores(module: nn.Module, data: SaliencyData, layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Optimal Brain Damage (LeCun et al. 1990): 1/2 * H_ii * w_i^2 of each weight."""
    X, y, loss_fn = _need_data(data, "hessian")
    diag, _ = hessian_diagonal(module, X, y, loss_fn, probes=data.hessian_probes, seed=data.seed)
    out = {}
    for name, lay in layers.items():
        key = f"{name}.weight_orig" if hasattr(lay, "weight_orig") else f"{name}.weight"
        h = diag[key]
        out[name] = 0.5 * h * _weight(lay) ** 2
    return out


def saliency(method: str, module: nn.Module, data: SaliencyData | None = None) -> dict[str, torch.Tensor]:
    """Per-layer saliency of every prunable weight (low = pruned first) for `method`.

    random: uniform scores from `data.seed`; magnitude / global_magnitude: |w|; gradient: |w * dL/dw|
    on the training rows (SNIP, Lee et al. 2019); hessian: 1/2 * H_ii * w^2 (OBD).
    """
    data = data or SaliencyData()
    layers = prunable(module)
    if method == "random":
        gen = torch.Generator().manual_seed(int(data.seed))
        return {n: torch.rand(lay.weight.shape, generator=gen, dtype=torch.float64).to(lay.weight.dtype)
                for n, lay in layers.items()}
    if method in ("magnitude", "global_magnitude"):
        return {n: _weight(lay).abs() for n, lay in layers.items()}
    if method == "gradient":
        grads = _gradients(module, data, layers)
        return {n: (_weight(lay) * grads[n]).abs() for n, lay in layers.items()}
    if method == "hessian":
        return _hessian_scores(module, data, layers)
    raise ValueError(f"saliency method: got {method!r}; use random, magnitude, global_magnitude, gradient or hessian")


def masks_from_scores(scores: Mapping[str, torch.Tensor], level: float, scope: Scope,
                      keep_pruned: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """0/1 masks zeroing exactly round(level * n) lowest-score weights per layer (`layer`) or over all (`global`).

    `keep_pruned` (existing masks): weights already at zero stay pruned (they are ranked first).
    """
    if not 0.0 <= level < 1.0:
        raise ValueError(f"sparsity level: got {level}; use a fraction in [0, 1)")
    scores = {n: s.detach().to(torch.float64).clone() for n, s in scores.items()}
    if keep_pruned:
        for n, m in keep_pruned.items():
            scores[n][m == 0] = -math.inf
    if scope == "layer":
        return {n: _mask_lowest(s.reshape(-1), round(level * s.numel())).view_as(s) for n, s in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    mask = _mask_lowest(flat, round(level * flat.numel()))
    parts = mask.split([s.numel() for s in scores.values()])
    return {n: p.view_as(s) for (n, s), p in zip(scores.items(), parts)}


def _mask_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.ones_like(flat)
    if k > 0:
        order = torch.argsort(flat, stable=True)  # ties: the earlier position is pruned first
        mask[order[:k]] = 0.0
    return mask


def apply_masks_(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Prune `module` in place: each layer's weight becomes weight_orig * mask (a forward pre-hook)."""
    layers = prunable(module)
    for name, mask in masks.items():
        lay = layers[name]
        if hasattr(lay, "weight_mask"):  # replace, not stack: the new mask already holds the old zeros
            prune.remove(lay, "weight")
        prune.custom_from_mask(lay, "weight", mask.to(dtype=lay.weight.dtype, device=lay.weight.device))
    return module


def bake_(module: nn.Module) -> nn.Module:
    """Make the masks permanent in place (plain parameters with zeros; no hooks left)."""
    for lay in prunable(module).values():
        if hasattr(lay, "weight_mask"):
            prune.remove(lay, "weight")
    return module


def sparsity(module: nn.Module) -> tuple[float, dict[str, float]]:
    """Fraction of prunable weights that are exactly zero: overall and per layer."""
    per, zeros, total = {}, 0, 0
    for name, lay in prunable(module).items():
        w = _weight(lay)
        z = int((w == 0).sum())
        per[name] = z / w.numel()
        zeros += z
        total += w.numel()
    return (zeros / total if total else 0.0), per


def rewind_(module: nn.Module, init_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Every parameter and buffer back to `init_state` (a state dict of the unpruned module), in place.

    Masks stay: survivors get their initial values, pruned weights stay zero (the lottery-ticket rewind).
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(init_state[name.removesuffix("_orig")])
        for name, b in module.named_buffers():
            if not name.endswith("_mask") and name in init_state:
                b.copy_(init_state[name])
        for lay in prunable(module).values():  # the masked weight is recomputed only at the next forward
            if hasattr(lay, "weight_mask"):
                lay.weight = lay.weight_orig * lay.weight_mask
    return module
