"""Structured pruning that physically shrinks gencv's MLP and CNN: whole hidden units or whole filters.

Written here rather than taken from Torch-Pruning: gencv's built-in networks are plain chains
(Linear/Conv -> [BatchNorm] -> activation -> [Dropout/MaxPool] -> next Linear/Conv), so the dependency
graph is a list and the surgery is ~100 lines; a general graph library is not worth the dependency yet.

A removed unit's incoming weights, bias and batch-norm entries go, and so do the next layer's inputs
that read it. Its output was act(0) before it was removed (as in the masked network, where incoming
weights, bias and batch-norm scale and shift are zero): act(0) times the next layer's column is folded
into the next layer's bias, so the shrunk network's outputs equal the masked network's exactly
(for a Conv2d consumer that is only exact when act(0) = 0, which holds for relu, tanh, gelu, elu).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Unit", "keep_by_norm", "mask_units_", "shrink", "structured_units"]

_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Unit:
    """A prunable layer in the chain: its name, the batch norm after it, its activation, the next layer."""

    name: str
    layer: nn.Module
    norm: str | None
    act: nn.Module | None
    consumer: str


def _chain(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from gencv.models import CNN, MLP

    if not isinstance(module, (MLP, CNN)):
        raise TypeError(f"structured pruning (neuron, channel): got a {type(module).__name__}; it needs gencv's "
                        "built-in model.kind mlp or cnn (use a mask method such as magnitude for other networks)")
    return [(n, m) for n, m in module.named_modules() if len(list(m.children())) == 0]


def structured_units(module: nn.Module, kind: str) -> list[Unit]:
    """The layers whose outputs may be removed: hidden Linear units (`neuron`) or Conv2d filters (`channel`)."""
    leaves = _chain(module)
    want = nn.Linear if kind == "neuron" else nn.Conv2d
    units = []
    for i, (name, lay) in enumerate(leaves):
        if not isinstance(lay, want):
            continue
        norm = act = None
        consumer = None
        for n2, m2 in leaves[i + 1:]:
            if isinstance(m2, _LAYERS):
                consumer = n2
                break
            if isinstance(m2, (nn.BatchNorm1d, nn.BatchNorm2d)):
                norm = n2
            elif not isinstance(m2, (nn.Dropout, nn.MaxPool2d, nn.Identity)) and act is None:
                act = m2
        if consumer is not None:  # the output layer has no consumer: its units are the predictions
            units.append(Unit(name, lay, norm, act, consumer))
    if not units:
        raise TypeError(f"structured pruning {kind!r}: {type(module).__name__} has no "
                        f"{'hidden Linear layer' if kind == 'neuron' else 'Conv2d layer'} to shrink")
    return units


def keep_by_norm(module: nn.Module, kind: str, level: float) -> dict[str, torch.Tensor]:
    """Units kept per layer: the (1 - level) fraction with the largest incoming-weight norm, at least one.

    neuron: L2 norm of the unit's weight row; channel: L1 norm of the filter (Li et al. 2017).
    """
    if not 0.0 <= level < 1.0:
        raise ValueError(f"sparsity level: got {level}; use a fraction in [0, 1)")
    keep = {}
    for u in structured_units(module, kind):
        w = u.layer.weight.detach().reshape(u.layer.weight.shape[0], -1)
        norm = w.norm(p=2 if kind == "neuron" else 1, dim=1)
        n = w.shape[0]
        k = max(1, n - round(level * n))
        order = torch.argsort(norm, descending=True, stable=True)
        keep[u.name] = torch.sort(order[:k]).values
    return keep


def _act_at_zero(act: nn.Module | None, like: torch.Tensor) -> float:
    if act is None:
        return 0.0
    with torch.no_grad():
        return float(act(torch.zeros(1, dtype=like.dtype, device=like.device)))


def mask_units_(module: nn.Module, kind: str, keep: Mapping[str, torch.Tensor]) -> nn.Module:
    """The masked equivalent of `shrink`, in place: removed units' weights, bias and norm entries set to zero."""
    mods = dict(module.named_modules())
    with torch.no_grad():
        for u in structured_units(module, kind):
            drop = torch.ones(u.layer.weight.shape[0], dtype=torch.bool)
            drop[keep[u.name]] = False
            u.layer.weight[drop] = 0
            if u.layer.bias is not None:
                u.layer.bias[drop] = 0
            if u.norm is not None:
                mods[u.norm].weight[drop] = 0
                mods[u.norm].bias[drop] = 0
    return module


def shrink(module: nn.Module, kind: str, keep: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of `module` with only the kept units (fewer parameters); outputs equal `mask_units_`'s."""
    out = copy.deepcopy(module)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for u in structured_units(out, kind):
            lay = out.get_submodule(u.name)  # fresh: it may have been sliced already as the previous consumer
            idx = keep[u.name].to(lay.weight.device)
            n_out = lay.weight.shape[0]
            drop = torch.ones(n_out, dtype=torch.bool)
            drop[idx.cpu()] = False
            _replace(out, u.name, _slice_out(lay, idx))
            if u.norm is not None:
                _replace(out, u.norm, _slice_norm(mods[u.norm], idx))
            consumer = out.get_submodule(u.consumer)
            f0 = _act_at_zero(u.act, lay.weight)
            if f0 != 0.0 and drop.any():
                if isinstance(consumer, nn.Conv2d):
                    raise ValueError(f"channel pruning: the activation after {u.name} has act(0) = {f0:g}; a removed "
                                     "filter cannot be folded into the next convolution (use relu, tanh, gelu or elu)")
                cols = _columns(consumer, n_out, drop.nonzero().flatten())
                shift = consumer.weight[:, cols].sum(1) * f0
                if consumer.bias is None:
                    consumer.bias = nn.Parameter(shift)
                else:
                    consumer.bias += shift
            _replace(out, u.consumer, _slice_in(consumer, n_out, idx))
    return out


def _columns(consumer: nn.Module, n_units: int, idx: torch.Tensor) -> torch.Tensor:
    """The consumer's input positions that read units `idx` (a Linear after a conv reads H*W per filter)."""
    if isinstance(consumer, nn.Conv2d):
        return idx
    per = consumer.in_features // n_units
    return (idx[:, None] * per + torch.arange(per, device=idx.device)[None, :]).reshape(-1)


def _slice_out(lay: nn.Module, idx: torch.Tensor) -> nn.Module:
    w = lay.weight
    if isinstance(lay, nn.Linear):
        new: nn.Module = nn.Linear(lay.in_features, len(idx), bias=lay.bias is not None)
    else:
        new = nn.Conv2d(lay.in_channels, len(idx), lay.kernel_size, stride=lay.stride, padding=lay.padding,
                        dilation=lay.dilation, groups=lay.groups, bias=lay.bias is not None)
    new = new.to(dtype=w.dtype, device=w.device)
    new.weight.copy_(w[idx])
    if lay.bias is not None:
        new.bias.copy_(lay.bias[idx])
    return new


def _slice_in(lay: nn.Module, n_units: int, idx: torch.Tensor) -> nn.Module:
    w = lay.weight
    cols = _columns(lay, n_units, idx)
    if isinstance(lay, nn.Linear):
        new: nn.Module = nn.Linear(len(cols), lay.out_features, bias=lay.bias is not None)
    else:
        new = nn.Conv2d(len(cols), lay.out_channels, lay.kernel_size, stride=lay.stride, padding=lay.padding,
                        dilation=lay.dilation, bias=lay.bias is not None)
    new = new.to(dtype=w.dtype, device=w.device)
    new.weight.copy_(w[:, cols])
    if lay.bias is not None:
        new.bias.copy_(lay.bias)
    return new


def _slice_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = type(norm)(len(idx), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats).to(device=idx.device)
    new = new.to(dtype=norm.weight.dtype if norm.affine else torch.float32)
    if norm.affine:
        new.weight.copy_(norm.weight[idx])
        new.bias.copy_(norm.bias[idx])
    if norm.track_running_stats:
        new.running_mean.copy_(norm.running_mean[idx])
        new.running_var.copy_(norm.running_var[idx])
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
