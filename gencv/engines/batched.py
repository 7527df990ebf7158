"""The batched engine: all folds of one configuration trained as one stacked model.

Every fold is a *member*: its parameters are one row of a flat `(members, n_params)` tensor, and
its layers run as batched matrix products (`torch.baddbmm`, `StackedMLP`) or, for CNNs, batch norm,
RNNs and custom modules, as `torch.func.vmap` over `functional_call` (`StackedFunctional`), so one
training step advances every member at once. Each member keeps what the skorch engine gives its fold:

- its own preprocessing and initialization: the member's module is built and initialized as the
  skorch net builds it, under `torch.manual_seed(fold seed)`, so its initial weights are the skorch
  engine's;
- its own rows and shuffle order: each epoch draws `torch.randperm(n_fit)` from a generator that
  continues the fold seed's stream after initialization, the draws skorch's `TensorBatches` makes on
  the global RNG (identical while dropout is off; with dropout, skorch interleaves its masks into the
  same stream, so the orders are seeded but not skorch's);
- its own batches: rows are padded to the longest member and masked; a member with fewer batches
  in an epoch does not step on the batches it lacks (its optimizer state does not change either);
- its own early-stopping split (`InnerSplit`, the fold seed), patience, best weights and stop epoch;
  a stopped member no longer changes; the stack ends when every member has stopped;
- its own learning rate under a plateau schedule (one torch `ReduceLROnPlateau` per member);
- its own optimizer state (`stacked_optim`: the update rules of `torch.optim`'s SGD, momentum, Nesterov,
  Adagrad, RMSprop, Adam, AdamW and NAdam with per-member step counts), L1 penalty and per-member
  gradient-norm clipping;
- its own `train.stop_at_train_loss`: the data loss on its fitted rows in eval mode after every epoch;
  a member that reaches the target stops there (recorded as skorch's `StopAtTrainLoss` records it);
- its own dropout masks (one engine generator, seeded from the fold seeds; not skorch's masks);
- its own batch-norm running statistics, updated from its own real rows only, restored with its best weights.

`BatchedEngine.fit_population` trains many configurations (a tuning population: trials x folds) the same
way: members that share architecture, batch size, optimizer, epochs and schedule kind go in one stack, and
each member has its own learning rate, weight decay, L1, dropout rate and early-stopping patience
(per-member columns broadcast in the step; a float where every member agrees, as in a configuration's folds).

Each fold comes back as a fitted `NetClassifier`/`NetRegressor` (`NetEstimator.prepare_fit` did its
checks, target encoding and scaling) whose `net_` is a small stand-in holding the
member's trained module, criterion and epoch history, so predict, loss, measures and `to_torch`
are the estimator's own. `FoldFit.seconds` is the stack's wall time shared equally by the members.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gencv.augment import augment_refusal
from gencv.engines.base import EpochCallback, FoldFit, FoldStartCallback
from gencv.engines.batched_columns import _column, _epoch_rates, _Plateaus, _stack_rows
from gencv.engines.batched_prep import Member as _Member, MemberPrep
from gencv.engines.skorch_engine import SkorchEngine
from gencv.engines.stacked_func import functional_key, make_stack
from gencv.engines.stacked_mlp import StackedMLP
from gencv.engines.stacked_optim import STACKED_OPTIMIZERS, StackedOptimizer
from gencv.errors import DivergenceError, GencvError
from gencv.seeds import derive_seed
from gencv.splits import Fold

__all__ = ["AutoEngine", "BatchedEngine", "UnsupportedSettingError", "engine_used", "unsupported_setting"]

log = logging.getLogger(__name__)

_SCHEDULES = ("none", "step", "exponential", "cosine", "plateau")


class UnsupportedSettingError(GencvError, ValueError):
    """The batched engine cannot train this configuration; the message names the setting."""


def unsupported_setting(estimator: Any) -> str | None:
    """Why the batched engine cannot train `estimator` ("field: got X; ..."), or None when it can.

    Settings the estimator itself refuses are not reported here: each fold's fit fails on them, as in the
    skorch engine.
    """
    if getattr(estimator, "base", None) is not None:
        return (f"model.base: got {getattr(estimator.base, 'tags', {}).get('gencv.base', 'a base network')}; "
                "the batched engine does not load, freeze or re-head a base network")
    try:
        _, t = estimator._specs()
    except ValueError:
        return None
    if (refusal := augment_refusal(getattr(estimator, "augment", None), "the batched engine")) is not None:
        return refusal
    if t.optimizer not in STACKED_OPTIMIZERS:
        return f"train.optimizer: got {t.optimizer!r}; the batched engine supports {', '.join(STACKED_OPTIMIZERS)}"
    if t.schedule.kind not in _SCHEDULES:
        return (f"train.schedule.kind: got {t.schedule.kind!r}; the batched engine supports "
                f"{', '.join(_SCHEDULES)}")
    return None


def engine_used(name: str, estimator: Any) -> str:
    """The engine that `train.engine: name` trains `estimator` with (`auto` resolved to batched or skorch)."""
    if name != "auto":
        return name
    return "batched" if unsupported_setting(estimator) is None else "skorch"


class _MemberNet:
    """What a fitted `NetEstimator` reads from its skorch net, for a member of the stack."""

    def __init__(self, module: nn.Module, criterion: nn.Module, device: str, history: list[dict[str, Any]]) -> None:
        self.module_ = module
        self.criterion_ = criterion
        self.device = device
        self.history = history
        self.callbacks_: list[tuple[str, Any]] = []


class BatchedEngine:
    """All folds as one stacked model; the skorch engine's per-fold semantics (see the module docstring)."""

    name = "batched"

    def fit_folds(
        self,
        estimator: Any,
        X: np.ndarray,
        y: np.ndarray,
        folds: Sequence[Fold],
        seeds: Sequence[int],
        *,
        groups: np.ndarray | None = None,
        eval_on_valid: bool = True,
        on_fold_start: FoldStartCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> Iterator[FoldFit]:
        if len(folds) != len(seeds):
            raise ValueError(f"got {len(folds)} folds but {len(seeds)} seeds; pass one seed per fold")
        reason = unsupported_setting(estimator)
        if reason is not None:
            raise UnsupportedSettingError(f"{reason}; use train.engine: skorch (or auto, which falls back)")
        return self._fits(estimator, X, y, list(folds), list(seeds), groups, eval_on_valid, on_fold_start, on_epoch)

    def fit_population(
        self,
        estimators: Sequence[Any],
        X: np.ndarray,
        y: np.ndarray,
        folds: Sequence[Fold],
        seeds: Sequence[int],
        *,
        groups: np.ndarray | None = None,
        eval_on_valid: bool = True,
        prune: str = "none",
    ) -> list[list[FoldFit]]:
        """Fit every estimator (a trial's configuration) on every fold, all as members of stacked models.

        Members whose architecture, batch size, optimizer, epochs, schedule kind or dtype differ go in
        different stacks; within a stack each member has its own learning rate, weight decay, L1, dropout
        rate and early-stopping patience / min_delta. `seeds[i]` seeds fold i of every estimator, so each
        member trains as `fit_folds(estimator, ...)` trains it alone (dropout masks aside). Returns, per
        estimator, its FoldFits in fold order; a member's failure (divergence) is its FoldFit's error.

        `prune="median"` (`tune.population_pruning`): at a quarter of the epochs, the configurations of a stack
        whose mean monitored loss (held-out curve, else early-stopping split, else training loss) over their
        folds is above the median of the stack's configurations stop there; their estimators carry
        `population_pruned_ = (epoch, loss, median)` (None for the others).
        """
        if len(folds) != len(seeds):
            raise ValueError(f"got {len(folds)} folds but {len(seeds)} seeds; pass one seed per fold")
        for e, est in enumerate(estimators):
            reason = unsupported_setting(est)
            if reason is not None:
                raise UnsupportedSettingError(f"estimator {e}: {reason}; train it with the skorch engine")
        if prune not in ("none", "median"):
            raise ValueError(f"prune: got {prune!r}; use 'none' or 'median'")
        return _population(list(estimators), X, y, list(folds), list(seeds), groups, eval_on_valid, None, None,
                           prune)

    def _fits(self, estimator: Any, X: np.ndarray, y: np.ndarray, folds: list[Fold], seeds: list[int],
              groups: np.ndarray | None, eval_on_valid: bool, on_fold_start: FoldStartCallback | None,
              on_epoch: EpochCallback | None) -> Iterator[FoldFit]:
        yield from _population([estimator], X, y, folds, seeds, groups, eval_on_valid, on_fold_start, on_epoch)[0]


def _stack_key(m: _Member) -> str:
    """What members of one stack share: all settings but the per-member hyper-parameters."""
    es = m.train.early_stopping
    return json.dumps([list(m.X.shape[1:]), m.est._n_out(), m.model.model_dump(mode="json", exclude={"dropout"}),
                       m.train.model_dump(mode="json", exclude={"lr", "weight_decay", "l1", "early_stopping"}),
                       None if es is None else es.model_dump(mode="json", exclude={"patience", "min_delta"}),
                       functional_key(m.est, m.module, m.model.dropout)],
                      sort_keys=True, default=str)


def _population(estimators: list[Any], X: np.ndarray, y: np.ndarray, folds: list[Fold], seeds: list[int],
                groups: np.ndarray | None, eval_on_valid: bool, on_fold_start: FoldStartCallback | None,
                on_epoch: EpochCallback | None, prune: str = "none") -> list[list[FoldFit]]:
    """Prepare every (estimator, fold) member, train them in stacks of shared settings, collect the fits."""
    t0 = time.perf_counter()
    failed: dict[tuple[int, int], Exception] = {}
    members: dict[tuple[int, int], _Member] = {}
    for e, estimator in enumerate(estimators):
        prep = MemberPrep(estimator, X, y, groups, eval_on_valid)
        for pos, (fold, seed) in enumerate(zip(folds, seeds)):
            if on_fold_start is not None:
                on_fold_start(fold.index)
            try:
                members[e, pos] = prep.member(fold, seed)
                members[e, pos].config = e
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # a fold's failure is reported, the other folds go on
                failed[e, pos] = exc
    stacks: dict[str, list[_Member]] = {}
    for m in members.values():  # one-hot widths differ when a fold lacks a category; trials differ in settings
        stacks.setdefault(_stack_key(m), []).append(m)
    if len(estimators) > 1:
        log.info("batched engine: %d configurations x %d folds in %d stack(s)", len(estimators), len(folds),
                 len(stacks))
    for group in stacks.values():
        for chunk in _chunks(group, group[0].train.max_members):
            _train(chunk, chunk[0].train, on_epoch, prune)
    share = (time.perf_counter() - t0) / max(1, len(folds) * len(estimators))
    out: list[list[FoldFit]] = []
    for e in range(len(estimators)):
        fits = []
        for pos, (fold, seed) in enumerate(zip(folds, seeds)):
            if (e, pos) in failed:
                fits.append(FoldFit(fold, seed, None, failed[e, pos], share))
            else:
                mb = members[e, pos]
                fits.append(FoldFit(fold, seed, None if mb.error else mb.est, mb.error, share))
        out.append(fits)
    return out


#: bytes a stack may hold in its stacked tensors (padded rows of every member, parameters, gradients and
#: optimizer state) unless `train.max_members` says how many members go in one stack
MEMORY_BUDGET = 2 * 1024**3


def _member_bytes(m: _Member, n_pad: int) -> int:
    """A member's share of a stack: its padded fit / early-stopping / held-out rows, and parameters x 5
    (weights, gradient, best weights, two optimizer moments)."""
    width = int(np.prod(m.X.shape[1:])) if m.X.dim() > 1 else 1
    rows = n_pad + (0 if m.X_es is None else len(m.X_es)) + (0 if m.X_ev is None else len(m.X_ev))
    n_params = sum(p.numel() for p in m.module.parameters())
    return (rows * (width + 1) + 5 * n_params) * m.X.element_size()


def _chunks(members: list[_Member], max_members: int | None) -> list[list[_Member]]:
    """Members split into stacks of at most `max_members` (or what fits `MEMORY_BUDGET`), in fold order."""
    if not members:
        return []
    n = max_members
    if n is None:
        n_pad = max(len(m.X) for m in members)
        n = max(1, MEMORY_BUDGET // max(1, max(_member_bytes(m, n_pad) for m in members)))
    if n < len(members):
        log.info("batched engine: %d folds in %d stacks of at most %d (%s)", len(members),
                 -(-len(members) // n), n, "train.max_members" if max_members else
                 f"a memory budget of {MEMORY_BUDGET / 1e6:g} MB")
    return [members[i:i + n] for i in range(0, len(members), n)]


def _row_losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Per-row criterion (members, rows): cross-entropy on logits or squared error."""
    if task == "classification":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(y.shape[:2])
    return ((out - y) ** 2).mean(-1)


def _masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (losses * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _train(members: list[_Member], t: Any, on_epoch: EpochCallback | None, prune: str = "none") -> None:
    """Train every member in lockstep, then hand each its module, history and early-stopping outcome."""
    est0 = members[0].est
    task, dtype, device = est0.task, getattr(torch, t.dtype), torch.device(t.device)
    stack = make_stack([m.module for m in members])  # StackedMLP for a plain MLP, else StackedFunctional
    M, B = len(members), t.batch_size
    flat = torch.stack([stack.flatten(m.module) for m in members]).to(device)
    grad_buf = torch.zeros_like(flat)
    params = stack.leaves(flat, grad_buf)
    X_fit, fit_mask = _stack_rows([m.X for m in members])
    y_fit, _ = _stack_rows([m.y for m in members])
    X_fit, y_fit, fit_mask = X_fit.to(device), y_fit.to(device), fit_mask.to(device=device, dtype=dtype)
    n_fit = [len(m.X) for m in members]
    es = t.early_stopping
    target = t.stop_at_train_loss
    if es is not None:
        X_es, es_mask = _stack_rows([m.X_es for m in members])
        y_es, _ = _stack_rows([m.y_es for m in members])
        X_es, y_es, es_mask = X_es.to(device), y_es.to(device), es_mask.to(device=device, dtype=dtype)
        best = flat.detach().clone()
    has_eval = any(m.X_ev is not None for m in members)
    by_stack = task == "classification" and all(m.curve.name == "accuracy" for m in members)
    if has_eval:
        X_ev, ev_mask = _stack_rows([m.X_ev for m in members])
        X_ev, ev_mask = X_ev.to(device), ev_mask.to(device=device, dtype=dtype)
        y_ev, _ = _stack_rows([None if m.y_ev is None else torch.as_tensor(m.y_ev) for m in members])
        y_ev = y_ev.to(device)
    # the per-member hyper-parameters: one float where the members agree (a configuration's folds), else a column
    wd = _column([m.train.weight_decay for m in members], dtype, device)
    l1 = _column([m.train.l1 for m in members], dtype, device)
    l1 = l1.squeeze(1) if isinstance(l1, torch.Tensor) else l1
    p_drop = _column([m.model.dropout for m in members], dtype, device)
    p_drop = p_drop.unsqueeze(2) if isinstance(p_drop, torch.Tensor) else p_drop
    opt = StackedOptimizer(t.optimizer, flat, momentum=t.momentum, weight_decay=wd)
    drop_gen = torch.Generator(device=device)
    drop_gen.manual_seed(derive_seed(members[0].seed, "batched-dropout", *[m.seed for m in members[1:]]))
    # the generic stack needs its generator in every training forward: train mode (batch norm) and seeded masks
    has_dropout = isinstance(p_drop, torch.Tensor) or p_drop > 0 or not isinstance(stack, StackedMLP)
    plateau = _Plateaus([m.train for m in members]) if t.schedule.kind == "plateau" else None
    lrs = None if plateau is not None else _epoch_rates([m.train for m in members], dtype, device)
    n_pad = max(n_fit)
    offsets = torch.arange(M).unsqueeze(1) * n_pad
    pos = torch.arange(n_pad)
    for epoch in range(1, t.max_epochs + 1):
        alive = [m.alive for m in members]
        if not any(alive):
            break
        t_epoch = time.perf_counter()
        if all(alive) and min(n_fit) == n_pad:  # one size (k-fold, leave-one-out): stacked at once
            perm = torch.stack([torch.randperm(n_pad, generator=m.gen) for m in members])
        else:
            perm = torch.zeros(M, n_pad, dtype=torch.long)
            for i, m in enumerate(members):
                if alive[i]:
                    perm[i, : n_fit[i]] = torch.randperm(n_fit[i], generator=m.gen)
        n_rows = torch.tensor([n if a else 0 for n, a in zip(n_fit, alive)])
        idx = (perm + offsets).view(-1).to(device)  # each member's rows in its own order: one row gather
        Xp = X_fit.view(M * n_pad, *X_fit.shape[2:]).index_select(0, idx).view_as(X_fit)
        yp = y_fit.view(M * n_pad, *y_fit.shape[2:]).index_select(0, idx).view_as(y_fit)
        row_mask = (pos.unsqueeze(0) < n_rows.unsqueeze(1)).to(device=device, dtype=dtype)
        n_batches = (int(n_rows.max()) + B - 1) // B
        # rows each member has in each batch (CPU); a batch every member fills alike needs no mask
        counts = (n_rows.unsqueeze(0) - torch.arange(n_batches).unsqueeze(1) * B).clamp(min=0, max=B)
        widths = (n_pad - torch.arange(n_batches) * B).clamp(max=B)  # the batch slices' lengths, padding included
        plain = (counts == widths.unsqueeze(1)).all(1).tolist()
        all_step = (counts > 0).all(1).tolist()
        batch_losses = []
        for b in range(n_batches):
            s = b * B
            out = stack.forward(params, Xp[:, s : s + B], drop_gen if has_dropout else None, p_drop, counts[b])
            losses = _row_losses(out, yp[:, s : s + B], task)
            loss_m = losses.mean(1) if plain[b] else _masked_mean(losses, row_mask[:, s : s + B])
            if isinstance(l1, torch.Tensor) or l1 > 0:
                loss_m = loss_m + l1 * stack.l1(params)
            stepping = counts[b] > 0
            if not bool(torch.isfinite(loss_m.detach()).all()):  # as skorch: a member stops at its first
                bad = stepping & ~torch.isfinite(loss_m.detach()).cpu()  # diverged batch, before the step
                for i in torch.nonzero(bad).flatten().tolist():
                    loss = float(loss_m[i].detach())
                    members[i].alive, members[i].error = False, stack.errors.pop(i, None) or DivergenceError(
                        f"training loss became {loss} at epoch {epoch}, batch {b + 1}; "
                        "lower train.lr, set train.clip_grad_norm, or scale the data", epoch=epoch, batch=b + 1)
                    n_rows[i] = 0
                    counts[b:, i] = 0
                row_mask = (pos.unsqueeze(0) < n_rows.unsqueeze(1)).to(device=device, dtype=dtype)
                plain[b:] = [False] * (n_batches - b)
                all_step = (counts > 0).all(1).tolist()
                stepping = counts[b] > 0
                if not bool(stepping.any()):  # every member with rows here failed: nothing to step
                    batch_losses.append(torch.zeros_like(loss_m.detach()))
                    continue
            step_dev = None if all_step[b] else stepping.to(device)
            if step_dev is not None:
                loss_m = torch.where(step_dev, loss_m, torch.zeros_like(loss_m))
            grad_buf.zero_()
            with warnings.catch_warnings():  # the leaves are strided views by design (see StackedMLP.leaves)
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")
                loss_m.sum().backward()
            stack.sync_grads_(params, grad_buf, stack.layout)
            grad = grad_buf
            if t.clip_grad_norm is not None:  # skorch's GradientNormClipping, per member
                norm = grad.norm(dim=1, keepdim=True)
                grad = grad * (t.clip_grad_norm / (norm + 1e-6)).clamp(max=1.0)
            with torch.no_grad():
                rows = None if step_dev is None else torch.nonzero(step_dev).flatten()
                if rows is None or len(rows):
                    opt.step_(flat, grad, plateau.rates(dtype, device) if plateau else lrs[epoch - 1], rows)
            batch_losses.append(loss_m.detach())
        loss_sum = (torch.stack(batch_losses) * counts.to(device, dtype)).sum(0)
        with torch.no_grad():
            train_loss = (loss_sum / n_rows.clamp(min=1).to(device, dtype)).cpu().tolist()
            es_loss = _masked_mean(_row_losses(stack.forward(params, X_es, None), y_es, task), es_mask).cpu().tolist() \
                if es is not None else None
            fit_loss = _masked_mean(_row_losses(stack.forward(params, X_fit, None), y_fit, task), fit_mask).cpu() \
                .tolist() if target is not None else None  # the criterion alone, eval mode, as StopAtTrainLoss
            if has_eval:
                out_ev = stack.forward(params, X_ev, None)
                ev_loss = _masked_mean(_row_losses(out_ev, y_ev, task), ev_mask).cpu().tolist()
                if by_stack:  # accuracy: counts of the argmax hits over the stack, as np.mean(y == pred)
                    hits = (out_ev.argmax(-1) == y_ev).to(torch.float64) * ev_mask.to(torch.float64)
                    ev_score = (hits.sum(1) / ev_mask.to(torch.float64).sum(1).clamp(min=1.0)).cpu().tolist()
                else:
                    out_ev_np = out_ev.cpu().numpy()
        seconds = (time.perf_counter() - t_epoch) / max(1, sum(alive))
        improved: list[int] = []
        for i, m in enumerate(members):
            if not alive[i] or not m.alive:
                continue
            row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss[i], "train_batch_count":
                                   (n_fit[i] + B - 1) // B, "dur": seconds}
            if es_loss is not None:
                row["valid_loss"] = es_loss[i]
            if has_eval and m.X_ev is not None:
                row["curve_valid_loss"] = ev_loss[i]
                row["curve_valid_score"] = ev_score[i] if by_stack else \
                    float(m.curve(out_ev_np[i, : len(m.X_ev)], m.y_ev))
            if fit_loss is not None:
                row["curve_fit_loss"] = fit_loss[i]
            m.history.append(row)
            if on_epoch is not None:
                on_epoch(m.fold.index, epoch, dict(row))
            if fit_loss is not None and fit_loss[i] <= target:
                m.alive, m.stop_epoch = False, epoch
            if plateau is not None:  # skorch's LRScheduler steps ReduceLROnPlateau on the monitored loss
                plateau.step(i, row["valid_loss" if es is not None else "train_loss"])
            if es is not None:  # skorch's EarlyStopping, threshold_mode="abs", lower is better
                m_es = m.train.early_stopping  # patience and min_delta are the member's own
                if es_loss[i] < m.threshold:
                    m.misses, m.threshold, m.best_epoch, m.has_best = 0, es_loss[i] - m_es.min_delta, epoch, True
                    improved.append(i)
                else:
                    m.misses += 1
                if m.misses == m_es.patience:
                    m.alive = False
        if es is not None and es.restore_best and improved:
            idx = torch.tensor(improved, device=device)
            best.index_copy_(0, idx, flat.detach()[idx])
            stack.keep_best_(idx)
        if prune == "median" and epoch == -(-t.max_epochs // 4) and epoch < t.max_epochs:
            _prune_median(members, epoch)
        live = [i for i, m in enumerate(members) if m.alive]
        if 0 < len(live) <= len(members) * COMPACT_AT and epoch < t.max_epochs:
            # most members have stopped: hand them back now and go on with a stack of the others only
            _hand_back(members, [i for i in range(len(members)) if not members[i].alive], flat,
                       best if es is not None else None, es, stack, t)
            log.debug("batched engine: epoch %d, %d of %d members go on in a smaller stack", epoch, len(live),
                      len(members))
            keep = torch.tensor(live, device=device)
            members, n_fit, M = [members[i] for i in live], [n_fit[i] for i in live], len(live)
            flat = flat.detach().index_select(0, keep)
            grad_buf = torch.zeros_like(flat)
            stack.compact_(keep)
            params = stack.leaves(flat, grad_buf)
            opt.compact_(keep, flat)
            n_pad = max(n_fit)  # the survivors' longest rows: padding beyond them no longer computed
            X_fit, y_fit, fit_mask = (v[keep, :n_pad].contiguous() for v in (X_fit, y_fit, fit_mask))
            pos = torch.arange(n_pad)
            if es is not None:
                X_es, y_es, es_mask, best = X_es[keep], y_es[keep], es_mask[keep], best[keep]
            if has_eval:
                X_ev, ev_mask, y_ev = X_ev[keep], ev_mask[keep], y_ev[keep]
            wd, l1, p_drop = (v[keep] if isinstance(v, torch.Tensor) else v for v in (wd, l1, p_drop))
            if plateau is not None:
                plateau.keep(live)
            else:
                lrs = [r[keep] if isinstance(r, torch.Tensor) else r for r in lrs]
            offsets = torch.arange(M).unsqueeze(1) * n_pad
    _hand_back(members, list(range(len(members))), flat, best if es is not None else None, es, stack, t)


def _prune_median(members: list[_Member], epoch: int) -> None:
    """Stop the members of every configuration whose mean monitored loss this epoch is above the median of the
    stack's configurations (three or more) that trained this epoch."""
    losses: dict[int, list[float]] = {}
    for m in members:
        if m.error is None and m.history and m.history[-1]["epoch"] == epoch:
            row = m.history[-1]
            losses.setdefault(m.config, []).append(row.get("curve_valid_loss", row.get("valid_loss",
                                                                                      row["train_loss"])))
    if len(losses) < 3:
        return
    means = {c: float(np.mean(v)) for c, v in losses.items()}
    median = float(np.median(list(means.values())))
    for m in members:
        if m.config in means and means[m.config] > median and m.error is None:
            m.alive, m.pruned = False, (epoch, means[m.config], median)
    log.info("batched engine: population pruning at epoch %d: %d of %d configurations above the median loss %.4g "
             "stop", epoch, sum(v > median for v in means.values()), len(means), median)


#: the share of a stack's members still training at or below which the stack is rebuilt with them only
#: (the stopped members' rows no longer cost a matrix product)
COMPACT_AT = 0.5


def _hand_back(members: list[_Member], rows: list[int], flat: torch.Tensor, best: torch.Tensor | None, es: Any,
               stack: Any, t: Any) -> None:
    """Hand back the members at stack rows `rows`: each its last weights, or with `restore_best` its best
    epoch's (weights and buffers), loaded into its module; its estimator made a fitted one."""
    if not rows:
        return
    final = flat.detach()[rows]
    if es is not None and es.restore_best and best is not None:
        back = [j for j, i in enumerate(rows) if members[i].has_best and members[i].history
                and members[i].best_epoch != members[i].history[-1]["epoch"]]
        if back:
            final[back] = best[[rows[j] for j in back]]
            stack.restore_best_(torch.tensor([rows[j] for j in back], device=flat.device))
    target = t.stop_at_train_loss
    criterion: nn.Module = nn.CrossEntropyLoss() if members[0].est.task == "classification" else nn.MSELoss()
    final = final.cpu()
    for j, i in enumerate(rows):
        m = members[i]
        if m.error is not None:
            continue
        stack.load_(m.module, final[j])
        est = m.est
        est.net_ = _MemberNet(m.module, criterion, t.device, m.history)
        est.epochs_run_ = len(m.history)
        est.best_epoch_ = m.best_epoch if m.best_epoch > 0 else est.epochs_run_
        est.stop_reached_ = None if target is None else m.stop_epoch > 0
        est.stop_epoch_ = m.stop_epoch or None if target is not None else None
        est.population_pruned_ = m.pruned
        if t.device != "cpu":  # (the members' modules are built on the CPU)
            m.module.to(torch.device(t.device))


class AutoEngine:
    """The batched engine when it supports the configuration, else the skorch engine (the reason is logged)."""

    name = "auto"

    def fit_folds(self, estimator: Any, X: np.ndarray, y: np.ndarray, folds: Sequence[Fold], seeds: Sequence[int],
                  **kwargs: Any) -> Iterator[FoldFit]:
        reason = unsupported_setting(estimator)
        if reason is None:
            return BatchedEngine().fit_folds(estimator, X, y, folds, seeds, **kwargs)
        log.info("train.engine=auto: using the skorch engine (%s)", reason)
        return SkorchEngine().fit_folds(estimator, X, y, folds, seeds, **kwargs)
