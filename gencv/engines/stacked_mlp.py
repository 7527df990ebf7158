"""The members' MLPs as one function of a flat `(members, n_params)` parameter tensor (batched engine)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["StackedMLP"]


class StackedMLP:
    """One MLP architecture, every member's parameters a row of one flat tensor; layers as `torch.baddbmm`.

    The dropout rate is not part of the architecture: a ("dropout", None) step follows every hidden
    activation, and `forward` is given the rate (one for the stack, or one per member; 0: no dropout).
    """

    def __init__(self, template: nn.Module) -> None:
        self.steps: list[tuple[str, Any]] = []  # ("linear", (w_off, out, in, b_off)) | ("dropout", None) | ("act", module)
        off = 0
        layers = [layer for layer in template.net if not isinstance(layer, nn.Dropout)]
        for pos, layer in enumerate(layers):
            if isinstance(layer, nn.Linear):
                o, i = layer.out_features, layer.in_features
                self.steps.append(("linear", (off, o, i, off + o * i)))
                off += o * i + o
            else:  # an elementwise activation module; dropout follows it in a hidden layer
                self.steps.append(("act", layer))
                if pos < len(layers) - 1:
                    self.steps.append(("dropout", None))
        self.n_params = off
        self.errors: dict[int, Exception] = {}  # StackedFunctional's per-member forward failures; none here

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """One member's parameters as a flat vector in the stack's layout."""
        parts = []
        for layer in module.net:
            if isinstance(layer, nn.Linear):
                parts += [layer.weight.detach().reshape(-1), layer.bias.detach().reshape(-1)]
        return torch.cat(parts)

    def load_(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy a flat vector into `module`'s parameters, in place."""
        with torch.no_grad():
            off = 0
            for layer in module.net:
                if isinstance(layer, nn.Linear):
                    n = layer.weight.numel()
                    layer.weight.copy_(flat[off : off + n].view_as(layer.weight))
                    layer.bias.copy_(flat[off + n : off + n + layer.bias.numel()])
                    off += n + layer.bias.numel()
        return module

    def leaves(self, flat: torch.Tensor, grad: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (weight, bias) leaf views into `flat`, their `.grad` views into `grad`.

        Autograd then accumulates every layer's gradient straight into the flat `grad` buffer (no
        scatter of each slice's gradient into a full-size tensor, as views of one leaf would need).
        """
        M, out = flat.shape[0], []
        for kind, arg in self.steps:
            if kind == "linear":
                w_off, o, i, b_off = arg
                pair = []
                for a, b, shape in ((w_off, b_off, (M, o, i)), (b_off, b_off + o, (M, o))):
                    leaf = flat[:, a:b].view(shape).requires_grad_(True)
                    leaf.grad = grad[:, a:b].view(shape)
                    pair.append(leaf)
                out.append((pair[0], pair[1]))
        return out

    @staticmethod
    def sync_grads_(params: list[tuple[torch.Tensor, torch.Tensor]], grad: torch.Tensor, layout: list[Any]) -> None:
        """Copy into `grad` any leaf gradient autograd did not accumulate in place (then rebind the view)."""
        for (W, b), (w_off, o, i, b_off) in zip(params, layout):
            for leaf, a, e in ((W, w_off, b_off), (b, b_off, b_off + o)):
                view = grad[:, a:e].view(leaf.shape)
                if leaf.grad is not None and leaf.grad.data_ptr() != view.data_ptr():
                    view.copy_(leaf.grad)
                    leaf.grad = view

    def keep_best_(self, rows: torch.Tensor) -> None:
        """No buffers to remember (StackedFunctional keeps batch-norm statistics here)."""

    def restore_best_(self, rows: torch.Tensor) -> None:
        """No buffers to restore."""

    def compact_(self, keep: torch.Tensor) -> None:
        """Only the members `keep` go on: no per-member state here (the parameters are the caller's)."""

    @property
    def layout(self) -> list[Any]:
        return [arg for kind, arg in self.steps if kind == "linear"]

    def forward(self, params: list[tuple[torch.Tensor, torch.Tensor]], X: torch.Tensor,
                gen: torch.Generator | None, p: float | torch.Tensor = 0.0,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs (members, rows, n_out) for inputs (members, rows, n_in).

        Dropout only when `gen` is given, at rate `p`: one float for every member (masks drawn with
        `bernoulli_`), or a (members, 1, 1) tensor of rates (masks `rand < 1 - p`: a member at rate 0
        keeps every unit, exactly). `counts` is unused: rows are independent, padded rows masked by the caller.
        """
        M = params[0][0].shape[0]
        h = X.reshape(M, X.shape[1], -1)
        layer = 0
        for kind, arg in self.steps:
            if kind == "linear":
                W, b = params[layer]
                layer += 1
                h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
            elif kind == "dropout":
                if gen is None:
                    continue
                if isinstance(p, torch.Tensor):  # the mask made and scaled in place: 0 or 1 / keep
                    keep = 1.0 - p
                    h = h * torch.rand(h.shape, generator=gen, dtype=h.dtype, device=h.device).lt_(keep).div_(keep)
                elif p > 0:
                    h = h * torch.empty_like(h).bernoulli_(1.0 - p, generator=gen).div_(1.0 - p)
            else:
                h = arg(h)
        return h

    @staticmethod
    def l1(params: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Sum of absolute weights (biases excluded, as skorch's penalty) per member."""
        return sum(W.abs().flatten(1).sum(1) for W, _ in params)  # type: ignore[return-value]
