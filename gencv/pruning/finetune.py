"""Fine-tuning a pruned network, and what a smaller network buys: parameter count and CPU inference time.

The fine-tuning loop is gencv's own, not a continued skorch fit: a structurally pruned network has new
parameters (skorch's optimizer, schedule and early-stopping state belong to the old ones), and the
same loop then serves masked and shrunk networks alike. It keeps the training spec's rules: the
optimizer and its settings, learning rate (constant: a cosine schedule has already decayed to ~0 at the
end of training), batch size, L1 penalty, gradient clipping, and early stopping on the same
early-stopping split of the training fold (patience, min_delta, restore best).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["TIMING_REPEATS", "TIMING_WARMUP", "FinetuneResult", "count_parameters", "finetune_", "inference_seconds"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FinetuneResult:
    epochs_run: int
    best_epoch: int
    train_losses: list[float]
    es_losses: list[float]


def finetune_(
    module: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    epochs: int,
    optimizer: type[torch.optim.Optimizer],
    optimizer_args: dict,
    lr: float,
    batch_size: int,
    seed: int,
    l1: float = 0.0,
    clip_grad_norm: float | None = None,
    X_es: torch.Tensor | None = None,
    y_es: torch.Tensor | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = True,
) -> FinetuneResult:
    """Train `module` in place for up to `epochs` epochs on (X, y); early stopping on (X_es, y_es) when given.

    Pruning masks (torch.nn.utils.prune) stay in force: the optimizer updates `weight_orig` and the
    effective weight is `weight_orig * mask`, so pruned weights remain exactly zero.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    opt = optimizer(params, lr=lr, **optimizer_args)
    gen = torch.Generator().manual_seed(int(seed))
    n = len(X)
    train_losses: list[float] = []
    es_losses: list[float] = []
    best, best_epoch, best_state, bad = np.inf, 0, None, 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        module.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            rows = order[i:i + batch_size]

            def closure(rows: torch.Tensor = rows) -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(module(X[rows]), y[rows])
                if l1 > 0:  # as gencv's skorch nets: on the weight matrices (dim > 1)
                    loss = loss + l1 * sum(p.abs().sum() for p in params if p.dim() > 1)
                loss.backward()
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                return loss

            loss = opt.step(closure)  # a closure: L-BFGS needs one, the others call it once
            total += float(loss.detach()) * len(rows)
        train_losses.append(total / n)
        if X_es is None or y_es is None or patience is None:
            best_epoch = epoch
            continue
        module.eval()
        with torch.no_grad():
            es = float(loss_fn(module(X_es), y_es))
        es_losses.append(es)
        if es < best - min_delta:
            best, best_epoch, bad = es, epoch, 0
            best_state = copy.deepcopy(module.state_dict()) if restore_best else None
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return FinetuneResult(epoch, best_epoch, train_losses, es_losses)


def count_parameters(module: nn.Module, *, nonzero: bool = False) -> int:
    """Parameters of the module (effective weights when masked); `nonzero`: only those not exactly zero."""
    total = 0
    for name, p in module.named_parameters():
        if name.endswith("_orig"):  # a pruned weight: count the effective (masked) weight
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            p = getattr(owner, name.rpartition(".")[2].removesuffix("_orig"))
        total += int((p != 0).sum()) if nonzero else p.numel()
    return total


#: Timed forward passes per network and batch size (the median is reported), after `TIMING_WARMUP` untimed ones.
TIMING_REPEATS = 50
TIMING_WARMUP = 5


def inference_seconds(
    modules: Sequence[nn.Module],
    shape: int | Sequence[int],
    batch: int,
    *,
    repeats: int = TIMING_REPEATS,
    warmup: int = TIMING_WARMUP,
    threads: int = 1,
    dtype: torch.dtype = torch.float32,
) -> list[float]:
    """Median CPU seconds of one forward pass of each module on a batch of `batch` rows of `shape`.

    Eval mode, no grad, `warmup` untimed passes each, then `repeats` rounds timed with
    `time.perf_counter`, the modules taking turns within a round (so a burst of load on a shared
    machine hits all of them alike). Torch runs on `threads` intra-op threads while timing (1 by
    default: small networks do not gain from more, and spinning threads distort timings on a
    loaded machine); the previous setting is restored afterwards.
    """
    if repeats < 1:
        raise ValueError(f"timing repeats: got {repeats}; use 1 or more")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    ms = [copy.deepcopy(m).cpu().eval() for m in modules]
    X = torch.randn(batch, *dims, dtype=dtype, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in ms]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for m in ms:
                for _ in range(warmup):
                    m(X)
            for _ in range(repeats):
                for m, t in zip(ms, times):
                    t0 = time.perf_counter()
                    m(X)
                    t.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return [float(np.median(t)) for t in times]
