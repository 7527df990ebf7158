"""Torch module factories: MLP, small CNN for image input, LSTM/GRU over lag windows, and the user's own
module (`model.kind: custom`): loaded from an importable path or a file, built with the data's shape."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gencv.errors import SpecError, did_you_mean
from gencv.modref import is_file_ref

__all__ = ["CNN", "MLP", "RNN", "SIZE_NAMES", "check_output", "init_weights_", "load_module", "module_args",
           "module_reference", "source_file"]

#: The keyword names through which gencv tells a module the data's shape (when its signature has them).
SIZE_NAMES = ("n_features", "n_outputs", "image_shape")

_ACT: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def _act(name: str) -> nn.Module:
    return _ACT[name]()


class MLP(nn.Module):
    """Feed-forward network; outputs logits (classification) or values (regression)."""

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = n_features
        for h in hidden:
            layers.append(nn.Linear(prev, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_act(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X.reshape(X.shape[0], -1))


class CNN(nn.Module):
    """Small conv net for image input given flat (n, C*H*W) and reshaped to `image_shape`."""

    def __init__(
        self,
        image_shape: Sequence[int],
        n_outputs: int,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        convs: list[nn.Module] = []
        for ch in channels:
            convs.append(nn.Conv2d(c, ch, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                convs.append(nn.BatchNorm2d(ch))
            convs.append(_act(activation))
            if min(h, w) >= 4:
                convs.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = ch
        self.features = nn.Sequential(*convs)
        self.head = MLP(c * h * w, n_outputs, hidden, activation, dropout, batch_norm)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X.reshape(X.shape[0], *self.image_shape)))


class RNN(nn.Module):
    """LSTM or GRU over a window of lags given as (n, lags) or (n, lags, d); predicts from the last step."""

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden: Sequence[int] = (32,),
        cell: str = "lstm",
        layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        size = int(hidden[0]) if hidden else 32
        cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.n_features = n_features
        self.rnn = cls(1, size, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(size, n_outputs)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        seq = X.reshape(X.shape[0], -1, 1)  # one value per time step, oldest first
        h, _ = self.rnn(seq)
        return self.out(self.drop(h[:, -1]))


def init_weights_(module: nn.Module, scheme: str, activation: str = "relu") -> nn.Module:
    """Initialise Linear/Conv weights in place (he | xavier | default); biases to zero."""
    if scheme == "default":
        return module
    nonlin = "leaky_relu" if activation == "leaky_relu" else "relu"
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if scheme == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlin)
            else:
                gain = nn.init.calculate_gain("tanh") if activation == "tanh" else 1.0
                nn.init.xavier_uniform_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# --------------------------------------------------------------------------- the user's own module

_LEGACY_SIZES = {"n_in": "n_features", "n_out": "n_outputs"}  # names of gencv < 0.2, still passed when taken


def load_module(ref: str, field: str = "model.module") -> Callable[..., nn.Module]:
    """The class or factory that `ref` names: "package.module:Name" (imported) or "path/to/file.py:Name"."""
    where, _, name = ref.rpartition(":")
    if is_file_ref(ref):
        file = Path(where)
        if not file.is_file():
            raise SpecError(f"{field}: got {ref!r}: the file {where} does not exist; give a path to a .py file, "
                            "relative to the spec file or absolute, e.g. nets/resmlp.py:ResMLP")
        module = _import_file(file, ref, field)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name is not None and where.startswith(exc.name) and where[len(exc.name):][:1] in ("", "."):
                raise SpecError(f"{field}: got {ref!r}: module {where!r} not found; install its package, add its "
                                "folder to PYTHONPATH, or give a file: path/to/nets.py:Net") from None
            raise SpecError(f"{field}: got {ref!r}: importing {where} failed: {exc}; install what it imports") from None
        except Exception as exc:  # the user's code may raise anything while it imports
            raise SpecError(f"{field}: got {ref!r}: importing {where} raised {type(exc).__name__}: {exc}; "
                            "fix the module so that it imports") from None
    obj: Any = module
    for i, part in enumerate(name.split(".")):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            owner = where if i == 0 else ".".join([where, *name.split(".")[:i]])
            raise SpecError(f"{field}: got {ref!r}: {owner} defines no {part!r}.{did_you_mean(part, names)} "
                            f"Name a class or factory it defines, e.g. {where}:{_example(obj)}")
        obj = getattr(obj, part)
    if not callable(obj) or isinstance(obj, nn.Module):
        raise SpecError(f"{field}: got {ref!r}: {name} is of type {type(obj).__name__}, not a class or factory; name an "
                        "nn.Module subclass or a function that returns one")
    return obj


def _example(module: Any) -> str:
    classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
               and getattr(v, "__module__", None) == getattr(module, "__name__", None)]
    return classes[0] if classes else "Net"


def _import_file(file: Path, ref: str, field: str) -> Any:
    """Import a .py file as a module named by its content's digest (the same file, or a logged copy of it,
    is the same module; MLflow's pickled model finds it again under that name through `code_paths`)."""
    data = file.read_bytes()
    name = f"gencv_module_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}_{hashlib.sha256(data).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise SpecError(f"{field}: got {ref!r}: {file} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if not isinstance(exc, Exception):
            raise
        raise SpecError(f"{field}: got {ref!r}: importing {file} raised {type(exc).__name__}: {exc}; fix the file "
                        "(it is imported on its own: put what it needs from sibling files in it, or use an "
                        "importable package path)") from None
    return module


def module_reference(obj: Any) -> str:
    """The `model.module` string of a class or factory: "file.py:Name" for one loaded from a file, else
    "package.module:Name"."""
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    mod = getattr(obj, "__module__", None) or "__main__"
    if mod.startswith("gencv_module_") and (file := source_file(obj)) is not None:
        return f"{file}:{qual}"
    return f"{mod}:{re.sub(r'[^0-9A-Za-z_.]', '_', qual)}"


def source_file(obj: Any) -> Path | None:
    """The .py file that defines `obj`, or None (a notebook cell, a builtin)."""
    try:
        found = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    return Path(found) if found and Path(found).is_file() else None


def module_args(factory: Callable[..., Any], kwargs: Mapping[str, Any], *, n_features: int, n_outputs: int,
                image_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The constructor's arguments: the data's shape under the SIZE_NAMES it takes, then `kwargs` (model.kwargs).

    Raises SpecError naming the field when the constructor would refuse them.
    """
    label = getattr(factory, "__qualname__", repr(factory))
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (a C extension): pass the sizes and the kwargs
        return {"n_features": n_features, "n_outputs": n_outputs, **kwargs}
    for key in kwargs:
        if key in SIZE_NAMES or key in _LEGACY_SIZES:
            raise SpecError(f"model.kwargs.{key}: got {kwargs[key]!r}, but gencv sets {key} from the data; remove it")
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                              inspect.Parameter.VAR_KEYWORD)]
    for key in kwargs:
        if key not in params and not open_kw:
            raise SpecError(f"model.kwargs.{key} (module__{key}): {label} does not take {key!r}."
                            f"{did_you_mean(key, named)} Its parameters: {', '.join(named) or 'none'}; remove "
                            f"{key} or add it to the constructor")
    sizes: dict[str, Any] = {"n_features": n_features, "n_outputs": n_outputs,
                             "image_shape": None if image_shape is None else tuple(int(s) for s in image_shape)}
    sizes |= {old: sizes[new] for old, new in _LEGACY_SIZES.items()}
    args = {k: v for k, v in sizes.items() if k in params and v is not None} | dict(kwargs)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if missing == ["image_shape"]:
        raise SpecError(f"model.module: {label} needs image_shape, but the data are not images; use image data "
                        "(data.source: digits) or give image_shape a default")
    if missing:
        raise SpecError(f"model.kwargs: {label} needs {', '.join(missing)}; set "
                        + ", ".join(f"model.kwargs.{m}" for m in missing)
                        + f" (gencv itself passes only {', '.join(SIZE_NAMES)})")
    return args


def check_output(factory: Callable[..., Any], args: Mapping[str, Any], X: np.ndarray, n_outputs: int,
                 task: str) -> None:
    """Build the module and run it on one batch: its output must be (rows, n_outputs) logits or values.

    Torch's global random state is left as it was (the module's init draws from a forked one).
    """
    label = getattr(factory, "__qualname__", repr(factory))
    with torch.random.fork_rng(devices=[]):
        try:
            module = factory(**args)
        except Exception as exc:  # the user's constructor may raise anything
            raise SpecError(f"model.kwargs: {label}({_call(args)}) raised {type(exc).__name__}: {exc}; "
                            "fix model.kwargs or the constructor") from None
        if not isinstance(module, nn.Module):
            raise SpecError(f"model.module: {label}(...) returned an object of type {type(module).__name__}, not a torch nn.Module; "
                            "return the network")
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.as_tensor(np.asarray(X, dtype=np.float32)))
        except Exception as exc:  # and so may its forward
            raise SpecError(f"model.module: {label} failed on a batch of {len(X)} rows x {X.shape[1]} features "
                            f"({type(exc).__name__}: {exc}); its forward takes a float tensor (rows, n_features) "
                            "and returns (rows, n_outputs)") from None
    expected = (len(X), n_outputs)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        what = (f"{n_outputs} logits per row, one per class (no softmax: the loss is cross-entropy)"
                if task == "classification" else "one value per row (MSE on the standardised target)")
        raise SpecError(f"model.module: {label} returns {got} for a batch of {len(X)} rows, but this {task} task "
                        f"needs {expected}: {what}; size the last layer by the n_outputs argument")


def _call(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
