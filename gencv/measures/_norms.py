"""Norm-based measures: per-layer Frobenius/spectral norms, their products, distance from init."""

from __future__ import annotations

import logging
import math
import re

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _metric_suffix(param_name: str) -> str:
    """MLflow-safe metric suffix for a parameter name: 'net.0.weight' -> 'net_0_weight'."""
    return re.sub(r"[^A-Za-z0-9_]", "_", param_name)


def _finite_product(logs: list[float], label: str, notes: list[str]) -> float:
    total = math.fsum(logs)
    if total > math.log(torch.finfo(torch.float64).max):
        notes.append(f"{label} overflows float64 (log = {total:.1f}); reported the float64 maximum")
        return float(torch.finfo(torch.float64).max)
    return math.exp(total)


def _norm_values(
    module: nn.Module, init_state: dict[str, torch.Tensor] | None, notes: list[str]
) -> dict[str, float]:
    """Frobenius/spectral norm of every trainable weight with >= 2 dims (reshaped to (out, -1)), products,
    log-products, total L2 norm, distance from `init_state` and the trainable parameter count."""
    values: dict[str, float] = {}
    fro_logs: list[float] = []
    spec_logs: list[float] = []
    sq_total = 0.0
    sq_dist = 0.0
    n_params = 0
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for name, p in named:
            w = p.detach()
            n_params += w.numel()
            sq_total += float((w.double() ** 2).sum())
            if init_state is not None:
                if name not in init_state:
                    raise ValueError(
                        f"init_state has no entry {name!r} (a trainable parameter); pass the module's "
                        "state_dict() captured before training"
                    )
                w_init = init_state[name]
                if tuple(w_init.shape) != tuple(w.shape):
                    raise ValueError(
                        f"init_state[{name!r}] has shape {tuple(w_init.shape)} but the parameter has "
                        f"{tuple(w.shape)}; pass the state_dict of this same architecture"
                    )
                diff = w.double() - w_init.detach().to(device=w.device, dtype=torch.float64)
                sq_dist += float((diff**2).sum())
            if w.dim() < 2:
                continue
            mat = w.reshape(w.shape[0], -1).double()
            fro = float(torch.linalg.matrix_norm(mat, ord="fro"))
            spec = float(torch.linalg.matrix_norm(mat, ord=2))
            suffix = _metric_suffix(name)
            values[f"norm_frobenius_{suffix}"] = fro
            values[f"norm_spectral_{suffix}"] = spec
            fro_logs.append(math.log(fro) if fro > 0 else -math.inf)
            spec_logs.append(math.log(spec) if spec > 0 else -math.inf)
    if fro_logs:
        values["norm_frobenius_product"] = _finite_product(fro_logs, "norm_frobenius_product", notes)
        values["norm_spectral_product"] = _finite_product(spec_logs, "norm_spectral_product", notes)
        if all(math.isfinite(v) for v in fro_logs + spec_logs):
            values["norm_frobenius_log_product"] = math.fsum(fro_logs)
            values["norm_spectral_log_product"] = math.fsum(spec_logs)
    else:
        notes.append("norms: the module has no trainable weight matrix (>= 2 dims); no per-layer norms")
    values["norm_l2"] = math.sqrt(sq_total)
    if init_state is not None:
        values["dist_from_init"] = math.sqrt(sq_dist)
    values["n_params"] = float(n_params)
    return values
