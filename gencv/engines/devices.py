"""`train.device` checked against the machine before any training."""

from __future__ import annotations

from gencv.errors import SpecError

__all__ = ["check_device"]


def check_device(device: str) -> None:
    """Raise SpecError unless `train.device` exists on this machine."""
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise SpecError(f"train.device: got {device!r}, but this machine has {found} CUDA device(s); "
                            "use train.device=cpu" + (f" or cuda:0..cuda:{found - 1}" if found else ""))
    elif device == "mps" and not torch.backends.mps.is_available():
        raise SpecError("train.device: got 'mps', but MPS is not available here; use train.device=cpu")
