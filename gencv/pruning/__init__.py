"""Network pruning: saliency masks (`torch.nn.utils.prune`) and structured surgery that shrinks the network.

Not to be confused with *trial* pruning (Optuna stopping a hopeless trial), which lives in `gencv.tuning`.
Each method in one line (README, section "Network pruning"):

- random: weights chosen uniformly at random, per layer (the control every pruning claim needs)
- magnitude: the smallest |w| of each layer
- global_magnitude: the smallest |w| over all layers (one threshold)
- gradient: the smallest |w * dL/dw| over all layers, on the fold's fitted rows (SNIP)
- hessian: the smallest 1/2 * H_ii * w^2 over all layers (Optimal Brain Damage)
- neuron: whole hidden units of Linear layers with the smallest L2 weight norm, removed (a smaller module)
- channel: whole Conv2d filters with the smallest L1 norm, removed (a smaller module)
"""

from __future__ import annotations

from dataclasses import dataclass

from gencv.pruning.finetune import (
    TIMING_REPEATS,
    TIMING_WARMUP,
    FinetuneResult,
    count_parameters,
    finetune_,
    inference_seconds,
)
from gencv.pruning.masks import (
    SaliencyData,
    apply_masks_,
    bake_,
    hessian_diagonal,
    masks_from_scores,
    prunable,
    rewind_,
    saliency,
    sparsity,
)
from gencv.pruning.surgery import keep_by_norm, mask_units_, shrink, structured_units

__all__ = ["METHODS", "TIMING_REPEATS", "TIMING_WARMUP", "FinetuneResult", "Method", "SaliencyData", "apply_masks_",
           "bake_", "count_parameters", "finetune_", "hessian_diagonal", "inference_seconds", "keep_by_norm",
           "mask_units_", "masks_from_scores", "prunable", "rewind_", "saliency", "shrink", "sparsity",
           "structured_units"]


@dataclass(frozen=True)
class Method:
    """A pruning method: masks with a saliency and a scope, or structured removal of units."""

    name: str
    kind: str  # "mask" | "structured"
    scope: str = "layer"  # masks: "layer" (each layer to the level) or "global" (one threshold)
    description: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("random", "mask", "layer", "uniformly random weights per layer (the control)"),
    Method("magnitude", "mask", "layer", "smallest |w| per layer"),
    Method("global_magnitude", "mask", "global", "smallest |w| across layers"),
    Method("gradient", "mask", "global", "smallest |w * dL/dw| on the fitted rows (SNIP)"),
    Method("hessian", "mask", "global", "smallest 1/2 H_ii w^2 (Optimal Brain Damage)"),
    Method("neuron", "structured", "layer", "hidden units with the smallest L2 weight norm, removed"),
    Method("channel", "structured", "layer", "conv filters with the smallest L1 norm, removed"),
)}
