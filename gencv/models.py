"""Torch module factories: MLP, small CNN for image input, LSTM/GRU over lag windows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CNN", "MLP", "RNN", "init_weights_"]

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
        n_in: int,
        n_out: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = n_in
        for h in hidden:
            layers.append(nn.Linear(prev, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_act(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X.reshape(X.shape[0], -1))


class CNN(nn.Module):
    """Small conv net for image input given flat (n, C*H*W) and reshaped to `image_shape`."""

    def __init__(
        self,
        image_shape: Sequence[int],
        n_out: int,
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
        self.head = MLP(c * h * w, n_out, hidden, activation, dropout, batch_norm)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X.reshape(X.shape[0], *self.image_shape)))


class RNN(nn.Module):
    """LSTM or GRU over a window of lags given as (n, lags) or (n, lags, d); predicts from the last step."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        hidden: Sequence[int] = (32,),
        cell: str = "lstm",
        layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        size = int(hidden[0]) if hidden else 32
        cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.n_in = n_in
        self.rnn = cls(1, size, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(size, n_out)

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
