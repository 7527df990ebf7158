"""The Hessian-vector-product core: loss, gradient and H @ v of a module's mean loss over flat parameters."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad as func_grad, jvp

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: HVP implementations: "autograd" = double backward through a first-order graph that is built once
#: (full batch) and reused for every product; "func" = forward-over-reverse `torch.func.jvp(grad(f))`.
HVP_BACKENDS: tuple[str, ...] = ("autograd", "func")
#: Chosen from benchmarks/curvature.py: the cached double backward is the cheaper one on CPU.
DEFAULT_HVP_BACKEND = "autograd"


class LossLandscape:
    """The mean loss of `module` on (X, y) as a function of its flattened trainable parameters.

    The module is never written to: every evaluation goes through `torch.func.functional_call`
    with parameters unflattened from a 1-D vector. With `batch_size` set, the sample is split into
    chunks and the chunk losses are weighted by chunk size / sample size, so sums of chunk
    quantities equal the full-batch ones for a mean-reduced loss.
    """

    def __init__(
        self,
        module: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        *,
        batch_size: int | None = None,
        backend: str = DEFAULT_HVP_BACKEND,
    ) -> None:
        if backend not in HVP_BACKENDS:
            raise ValueError(f"hvp backend {backend!r} is unknown; use one of {HVP_BACKENDS}")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                f"module {type(module).__name__} has no trainable parameters (requires_grad=True); "
                "curvature measures need at least one"
            )
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) > 1 or len(devices) > 1:
            raise TypeError(
                f"module parameters mix dtypes {sorted(map(str, dtypes))} / devices "
                f"{sorted(map(str, devices))}; cast the module with .to(dtype, device) first"
            )
        self.module = module
        self.loss_fn = loss_fn
        self.names: list[str] = [n for n, _ in named]
        self.shapes: list[torch.Size] = [p.shape for _, p in named]
        self.numels: list[int] = [p.numel() for _, p in named]
        self.dtype: torch.dtype = named[0][1].dtype
        self.device: torch.device = named[0][1].device
        self.w0: torch.Tensor = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.n_params: int = int(self.w0.numel())
        self.n_samples: int = int(X.shape[0])
        size = self.n_samples if batch_size is None else max(1, int(batch_size))
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, float]] = [
            (X[i : i + size], y[i : i + size], (min(i + size, self.n_samples) - i) / self.n_samples)
            for i in range(0, self.n_samples, size)
        ]
        self.backend = backend
        self.hvp_count = 0
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # -- parameters ---------------------------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into a name -> tensor dict shaped like the trainable parameters."""
        return {
            name: part.view(shape)
            for name, part, shape in zip(self.names, theta.split(self.numels), self.shapes, strict=True)
        }

    def outputs(self, theta: torch.Tensor, Xc: torch.Tensor) -> torch.Tensor:
        """Module outputs on `Xc` at parameters `theta`."""
        return functional_call(self.module, self.unflatten(theta), (Xc,))

    def chunk_loss(self, theta: torch.Tensor, Xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        """Mean loss of one chunk at `theta` (a scalar tensor)."""
        return self.loss_fn(self.outputs(theta, Xc), yc)

    # -- zeroth and first order ---------------------------------------------------------------
    def loss(self, theta: torch.Tensor | None = None) -> float:
        """Mean loss over the sample at `theta` (default: the module's weights)."""
        theta = self.w0 if theta is None else theta
        total = 0.0
        with torch.no_grad():
            for Xc, yc, weight in self.chunks:
                total += weight * float(self.chunk_loss(theta, Xc, yc))
        return total

    def loss_and_grad(self, theta: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient (flat) at `theta`."""
        theta = self.w0 if theta is None else theta
        total = 0.0
        grad = torch.zeros_like(self.w0)
        with torch.enable_grad():
            for Xc, yc, weight in self.chunks:
                th = theta.detach().requires_grad_(True)
                value = self.chunk_loss(th, Xc, yc) * weight
                (g,) = torch.autograd.grad(value, th, allow_unused=True)
                if g is not None:
                    grad += g
                total += float(value.detach())
        return total, grad

    # -- second order ---------------------------------------------------------------------------
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hessian of the mean loss at the module's weights times `v` (flat, same dtype/device)."""
        self.hvp_count += 1
        with torch.enable_grad():
            if self.backend == "func":
                return self._hvp_func(v)
            if len(self.chunks) == 1:
                return self._hvp_autograd_cached(v)
            return self._hvp_autograd_chunked(v)

    def _first_order_graph(
        self, Xc: torch.Tensor, yc: torch.Tensor, weight: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        th = self.w0.detach().requires_grad_(True)
        value = self.chunk_loss(th, Xc, yc) * weight
        (g,) = torch.autograd.grad(value, th, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:  # loss linear (or constant) in the parameters
            return th, None
        return th, g

    @staticmethod
    def _second_backward(
        th: torch.Tensor, g: torch.Tensor | None, v: torch.Tensor, *, retain: bool
    ) -> torch.Tensor:
        if g is None:
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(g, th, grad_outputs=v, retain_graph=retain, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv

    def _hvp_autograd_cached(self, v: torch.Tensor) -> torch.Tensor:
        if self._cache is None:
            Xc, yc, weight = self.chunks[0]
            self._cache = self._first_order_graph(Xc, yc, weight)
        th, g = self._cache
        return self._second_backward(th, g, v, retain=True)

    def _hvp_autograd_chunked(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for Xc, yc, weight in self.chunks:
            th, g = self._first_order_graph(Xc, yc, weight)
            out += self._second_backward(th, g, v, retain=False)
        return out

    def _hvp_func(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for Xc, yc, weight in self.chunks:

            def f(theta: torch.Tensor, Xc: torch.Tensor = Xc, yc: torch.Tensor = yc) -> torch.Tensor:
                return self.chunk_loss(theta, Xc, yc)

            _, hv = jvp(func_grad(f), (self.w0,), (v,))
            out += hv * weight
        return out

    def close(self) -> None:
        """Free the cached first-order graph."""
        self._cache = None


#: The name the measure modules use (kept so they need not change); `LossLandscape` is the public one.
_Landscape = LossLandscape
