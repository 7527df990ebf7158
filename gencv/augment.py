"""Data augmentation of training batches: image shifts, rotations, zooms and cutout, input noise, mixup.

An `Augmenter` transforms the mini-batches a network is *trained* on, and nothing else: held-out folds,
the early-stopping split, the test set and the rows measures use reach the network unchanged. Its random
draws come from its own generators, seeded from the fit's seed, so a fold's shuffle order, initial weights
and dropout masks are those of the same fold without augmentation (the comparison stays paired), and the
same seed gives the same augmented batches.

Geometric transforms work on the images as loaded (the batch is unscaled with the fitted per-pixel
scaling, transformed with `affine_grid`/`grid_sample`, zero-padded, and scaled back); `noise` is added in
the network's input units (standardized units with data.scale: standard). Mixup (Zhang et al. 2018) mixes
each batch with a shuffled copy of itself, lam ~ Beta(alpha, alpha): the inputs, and either the loss
(classification: lam * loss(y) + (1 - lam) * loss(y[perm])) or the targets themselves (regression).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gencv.errors import SpecError
from gencv.seeds import derive_seed
from gencv.spec import AugmentSpec

__all__ = ["IMAGE_OPTIONS", "Augmenter", "affine_images", "as_augment_spec", "augment_refusal", "check_augment",
           "input_affine", "make_augmenter"]

#: options that only make sense for images (they move or blank pixels)
IMAGE_OPTIONS = ("shift", "rotate", "scale", "cutout")


def as_augment_spec(value: Any) -> AugmentSpec | None:
    """`augment` as given (None, a dict of data.augment fields, or an AugmentSpec) -> spec, or None when off."""
    if value is None:
        return None
    if isinstance(value, dict):
        from pydantic import ValidationError

        try:
            value = AugmentSpec(**value)
        except ValidationError as exc:
            raise ValueError(f"augment: invalid setting(s):\n{exc}") from None
    if not isinstance(value, AugmentSpec):
        raise TypeError(f"augment: got {value!r}; use None, a dict such as {{'rotate': 10, 'shift': 1}} "
                         "or an AugmentSpec")
    return value if value.active else None


def augment_refusal(augment: Any, engine: str) -> str | None:
    """Why `engine`, which does not augment, cannot train with `augment` ("data.augment: got ..."); None when
    augmentation is off (or invalid: the estimator's fit refuses that)."""
    try:
        spec = as_augment_spec(augment)
    except (TypeError, ValueError):
        return None
    if spec is None:
        return None
    return f"data.augment: got {spec.model_dump(exclude_defaults=True)}; {engine} does not augment training batches"


def check_augment(spec: AugmentSpec | None, image_shape: tuple[int, ...] | None) -> None:
    """Raise SpecError (naming data.augment.<option>) when an option does not fit the data."""
    if spec is None:
        return
    if image_shape is None:
        for name in IMAGE_OPTIONS:
            value = getattr(spec, name)
            if value:
                raise SpecError(f"data.augment.{name}: got {value!r}, but the data are not images; "
                                f"{', '.join(IMAGE_OPTIONS)} move or blank pixels (image sources: data.source: digits, "
                                "npz:PATH of (n, C, H, W), images:DIR); for tables use data.augment.noise or "
                                f"data.augment.mixup, or set data.augment.{name}: 0")
        return
    _, h, w = image_shape
    side = max(h, w)
    if spec.shift >= side:
        raise SpecError(f"data.augment.shift: got {spec.shift}, which moves a {h}x{w} image out of its frame; "
                        f"use at most {side - 1} pixels (1 or 2 is usual)")
    if spec.cutout > side:
        raise SpecError(f"data.augment.cutout: got {spec.cutout}, larger than a {h}x{w} image; use at most {side} "
                        f"pixels (about a quarter of the side, e.g. {max(1, side // 4)})")


def input_affine(preprocess: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset, slope) with preprocess(x) = offset + slope * x per feature, for a per-feature affine scaling."""
    zero = np.asarray(preprocess.transform(np.zeros((1, n_features))), dtype=np.float64)[0]
    one = np.asarray(preprocess.transform(np.ones((1, n_features))), dtype=np.float64)[0]
    slope = one - zero
    return zero, np.where(slope == 0, 1.0, slope)


def affine_images(img: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor, tx: torch.Tensor,
                  ty: torch.Tensor) -> torch.Tensor:
    """Images (n, C, H, W) rotated by `degrees` (counter-clockwise as displayed, row 0 on top), zoomed by `zoom`
    about their centre, then shifted by (tx, ty) pixels (right, down); bilinear, zeros outside (one value each)."""
    n, c, h, w = img.shape
    angle = torch.deg2rad(degrees.double())
    cos, sin = angle.cos() / zoom.double(), angle.sin() / zoom.double()
    # The output-to-input map of that transform in pixel units, in affine_grid's normalized coordinates
    # (x: 2/w per pixel, y: 2/h per pixel; y points down, which flips the signs of a turn's sines).
    theta = torch.stack([torch.stack([cos, -sin * h / w, -2 * tx.double() / w], 1),
                         torch.stack([sin * w / h, cos, -2 * ty.double() / h], 1)], 1).to(img.device, img.dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Augmenter:
    """Augments a training batch (X, y) -> (X', y', y_mix, lam); seeded, one per fit.

    Parameters
    ----------
    spec : the active data.augment settings
    seed : the fit's seed; the generators are derived from it (`derive_seed(seed, "augment")`)
    task : "classification" or "regression" (how mixup treats the targets)
    image_shape : (C, H, W) of the flat rows, or None for tables
    offset, slope : the fitted input scaling per feature (`input_affine`), for images
    """

    def __init__(self, spec: AugmentSpec, *, seed: int, task: str, image_shape: tuple[int, ...] | None = None,
                 offset: np.ndarray | None = None, slope: np.ndarray | None = None) -> None:
        self.spec = spec
        self.seed = seed
        self.task = task
        self.image_shape = image_shape
        self.offset = offset
        self.slope = slope
        self.reset()

    def reset(self) -> None:
        """Restart the random streams (the next batch is augmented as the first one was)."""
        s = derive_seed(self.seed, "augment")
        self._gen = torch.Generator().manual_seed(s)
        self._rng = np.random.default_rng(s)

    def __getstate__(self) -> dict[str, Any]:  # generators do not pickle; a loaded one restarts its streams
        return {k: v for k, v in self.__dict__.items() if k not in ("_gen", "_rng")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.reset()

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self._gen, dtype=torch.float64)

    def __call__(self, X: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """The augmented batch: inputs, targets, the mixed-in targets (classification mixup) and their weight."""
        spec, n = self.spec, X.shape[0]
        out = X
        apply = (self._rand(n) < spec.p).to(X.device)
        if self.image_shape is not None and any(getattr(spec, k) for k in IMAGE_OPTIONS):
            out = torch.where(apply[:, None], self._image(X), X)
        if spec.noise > 0:
            noise = torch.randn(X.shape, generator=self._gen, dtype=torch.float64).to(X.device, X.dtype)
            out = out + spec.noise * noise * apply[:, None].to(X.dtype)
        if spec.mixup > 0 and n > 1:
            lam = float(self._rng.beta(spec.mixup, spec.mixup))
            perm = torch.randperm(n, generator=self._gen).to(X.device)
            out = lam * out + (1 - lam) * out[perm]
            if self.task == "classification":
                return out, y, y[perm], lam
            return out, lam * y + (1 - lam) * y[perm], None, 1.0
        return out, y, None, 1.0

    def _image(self, X: torch.Tensor) -> torch.Tensor:
        """Shift, rotate, zoom and cut out the images of the flat, scaled rows X; scaled rows back."""
        spec = self.spec
        c, h, w = self.image_shape  # type: ignore[misc]
        n = X.shape[0]
        offset = torch.as_tensor(self.offset, dtype=X.dtype, device=X.device)
        slope = torch.as_tensor(self.slope, dtype=X.dtype, device=X.device)
        img = ((X - offset) / slope).reshape(n, c, h, w)
        if spec.shift or spec.rotate or spec.scale:
            angle = (2 * self._rand(n) - 1) * spec.rotate
            zoom = 1 + (2 * self._rand(n) - 1) * spec.scale
            tx = torch.randint(-spec.shift, spec.shift + 1, (n,), generator=self._gen).double()
            ty = torch.randint(-spec.shift, spec.shift + 1, (n,), generator=self._gen).double()
            img = affine_images(img, angle, zoom, tx, ty)
        if spec.cutout:
            k = spec.cutout
            cy = torch.randint(0, h, (n, 1, 1), generator=self._gen).to(X.device) - k // 2
            cx = torch.randint(0, w, (n, 1, 1), generator=self._gen).to(X.device) - k // 2
            rows = torch.arange(h, device=X.device)[None, :, None]
            cols = torch.arange(w, device=X.device)[None, None, :]
            hole = (rows >= cy) & (rows < cy + k) & (cols >= cx) & (cols < cx + k)
            img = img.masked_fill(hole[:, None], 0.0)
        return img.reshape(n, -1) * slope + offset


def make_augmenter(augment: Any, *, seed: int, task: str, image_shape: tuple[int, ...] | None = None,
                   preprocess: Any = None, n_features: int | None = None) -> Augmenter | None:
    """The Augmenter of one fit (None when `augment` is None or all zero); `preprocess` is the fitted scaling."""
    spec = as_augment_spec(augment)
    if spec is None:
        return None
    check_augment(spec, image_shape)
    offset = slope = None
    if image_shape is not None:
        if preprocess is None or n_features is None:
            raise ValueError("make_augmenter: image augmentation needs the fitted preprocess and n_features")
        offset, slope = input_affine(preprocess, n_features)
    return Augmenter(spec, seed=seed, task=task, image_shape=image_shape, offset=offset, slope=slope)
