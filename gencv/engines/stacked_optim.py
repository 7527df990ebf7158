"""The batched engine's optimizers: `torch.optim`'s update rules with one parameter row per fold."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["STACKED_OPTIMIZERS", "StackedOptimizer"]

#: the fewest parameters a member has for Adam / AdamW to step through torch's fused kernel
FUSED_MIN_PARAMS = 2048

STACKED_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam")


class StackedOptimizer:
    """`torch.optim`'s SGD / momentum / Nesterov / Adagrad / RMSprop / Adam / AdamW / NAdam update (their
    default settings, as `gencv.engines.optim.OPTIMIZERS` builds them), one row per member.

    `step_` updates only the given member rows; the others keep parameters and state unchanged
    (bias corrections and NAdam's momentum schedule use each member's own step count). The learning
    rate and `weight_decay` are one float, or a (members, 1) column: a rate per member (a population).
    """

    _STATE = ("buf", "exp_avg", "exp_avg_sq", "steps", "mu_product")

    def __init__(self, kind: str, flat: torch.Tensor, *, momentum: float, weight_decay: float | torch.Tensor) -> None:
        self.kind, self.momentum, self.wd = kind, momentum, weight_decay
        self.betas, self.eps = (0.9, 0.999), 1e-10 if kind == "adagrad" else 1e-8
        self.alpha, self.momentum_decay = 0.99, 4e-3  # RMSprop's smoothing; NAdam's momentum decay
        z = torch.zeros_like(flat)
        # buf: the momentum buffer, Adagrad's sum of squares or RMSprop's square average
        self.buf = z.clone() if kind in ("momentum", "nesterov", "adagrad", "rmsprop") else None
        self.exp_avg = z.clone() if kind in ("adam", "adamw", "nadam") else None
        self.exp_avg_sq = z.clone() if kind in ("adam", "adamw", "nadam") else None
        self.steps = torch.zeros(flat.shape[0], 1, dtype=flat.dtype, device=flat.device)
        self.mu_product = torch.ones_like(self.steps) if kind == "nadam" else None
        # Adam and AdamW: torch's fused kernel (torch.optim's `fused=True` update, a member per tensor: its own
        # step count; one call for the stack when the members share rate and decay, else one call a member),
        # in place of about a dozen whole-stack operations a step. It costs about 9 us a member on a CPU, so it
        # pays for members of a few thousand parameters (measured, one rate: 5 x 5571 parameters 97 against
        # 225 us a step, 300 x 771 2885 against 719 us; a rate per member: 80 x 5571, 1.4 against 8.4 ms)
        self.fused = getattr(torch, f"_fused_{kind}_", None) if kind in ("adam", "adamw") and \
            flat.shape[1] >= FUSED_MIN_PARAMS and _fused_runs_on(flat.device) else None
        if self.fused is not None:
            assert self.exp_avg is not None and self.exp_avg_sq is not None
            self.rows = list(flat.unbind(0)), list(self.exp_avg.unbind(0)), list(self.exp_avg_sq.unbind(0))
            self.step_list = [torch.zeros((), dtype=torch.float32, device=flat.device) for _ in range(len(flat))]

    def step_(self, flat: torch.Tensor, grad: torch.Tensor, lr: float | torch.Tensor,
              rows: torch.Tensor | None) -> None:
        """Update `flat` in place for member `rows` (None: all); `lr`: one rate, or a (members, 1) column."""
        if self.fused is not None:
            self._fused_step(grad, lr, range(len(flat)) if rows is None else rows.tolist())
            return
        if rows is None:
            self._update(flat, grad, lr)
            return
        p = flat[rows]
        saved = {n: getattr(self, n) for n in self._STATE}
        for n in self._STATE:
            if saved[n] is not None:
                setattr(self, n, saved[n][rows])
        wd = self.wd
        if isinstance(wd, torch.Tensor):
            self.wd = wd[rows]
        try:
            self._update(p, grad[rows], lr[rows] if isinstance(lr, torch.Tensor) else lr)
            flat.index_copy_(0, rows, p)
            for n in self._STATE:
                if saved[n] is not None:
                    saved[n].index_copy_(0, rows, getattr(self, n))
        finally:
            self.wd = wd
            for n in self._STATE:
                setattr(self, n, saved[n])

    def compact_(self, keep: torch.Tensor, flat: torch.Tensor) -> None:
        """Only the member rows `keep` go on; `flat` is their parameters (the stack's new flat tensor)."""
        for n in self._STATE:
            if getattr(self, n) is not None:
                setattr(self, n, getattr(self, n).index_select(0, keep))
        if isinstance(self.wd, torch.Tensor):
            self.wd = self.wd.index_select(0, keep)
        if self.fused is not None:
            assert self.exp_avg is not None and self.exp_avg_sq is not None
            self.rows = list(flat.unbind(0)), list(self.exp_avg.unbind(0)), list(self.exp_avg_sq.unbind(0))
            self.step_list = [self.step_list[i] for i in keep.tolist()]

    def _fused_step(self, grad: torch.Tensor, lr: float | torch.Tensor, rows: Any) -> None:
        params, avgs, sqs = self.rows
        steps = [self.step_list[i] for i in rows]
        torch._foreach_add_(steps, 1.0)
        assert self.fused is not None
        kw = {"beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps, "amsgrad": False, "maximize": False}
        if not isinstance(lr, torch.Tensor) and not isinstance(self.wd, torch.Tensor):
            self.fused([params[i] for i in rows], [grad[i] for i in rows], [avgs[i] for i in rows],
                       [sqs[i] for i in rows], [], steps, lr=lr, weight_decay=float(self.wd), **kw)
            return
        lrs = lr.flatten().tolist() if isinstance(lr, torch.Tensor) else None
        wds = self.wd.flatten().tolist() if isinstance(self.wd, torch.Tensor) else None
        for i, step in zip(rows, steps):  # a rate or a decay per member: one call each
            self.fused([params[i]], [grad[i]], [avgs[i]], [sqs[i]], [], [step], lr=lr if lrs is None else lrs[i],
                       weight_decay=float(self.wd) if wds is None else wds[i], **kw)

    def _update(self, p: torch.Tensor, g: torch.Tensor, lr: float | torch.Tensor) -> None:
        kind, wd = self.kind, self.wd
        if isinstance(lr, torch.Tensor) and kind not in ("nadam", "adam", "adamw"):
            self._update_per_member(p, g, lr)  # a rate per member (plateau): scalar alpha=/value= need a float
            return
        if kind != "adamw":
            g = _decayed(g, p, wd)
        if kind == "sgd":
            p.add_(g, alpha=-lr)
        elif kind in ("momentum", "nesterov"):
            assert self.buf is not None
            self.buf.mul_(self.momentum).add_(g)  # a zero buffer makes the first step torch's clone(d_p)
            d = g.add(self.buf, alpha=self.momentum) if kind == "nesterov" else self.buf
            p.add_(d, alpha=-lr)
        elif kind == "adagrad":
            assert self.buf is not None
            self.buf.addcmul_(g, g, value=1.0)
            p.addcdiv_(g, self.buf.sqrt().add_(self.eps), value=-lr)
        elif kind == "rmsprop":
            assert self.buf is not None
            self.buf.mul_(self.alpha).addcmul_(g, g, value=1.0 - self.alpha)
            p.addcdiv_(g, self.buf.sqrt().add_(self.eps), value=-lr)
        elif kind == "nadam":
            assert self.exp_avg is not None and self.exp_avg_sq is not None and self.mu_product is not None
            b1, b2 = self.betas
            self.steps.add_(1.0)
            mu = b1 * (1.0 - 0.5 * 0.96 ** (self.steps * self.momentum_decay))
            mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((self.steps + 1.0) * self.momentum_decay))
            self.mu_product.mul_(mu)
            self.exp_avg.lerp_(g, 1.0 - b1)
            self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = self.exp_avg_sq.div(1.0 - b2**self.steps).sqrt().add_(self.eps)
            p.sub_(lr * (1.0 - mu) / (1.0 - self.mu_product) * g / denom)
            p.sub_(lr * mu_next / (1.0 - self.mu_product * mu_next) * self.exp_avg / denom)
        else:
            assert self.exp_avg is not None and self.exp_avg_sq is not None
            b1, b2 = self.betas
            if kind == "adamw":
                p.mul_(1.0 - lr * wd)
            self.steps.add_(1.0)
            self.exp_avg.lerp_(g, 1.0 - b1)
            self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            step_size = lr / (1.0 - b1**self.steps)
            denom = (self.exp_avg_sq.sqrt() / (1.0 - b2**self.steps).sqrt()).add_(self.eps)
            p.sub_(step_size * self.exp_avg / denom)

    def _update_per_member(self, p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor) -> None:
        """`_update` with a (members, 1) learning-rate column (scalar `alpha=`/`value=` arguments need a float)."""
        kind = self.kind
        g = _decayed(g, p, self.wd)
        if kind == "sgd":
            p.sub_(lr * g)
        elif kind in ("momentum", "nesterov"):
            assert self.buf is not None
            self.buf.mul_(self.momentum).add_(g)
            d = g.add(self.buf, alpha=self.momentum) if kind == "nesterov" else self.buf
            p.sub_(lr * d)
        else:  # adagrad, rmsprop
            assert self.buf is not None
            if kind == "adagrad":
                self.buf.addcmul_(g, g, value=1.0)
            else:
                self.buf.mul_(self.alpha).addcmul_(g, g, value=1.0 - self.alpha)
            p.sub_(lr * g / self.buf.sqrt().add_(self.eps))


def _fused_runs_on(device: torch.device) -> bool:
    """torch's fused Adam kernels run on CUDA, and on the CPU from torch 2.4 (the project allows torch >= 2.2)."""
    from torch.torch_version import TorchVersion

    return device.type == "cuda" or TorchVersion(torch.__version__) >= (2, 4)


def _decayed(g: torch.Tensor, p: torch.Tensor, wd: float | torch.Tensor) -> torch.Tensor:
    """The gradient with L2 weight decay added (torch.optim's `grad + weight_decay * param`)."""
    if isinstance(wd, torch.Tensor):
        return g.addcmul(p, wd)
    return g.add(p, alpha=wd) if wd else g
