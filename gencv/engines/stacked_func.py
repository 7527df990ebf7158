"""Any module's members as one function of a flat `(members, n_params)` parameter tensor (batched engine).

The generic path of the batched engine: CNNs, batch norm, RNNs and the user's own modules run as
`torch.func.vmap` over `torch.func.functional_call` of one template module (PyTorch's "model ensembling"
recipe), with each member's parameters a row of the flat tensor and its buffers (batch-norm running
statistics) a row of a stacked buffer that vmap updates in place. Plain MLPs keep `StackedMLP` (hand-batched
`torch.baddbmm`, faster): `make_stack` picks.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from gencv.engines.stacked_mlp import StackedMLP
from gencv.models import CNN, MLP

__all__ = ["StackedCNN", "StackedFunctional", "functional_key", "make_stack", "stacks_as_mlp"]

log = logging.getLogger(__name__)

Params = dict[str, torch.Tensor]


def stacks_as_mlp(module: nn.Module) -> bool:
    """Whether `StackedMLP` can stack `module`: gencv's own MLP without batch norm."""
    return type(module) is MLP and not any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in module.net)


def make_stack(modules: Sequence[nn.Module]) -> StackedMLP | StackedFunctional:
    """The stack for these members' modules (one architecture): StackedMLP for a plain MLP, StackedCNN for
    gencv's CNN and its MLP with batch norm, else the generic path."""
    if stacks_as_mlp(modules[0]):
        return StackedMLP(modules[0])
    if type(modules[0]) in (CNN, MLP) and _hand_batchable(modules[0]):
        return StackedCNN(modules)
    return StackedFunctional(modules)


def functional_key(est: Any, module: nn.Module, dropout: float) -> list[Any] | None:
    """What members of one generic stack must share beyond the batched engine's own key: the module's structure
    (its repr, with dropout rates and sizes), its class or factory and `module__` arguments, and the dropout rate
    (the template's dropout layers give every member the template's rate). None for a plain MLP."""
    if stacks_as_mlp(module):
        return None
    kwargs = {k: v for k, v in est.get_params(deep=False).items() if k.startswith("module__")}
    return [repr(module), repr(est.module), sorted(kwargs.items(), key=lambda kv: kv[0]), dropout]


class StackedFunctional:
    """One architecture, every member's trainable parameters a row of one flat tensor; the forward is
    `vmap(functional_call(template, ...))` with `randomness="different"` (each member its own dropout masks).

    The interface is `StackedMLP`'s (flatten, load_, leaves, sync_grads_, layout, forward, l1), so the engine's
    loop is the same for both. Buffers and frozen parameters are per-member constants outside the flat tensor
    (`self.buffers`): batch norm updates each member's running statistics in train mode, from that member's
    real rows only, and uses them in eval mode. A module whose forward vmap cannot batch (an op without a
    batching rule, such as `aten::lstm`) runs member by member over the same flat tensor: correct, not faster.
    (For gencv's LSTM that is the faster choice on a CPU: 5 members of 32 units over 12 steps, forward and
    backward, took 9.7 ms one by one through the fused kernel against 13.5 ms for an unrolled cell under vmap.)
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.template = copy.deepcopy(modules[0])
        self.names: list[str] = []
        self.layout: list[tuple[str, int, int, tuple[int, ...]]] = []  # (name, start, end, shape) in the flat row
        off = 0
        for name, p in modules[0].named_parameters():
            if p.requires_grad:
                self.layout.append((name, off, off + p.numel(), tuple(p.shape)))
                self.names.append(name)
                off += p.numel()
        self.n_params = off
        trainable = set(self.names)
        consts = [n for n, p in modules[0].named_parameters() if n not in trainable]
        consts += [n for n, _ in modules[0].named_buffers()]
        self.buffers: Params = {}
        for n in consts:
            self.buffers[n] = torch.stack([_get(m, n).detach() for m in modules]).clone()
        self._member = {id(m): i for i, m in enumerate(modules)}
        self._best: Params | None = None
        self._seeds: torch.Generator | None = None  # the dropout masks' seeds (see forward)
        self._vmap: bool | None = None  # decided on the first forward: does vmap batch this module?
        self.errors: dict[int, Exception] = {}  # members whose forward failed alone (a batch-norm batch of one row)

    # ------------------------------------------------------------------ the flat layout
    def flatten(self, module: nn.Module) -> torch.Tensor:
        """One member's trainable parameters as a flat vector in the stack's layout."""
        params = dict(module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def load_(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy a flat vector into `module`'s parameters and the member's buffers into its buffers, in place.

        `module` is one of the modules the stack was built from (its buffers are found by identity).
        """
        i = self._member[id(module)]
        with torch.no_grad():
            for name, a, b, shape in self.layout:
                _get(module, name).copy_(flat[a:b].view(shape))
            for name, stacked in self.buffers.items():
                _get(module, name).copy_(stacked[i])
        return module

    def leaves(self, flat: torch.Tensor, grad: torch.Tensor) -> Params:
        """Per-parameter leaf views (members, *shape) into `flat`, their `.grad` views into `grad` (as StackedMLP)."""
        M, out = flat.shape[0], {}
        for name, a, b, shape in self.layout:
            leaf = flat[:, a:b].view(M, *shape).requires_grad_(True)
            leaf.grad = grad[:, a:b].view(M, *shape)
            out[name] = leaf
        self.buffers = {n: v.to(flat.device) for n, v in self.buffers.items()}
        self.template.to(flat.device)
        return out

    @staticmethod
    def sync_grads_(params: Params, grad: torch.Tensor, layout: list[Any]) -> None:
        """Copy into `grad` any leaf gradient autograd did not accumulate in place (then rebind the view)."""
        for name, a, b, _ in layout:
            leaf = params[name]
            view = grad[:, a:b].view(leaf.shape)
            if leaf.grad is not None and leaf.grad.data_ptr() != view.data_ptr():
                view.copy_(leaf.grad)
                leaf.grad = view

    @staticmethod
    def l1(params: Params) -> torch.Tensor:
        """Sum of absolute weights per member: parameters of two or more dimensions, as skorch's penalty."""
        return sum(v.abs().flatten(1).sum(1) for v in params.values() if v.dim() > 2)  # type: ignore[return-value]

    # ------------------------------------------------------------------ early stopping's best weights
    def keep_best_(self, rows: torch.Tensor) -> None:
        """Remember the buffers of members `rows` (their best epoch so far), in place."""
        if not self.buffers:
            return
        if self._best is None:
            self._best = {n: v.clone() for n, v in self.buffers.items()}
        for n, v in self.buffers.items():
            self._best[n].index_copy_(0, rows, v[rows])

    def restore_best_(self, rows: torch.Tensor) -> None:
        """Give members `rows` back the buffers `keep_best_` remembered, in place."""
        if self._best is None:
            return
        for n, v in self.buffers.items():
            v.index_copy_(0, rows, self._best[n][rows])

    def compact_(self, keep: torch.Tensor) -> None:
        """Only the members at rows `keep` go on (the engine handed the others back): their buffers, best
        buffers, failures and modules' rows follow them."""
        new_row = {int(old): new for new, old in enumerate(keep.tolist())}
        self.buffers = {n: v.index_select(0, keep) for n, v in self.buffers.items()}
        if self._best is not None:
            self._best = {n: v.index_select(0, keep) for n, v in self._best.items()}
        self._member = {mid: new_row[row] for mid, row in self._member.items() if row in new_row}
        self.errors = {new_row[row]: e for row, e in self.errors.items() if row in new_row}

    # ------------------------------------------------------------------ forward
    def forward(self, params: Params, X: torch.Tensor, gen: torch.Generator | None, p: float | torch.Tensor = 0.0,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs (members, rows, ...) for inputs (members, rows, ...).

        `gen` None: eval mode (no dropout, running statistics; no buffer changes). Otherwise train mode, the
        dropout masks drawn from a global RNG seeded from `gen` (reproducible, each member its own). `counts`
        (train mode): the real rows each member has at the front of `X`; a member with none does not run (its
        buffers stay), and members run in groups of equal counts, so batch norm sees only real rows. Their
        outputs beyond `counts` are zero. `p` is unused: the template's dropout layers hold the rate.
        """
        M, R = X.shape[0], X.shape[1]
        if self._vmap is None:
            self._vmap = self._probe(params, X)
        if gen is None:
            self.template.eval()
            return self._call(params, self.buffers, X)
        self.template.train()
        if self._seeds is None:  # a CPU stream seeded once from `gen`: no device sync per batch
            self._seeds = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen,
                                                                          device=gen.device)))
        seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        n = [R] * M if counts is None else [int(c) for c in counts.tolist()]
        if R > 1 and all(c == R for c in n):  # (a batch of one row goes below: batch norm may refuse it)
            return self._seeded(seed, params, self.buffers, X)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(n):
            if c > 0:
                groups.setdefault(c, []).append(i)
        out: torch.Tensor | None = None
        for j, (c, rows) in enumerate(sorted(groups.items())):
            idx = torch.tensor(rows, device=X.device)
            sub_p = {k: v.index_select(0, idx) for k, v in params.items()}
            sub_b = {k: v.index_select(0, idx) for k, v in self.buffers.items()}
            try:
                o = self._seeded(seed + j, sub_p, sub_b, X[idx, :c])
            except (RuntimeError, ValueError) as exc:
                if c != 1:
                    raise
                for i in rows:  # as the skorch engine: batch norm refuses a training batch of one row; that fold fails
                    self.errors[i] = ValueError(f"a training batch of one row: {exc}; change train.batch_size so that "
                                                "no fold's last batch has a single row")
                o = None
            if out is None:
                shape = (M, R, *(o.shape[2:] if o is not None else self._out_tail(params, X)))
                out = X.new_zeros(shape)
            if o is None:
                out[idx, :c] = math.nan  # the engine stops a member whose loss is not finite, with its error
                continue
            out[idx, :c] = o.to(out.dtype)
            for k, v in sub_b.items():
                self.buffers[k].index_copy_(0, idx, v)
        if out is None:  # no member has rows in this batch (the engine does not step any)
            out = X.new_zeros((M, R, *self._out_tail(params, X)))
        return out

    def _out_tail(self, params: Params, X: torch.Tensor) -> tuple[int, ...]:
        with torch.no_grad():
            was = self.template.training
            self.template.eval()
            try:
                return tuple(self._call(params, self.buffers, X[:, :1]).shape[2:])
            finally:
                self.template.train(was)

    def _seeded(self, seed: int, params: Params, buffers: Params, X: torch.Tensor) -> torch.Tensor:
        devices = [X.device] if X.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._call(params, buffers, X)

    def _call(self, params: Params, buffers: Params, X: torch.Tensor) -> torch.Tensor:
        if self._vmap:
            return vmap(self._one, randomness="different")(params, buffers, X)  # type: ignore[no-any-return]
        return torch.stack([self._one({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()},
                                      X[i]) for i in range(X.shape[0])])

    def _one(self, params: Params, buffers: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))  # type: ignore[no-any-return]

    def _probe(self, params: Params, X: torch.Tensor) -> bool:
        """Whether vmap batches the template's forward (tried in eval mode on two rows: no buffer changes)."""
        was = self.template.training
        self.template.eval()
        try:
            with torch.no_grad():
                vmap(self._one, randomness="different")(params, self.buffers, X[:, :2])
            return True
        except Exception as exc:  # an op without a batching rule, data-dependent control flow, .item()
            log.info("batched engine: vmap cannot batch %s (%s); its members run one by one",
                     type(self.template).__name__, str(exc).splitlines()[0])
            return False
        finally:
            self.template.train(was)


def _get(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer `name` ("a.b.weight") of `module`."""
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)  # type: ignore[no-any-return]


def _hand_batchable(module: nn.Module) -> bool:
    """Whether StackedCNN's layers cover every layer of `module` (batch norm: affine, a fixed momentum)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not (
                layer.affine and layer.track_running_stats and layer.momentum is not None):
            return False
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            return False
    return True


class StackedCNN(StackedFunctional):
    """gencv's CNN (and its MLP with batch norm) hand-batched: the members' images side by side as channels,
    (rows, members x channels, H, W), so each convolution is one grouped convolution (`groups=members`), batch
    norm one `F.batch_norm` over members x channels (each member's statistics its own rows'), max pooling and
    activations per channel, and the dense layers `torch.baddbmm`. The same flat layout, buffers and train-mode
    grouping as StackedFunctional; it saves vmap's layout copies around pooling and batch norm.
    """

    def _probe(self, params: Params, X: torch.Tensor) -> bool:
        return True

    def _call(self, params: Params, buffers: Params, X: torch.Tensor) -> torch.Tensor:
        t = self.template
        M, N = X.shape[0], X.shape[1]
        if isinstance(t, MLP):
            return self._dense(t.net, "net", params, buffers, X.reshape(M, N, -1))
        h = X.reshape(M, N, *t.image_shape).transpose(0, 1).reshape(N, M * t.image_shape[0], *t.image_shape[1:])
        h = h.contiguous(memory_format=torch.channels_last)  # CPU pooling and grouped convolution: ~15-25% faster
        for i, layer in enumerate(t.features):
            name = f"features.{i}"
            if isinstance(layer, nn.Conv2d):
                w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1), layer.stride,
                             layer.padding, layer.dilation, M * layer.groups)
            elif isinstance(layer, nn.BatchNorm2d):
                h = self._batch_norm(layer, name, params, buffers, h)
            else:  # activation, max pooling: per channel
                h = layer(h)
        h = h.reshape(N, M, -1).transpose(0, 1)  # (members, rows, features): each member's flatten order
        return self._dense(t.head.net, "head.net", params, buffers, h)

    def _dense(self, net: nn.Sequential, prefix: str, params: Params, buffers: Params,
               h: torch.Tensor) -> torch.Tensor:
        """gencv's MLP layers `net` on (members, rows, features)."""
        M, N = h.shape[0], h.shape[1]
        for j, layer in enumerate(net):
            name = f"{prefix}.{j}"
            if isinstance(layer, nn.Linear):
                h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))
            elif isinstance(layer, nn.BatchNorm1d):
                flat = self._batch_norm(layer, name, params, buffers, h.transpose(0, 1).reshape(N, -1))
                h = flat.reshape(N, M, -1).transpose(0, 1)
            else:  # activation; dropout (train mode: elementwise masks, each member its own)
                h = layer(h)
        return h

    def _batch_norm(self, layer: nn.Module, name: str, params: Params, buffers: Params,
                    h: torch.Tensor) -> torch.Tensor:
        """`layer` for every member at once on (rows, members x channels, ...); running statistics updated in
        place in train mode (the buffers are contiguous (members, channels): their flat views are theirs)."""
        training = self.template.training
        if training:
            buffers[f"{name}.num_batches_tracked"].add_(1)
        return F.batch_norm(h, buffers[f"{name}.running_mean"].view(-1), buffers[f"{name}.running_var"].view(-1),
                            params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1), training,
                            layer.momentum, layer.eps)
