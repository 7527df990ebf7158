"""SHA-256 checksums of logged files (weights), checked when they are loaded again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["rows_digest", "sha256_file", "tag_key"]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tag_key(artifact_path: str) -> str:
    """The MLflow run tag holding an artifact's SHA-256, e.g. `gencv.sha256.model_weights/state_dict.pt`."""
    return f"gencv.sha256.{artifact_path}"


def rows_digest(rows: np.ndarray, of: str = "") -> str:
    """Short SHA-256 of row indices (as int64) within the data set whose digest is `of`: two parts with the
    same digest hold the same rows of the same data."""
    h = hashlib.sha256(of.encode())
    h.update(np.asarray(rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]
