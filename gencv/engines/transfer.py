"""Transfer learning inside a fit: a trained base network's weights, a new output layer, frozen layers, and a
smaller learning rate for the base layers that still train."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gencv.errors import SpecError, did_you_mean
from gencv.models import init_weights_

__all__ = ["BaseWeights", "adapt_module_", "check_base", "new_head_", "transfer_"]


@dataclass(eq=False)
class BaseWeights:
    """A trained network's weights to start from (`model.base`) and how to go on from them.

    `state`: the network's state dict (a logged gencv model's `net.*` entries, prefix removed); `n_inputs`:
    the input width it was trained on (None: unknown); `freeze`: "all_but_head", "none" or layer names;
    `new_head`: hidden sizes of the new output block; `head`: the output layer's attribute (None: the last
    nn.Linear); `tags`: what the run records about it (`gencv.base_run`, ...). Never changed once made, so
    copies of an estimator (scikit-learn's `clone`) share it.
    """

    state: Mapping[str, torch.Tensor]
    n_inputs: int | None = None
    freeze: str | Sequence[str] = "all_but_head"
    new_head: tuple[int, ...] = ()
    head: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **kwargs: Any) -> BaseWeights:
        """From a plain module's state dict or a logged gencv model's (`net.*` plus the scaler's `shift`)."""
        if any(k.startswith("net.") for k in state) and "shift" in state:
            n_inputs = int(state["shift"].numel())
            state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
            kwargs.setdefault("n_inputs", n_inputs)
        return cls(state=dict(state), **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> BaseWeights:
        return self  # read only: an estimator's clones share the weights

    def __repr__(self) -> str:
        return f"BaseWeights({self.tags.get('gencv.base', '?')}, {len(self.state)} tensors, freeze={self.freeze!r})"


def _head_name(module: nn.Module, head: str | None) -> str:
    names = [n for n, _ in module.named_modules() if n]
    if head is None:
        linear = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise SpecError("model.base.head: the network has no nn.Linear output layer; name the layer to replace, "
                            f"one of {names[:20]}")
        return linear[-1]
    if head not in names:
        raise SpecError(f"model.base.head: got {head!r}: the network has no such layer.{did_you_mean(head, names)} "
                        f"Its layers: {', '.join(names[:30])}")
    return head


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _new_head(old: nn.Module, sizes: Sequence[int], init: str, activation: str) -> nn.Module:
    """Linear layers in_features -> sizes... -> out_features (ReLU-family between them), seeded by the caller."""
    if not isinstance(old, nn.Linear):
        raise SpecError(f"model.base.new_head: the output layer is a {type(old).__name__}, not nn.Linear; name a "
                        "linear layer with model.base.head, or drop new_head")
    widths = [old.in_features, *map(int, sizes), old.out_features]
    act = {"tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU}.get(activation, nn.ReLU)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(widths) - 2 else [])
    block = nn.Sequential(*layers).to(dtype=old.weight.dtype, device=old.weight.device)
    return init_weights_(block, init, activation)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def new_head_(module: nn.Module, base: BaseWeights, *, init: str = "he", activation: str = "relu") -> str:
    """Replace `module`'s output layer by the `new_head` block when the base asks for one (in place, fresh
    init); the output layer's name. A trained transferred network is rebuilt this way before its weights load."""
    head = _head_name(module, base.head)
    if base.new_head:
        parent, _, attr = head.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, attr, _new_head(module.get_submodule(head), base.new_head, init, activation))
    return head


def adapt_module_(module: nn.Module, base: BaseWeights, *, n_inputs: int | None = None, init: str = "he",
                  activation: str = "relu") -> tuple[str, list[str]]:
    """Give `module` (freshly built for the new task) the base's weights in place: every layer but the output
    layer (`head`, replaced by a new block when `new_head` is set, keeping its fresh init), then freeze.

    Returns (head name, names of the frozen parameters). Raises SpecError naming model.base and the shapes
    when the base does not fit the network (another input width, other layers)."""
    if base.n_inputs is not None and n_inputs is not None and base.n_inputs != n_inputs:
        raise SpecError(f"model.base: the base network ({base.tags.get('gencv.base', 'model.base')}) was trained on "
                        f"{base.n_inputs} input features, the data here have {n_inputs}; transfer needs the same "
                        "inputs (the same image size or feature columns)")
    head = new_head_(module, base, init=init, activation=activation)
    own = {k: v for k, v in module.state_dict().items() if not _under(k, head)}
    theirs = {k: v for k, v in base.state.items() if not _under(k, head)}
    problems = [f"{k}: {_shape(theirs[k])} in the base, {_shape(v)} here" for k, v in own.items()
                if k in theirs and _shape(theirs[k]) != _shape(v)]
    problems += [f"{k}: not in the base" for k in own if k not in theirs]
    problems += [f"{k}: only in the base" for k in theirs if k not in own]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise SpecError(f"model.base: the base network does not fit this spec's model (output layer {head!r} "
                        f"aside): {shown}; use the base's model settings (hidden, channels, kernel_size, ...) and "
                        "the same input shape")
    with torch.no_grad():
        for k, v in module.state_dict().items():  # state_dict() shares storage with the module
            if k in theirs:
                v.copy_(theirs[k])
    names = [n for n, _ in module.named_parameters()]
    if base.freeze == "none":
        frozen: list[str] = []
    elif base.freeze == "all_but_head":
        frozen = [n for n in names if not _under(n, head)]
    else:
        layers = [n for n, _ in module.named_modules() if n]
        for layer in base.freeze:
            if layer not in layers:
                raise SpecError(f"model.base.freeze: got {layer!r}: the network has no such layer."
                                f"{did_you_mean(layer, layers)} Its layers: {', '.join(layers[:30])}")
        frozen = [n for n in names if any(_under(n, layer) for layer in base.freeze)]
    for n, p in module.named_parameters():
        p.requires_grad_(n not in frozen)
    return head, frozen


def transfer_(net: Any, base: BaseWeights, *, n_inputs: int, lr_factor: float, init: str, activation: str) -> None:
    """On an initialized skorch net (in place): adapt its module to the base (`adapt_module_`), then a new
    optimizer over the trainable parameters only: the head at `lr`, the unfrozen base layers at lr x lr_factor."""
    head, _ = adapt_module_(net.module_, base, n_inputs=n_inputs, init=init, activation=activation)
    trainable = [(n, p) for n, p in net.module_.named_parameters() if p.requires_grad]
    if not trainable:
        raise SpecError("model.base.freeze: every layer is frozen, nothing would train; freeze fewer layers")
    _, kwargs = net.get_params_for_optimizer("optimizer", [])
    in_head = [p for n, p in trainable if _under(n, head)]
    body = [p for n, p in trainable if not _under(n, head)]
    groups = [{"params": in_head or body}]
    if in_head and body:
        if lr_factor != 1.0 and net.optimizer is torch.optim.LBFGS:
            raise SpecError(f"train.base_lr_factor: got {lr_factor}, but L-BFGS has one learning rate for all "
                            "parameters; use another train.optimizer, or base_lr_factor: 1.0")
        groups = [{"params": in_head}, {"params": body, "lr": kwargs["lr"] * lr_factor}]
    elif not in_head and lr_factor != 1.0:
        groups = [{"params": body, "lr": kwargs["lr"] * lr_factor}]
    net.optimizer_ = net.optimizer(groups, **kwargs)


def check_base(est: Any, base: BaseWeights, n_features: int) -> None:
    """Raise SpecError unless `base` fits the network `est` builds for `n_features` inputs (no training; torch's
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        adapt_module_(est.build_module(n_features), base, n_inputs=n_features, init=est.init,
                      activation=est.activation)
