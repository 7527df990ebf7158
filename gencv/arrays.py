"""Array sources: `npz:PATH` (arrays X of any shape and y) and `images:DIR` (a folder per class of PNG/JPEG files)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gencv.errors import DataError, SpecError

__all__ = ["IMAGE_SUFFIXES", "load_image_folder", "load_npz"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """(C, H, W) of one sample of shape `shape`: (H, W) -> (1, H, W), (C, H, W) as it is; else None (not an image)."""
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return tuple(shape)
    return None


def load_npz(path: str, source: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
    """(X flattened to (n, features), y, image shape or None) from an .npz file with arrays `X` and `y`.

    X of shape (n, d) is a table; (n, H, W) and (n, C, H, W) are images (for model.kind=cnn or a module of
    your own, which get them flat and reshape them); other shapes are flattened.
    """
    p = Path(path)
    if not p.exists():
        raise SpecError(f"data.source: got {source!r}: file {path!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - a zip, pickle or format error: all mean "cannot read"
        raise DataError(f"data.source: cannot read npz file {path!r}: {exc}") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"data.source: npz file {path!r} lacks array(s) {missing} (has {sorted(arrays)}); save it "
                        "with numpy.savez(path, X=features, y=targets)")
    X, y = arrays["X"], np.ravel(arrays["y"])
    if X.ndim < 2 or len(X) != len(y):
        raise DataError(f"data.source: npz file {path!r}: X has shape {X.shape} and y {arrays['y'].shape}; X needs "
                        "one row per sample (n, ...) and y one value per row (n,)")
    if not np.issubdtype(X.dtype, np.number) and X.dtype != bool:
        raise DataError(f"data.source: npz file {path!r}: X has dtype {X.dtype}; give numbers")
    shape = _image_shape(X.shape[1:]) if X.ndim > 2 else None
    if X.ndim > 4:
        log.warning("npz X of shape %s: flattened to %d features per sample", X.shape, int(np.prod(X.shape[1:])))
    return X.reshape(len(X), -1).astype(np.float64), y, shape


def load_image_folder(path: str, source: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[str],
                                                                              tuple[int, ...]]:
    """(X (n, C*H*W) in [0, 1], class codes, class names, (C, H, W)) from DIR/<class>/<image>.png|jpg.

    Every image is read with Pillow and resized to `size` (height, width); images in colour make the
    whole set RGB (C=3), otherwise grey (C=1). Classes are the sub-folder names in sorted order.
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise SpecError(f"data.source: got {source!r}: {path!r} is not a folder; give a folder with one "
                        "sub-folder of PNG/JPEG images per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(c, f) for c in classes for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise DataError(f"data.source: {path!r} has {len(classes)} class folder(s) and {len(files)} image(s); "
                        "images:DIR needs at least two sub-folders (one per class) of .png/.jpg files")
    h, w = size
    images, labels = [], []
    for c, f in files:
        try:
            with Image.open(f) as im:
                images.append(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        except OSError as exc:
            raise DataError(f"data.source: cannot read image {str(f)!r}: {exc}") from None
        labels.append(classes.index(c))
    rgb = np.stack([np.asarray(im, dtype=np.float64) / 255.0 for im in images])  # (n, h, w, 3)
    grey = bool(np.all(rgb[..., :1] == rgb[..., 1:]))
    arr = rgb[..., :1] if grey else rgb
    arr = arr.transpose(0, 3, 1, 2)  # (n, C, H, W)
    log.info("images:%s: %d images, %d classes, resized to %dx%d (%s)", path, len(arr), len(classes), h, w,
             "grey" if grey else "RGB")
    return arr.reshape(len(arr), -1), np.asarray(labels), classes, tuple(arr.shape[1:])
