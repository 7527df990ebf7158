"""Seed derivation: every random choice flows from one root seed (the spec's `seed`, which is logged)."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(root: int, *keys: int | str) -> int:
    """A 32-bit seed derived from the root seed and a path of keys (e.g. 'fold', 3)."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return int(np.random.SeedSequence([int(root), *ints]).generate_state(1)[0])
