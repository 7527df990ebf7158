"""Array sources: npz files and image folders, made here, run under the CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gencv.data import load_dataset
from gencv.errors import DataError
from gencv.runner import run_experiment
from gencv.spec import DataSpec

from .conftest import tiny

CNN = {"model.kind": "cnn", "model.channels": [4], "model.hidden": [8], "train.max_epochs": 2,
       "cv.n_splits": 2, "data.test_size": 0.25}


def _images(n: int = 40, c: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 has a bright top half, class 0 a bright bottom half."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.uniform(0, 0.3, size=(n, c, h, w))
    X[y == 1, :, : h // 2] += 0.7
    X[y == 0, :, h // 2:] += 0.7
    return X, y


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 6, 5)])
def test_npz_images_keep_their_shape_and_run_under_the_cnn(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    X, y = _images(c=shape[0], h=shape[1], w=shape[2])
    path = tmp_path / "a.npz"
    np.savez(path, X=X, y=y)
    ds = load_dataset(DataSpec(source=f"npz:{path}"))
    assert ds.image_shape == shape and ds.task == "classification" and ds.classes == ["0", "1"]
    np.testing.assert_allclose(ds.X, X.reshape(len(X), -1).astype(np.float32), atol=0)
    out = run_experiment(tiny(**{"data.source": f"npz:{path}", **CNN}), refit=True)
    assert all(f.status == "ok" for f in out.cv.folds)
    assert out.refit_estimator.module_.image_shape == shape


def test_npz_of_hw_images_gets_one_channel_and_a_table_stays_a_table(tmp_path: Path) -> None:
    X, y = _images()
    np.savez(tmp_path / "hw.npz", X=X[:, 0], y=y * 1.5)
    ds = load_dataset(DataSpec(source=f"npz:{tmp_path / 'hw.npz'}"))
    assert ds.image_shape == (1, 8, 8) and ds.task == "regression"
    np.savez(tmp_path / "t.npz", X=X.reshape(40, -1), y=y)
    ds = load_dataset(DataSpec(source=f"npz:{tmp_path / 't.npz'}", task="regression"))
    assert ds.image_shape is None and ds.task == "regression" and ds.X.shape == (40, 64)


def test_npz_without_y_names_what_to_save(tmp_path: Path) -> None:
    np.savez(tmp_path / "b.npz", features=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"lacks array\(s\) \['X', 'y'\].*numpy.savez"):
        load_dataset(DataSpec(source=f"npz:{tmp_path / 'b.npz'}"))


def _folder(root: Path, rgb: bool, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """root/<cat|dog>/<i>.png (or .jpg for some); returns the first image of 'cat' as written (uint8, H x W x 3)."""
    X, y = _images(n=24, c=3, h=size[0], w=size[1])
    first = None
    for i, (img, label) in enumerate(zip(X, y)):
        arr = (np.clip(img.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
        if not rgb:
            arr = np.repeat(arr[..., :1], 3, axis=2)
        d = root / ("cat" if label == 0 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(d / f"{i:02d}.png")
        if first is None and label == 0:
            first = arr
    (root / "cat" / "notes.txt").write_text("not an image")
    return first


@pytest.mark.parametrize("rgb", [True, False])
def test_image_folder_is_resized_with_pillow_and_runs_under_the_cnn(tmp_path: Path, rgb: bool) -> None:
    first = _folder(tmp_path / "imgs", rgb)
    ds = load_dataset(DataSpec(source=f"images:{tmp_path / 'imgs'}", image_size=[8, 6]))
    c = 3 if rgb else 1
    assert ds.image_shape == (c, 8, 6) and ds.classes == ["cat", "dog"] and ds.n_samples == 24
    ref = np.asarray(Image.fromarray(first).resize((6, 8), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    np.testing.assert_allclose(ds.X[0].reshape(c, 8, 6), ref.transpose(2, 0, 1)[:c], atol=1e-6)
    out = run_experiment(tiny(**{"data.source": f"images:{tmp_path / 'imgs'}", "data.image_size": [8, 6], **CNN}),
                         refit=False)
    assert all(f.status == "ok" for f in out.cv.folds)


def test_image_folder_needs_two_class_folders(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="at least two sub-folders"):
        load_dataset(DataSpec(source=f"images:{tmp_path}"))
