"""A small residual MLP: the example module of `experiments/custom_resmlp.yaml` (model.kind: custom).

gencv passes `n_features` and `n_outputs` (the data's shape) because the constructor names them; `width`,
`depth` and `dropout` come from the spec's `model.kwargs`. The forward returns logits (classification) or one
value per row (regression): gencv applies the task's loss.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """x + f(x), with f = Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.f(x))


class ResMLP(nn.Module):
    """Input projection, `depth` residual blocks of `width` units, a linear head."""

    def __init__(self, n_features: int, n_outputs: int, width: int = 32, depth: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.blocks = nn.Sequential(*[Block(width, dropout) for _ in range(depth)])
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.inp(x))))
