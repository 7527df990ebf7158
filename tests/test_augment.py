"""Data augmentation (`gencv.augment`, `data.augment`): the transforms against numpy references, seeding,
validation, and a spy on every batch that reaches the network: augmented batches are training batches only."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from gencv.augment import Augmenter, affine_images, input_affine, make_augmenter
from gencv.cv import cross_validate
from gencv.engines import NetClassifier, NetRegressor, engine_used
from gencv.engines.batched import unsupported_setting
from gencv.errors import SpecError
from gencv.measures.config import MeasureConfig
from gencv.models import CNN
from gencv.runner import prepare
from gencv.spec import AugmentSpec, Experiment
from gencv.splits import Fold
from gencv.tuning.study import study_digest

from .conftest import tiny

ONE = torch.ones(1, dtype=torch.float64)
ZERO = torch.zeros(1, dtype=torch.float64)


def _digits(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:n].astype(np.float32), y[:n]


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(("tx", "ty"), [(1, 0), (0, -2), (-1, 1), (3, 3)])
def test_integer_shift_is_a_zero_filled_roll(tx: int, ty: int) -> None:
    img = torch.arange(1, 1 + 7 * 9, dtype=torch.float64).reshape(1, 1, 7, 9)
    out = affine_images(img, ZERO, ONE, torch.tensor([float(tx)]), torch.tensor([float(ty)]))[0, 0].numpy()
    ref = np.zeros((7, 9))
    src = img[0, 0].numpy()
    ref[max(ty, 0): 7 + min(ty, 0), max(tx, 0): 9 + min(tx, 0)] = src[max(-ty, 0): 7 - max(ty, 0),
                                                                      max(-tx, 0): 9 - max(tx, 0)]
    np.testing.assert_allclose(out, ref, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_match_numpy_rot90(k: int) -> None:
    img = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    out = affine_images(img, torch.full((2,), 90.0 * k), torch.ones(2), torch.zeros(2), torch.zeros(2))
    np.testing.assert_allclose(out.numpy(), np.rot90(img.numpy(), k, axes=(2, 3)), atol=1e-10)


def test_a_turn_of_a_non_square_image_keeps_pixel_distances() -> None:
    img = torch.zeros(1, 1, 5, 7, dtype=torch.float64)
    img[0, 0, 2, 5] = 1.0  # two pixels right of the centre (2, 3)
    out = affine_images(img, torch.tensor([90.0]), ONE, ZERO, ZERO)[0, 0]
    assert out[0, 3] == pytest.approx(1.0, abs=1e-10) and float(out.sum()) == pytest.approx(1.0, abs=1e-10)


def test_zoom_one_and_no_turn_is_the_identity() -> None:
    img = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    out = affine_images(img, torch.zeros(3), torch.ones(3), torch.zeros(3), torch.zeros(3))
    np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-12)


def test_image_transforms_work_on_the_loaded_pixels_under_standard_scaling() -> None:
    X, y = _digits(100)
    scaler = StandardScaler().fit(X)
    offset, slope = input_affine(scaler, 64)
    np.testing.assert_allclose(offset + slope * X, scaler.transform(X), atol=1e-4)
    aug = Augmenter(AugmentSpec(cutout=3), seed=0, task="classification", image_shape=(1, 8, 8),
                    offset=offset, slope=slope)
    out, *_ = aug(torch.as_tensor(scaler.transform(X), dtype=torch.float32), torch.as_tensor(y))
    raw = (out.numpy() - offset) / slope
    blanked = np.abs(raw - X) > 1e-3
    assert np.all(np.abs(raw[blanked]) < 1e-3)  # cut-out pixels are 0 as loaded (background), not 0 as scaled
    assert 1 <= blanked.sum(axis=1).max() <= 9 and np.allclose(raw[~blanked], X[~blanked], atol=1e-3)


def test_noise_has_the_given_standard_deviation_and_p_its_share_of_rows() -> None:
    X = torch.zeros(4000, 5)
    out, *_ = Augmenter(AugmentSpec(noise=0.5, p=0.3), seed=1, task="regression")(X, torch.zeros(4000, 1))
    touched = (out != 0).any(1).numpy()
    assert touched.mean() == pytest.approx(0.3, abs=0.03)  # binomial sd ~0.007
    assert float(out[touched].std()) == pytest.approx(0.5, rel=0.03)


def test_mixup_mixes_inputs_and_regression_targets_alike() -> None:
    y = torch.randn(64, 1)
    X = torch.cat([y, 2 * y], 1)
    out, y2, y_mix, lam = Augmenter(AugmentSpec(mixup=0.4), seed=2, task="regression")(X, y)
    assert y_mix is None and lam == 1.0
    np.testing.assert_allclose(out[:, :1].numpy(), y2.numpy(), atol=1e-6)
    assert not torch.allclose(y2, y)


def test_mixup_classification_keeps_labels_and_weights_the_mixed_in_ones() -> None:
    y = torch.arange(32) % 3
    X = torch.nn.functional.one_hot(y).float()
    out, y2, y_mix, lam = Augmenter(AugmentSpec(mixup=1.0), seed=3, task="classification")(X, y)
    assert torch.equal(y2, y) and 0 < lam < 1
    ref = lam * X + (1 - lam) * torch.nn.functional.one_hot(y_mix).float()
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-6)


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    X, y = torch.randn(50, 64), torch.arange(50) % 10
    spec = AugmentSpec(rotate=15, shift=1, scale=0.1, cutout=2, noise=0.1, mixup=0.2)
    kw = {"task": "classification", "image_shape": (1, 8, 8), "offset": np.zeros(64), "slope": np.ones(64)}
    a, b, c = (Augmenter(spec, seed=s, **kw) for s in (7, 7, 8))  # type: ignore[arg-type]
    for _ in range(3):
        xa, xb, xc = a(X, y)[0], b(X, y)[0], c(X, y)[0]
        assert torch.equal(xa, xb) and not torch.allclose(xa, xc)
    a.reset()
    assert torch.equal(a(X, y)[0], Augmenter(spec, seed=7, **kw)(X, y)[0])  # type: ignore[arg-type]


def test_augmented_fits_are_reproducible_and_paired_with_unaugmented_ones() -> None:
    X, y = _digits(80)
    kw = {"image_shape": (1, 8, 8), "channels": (4,), "hidden": (16,), "max_epochs": 2, "random_state": 5}
    fits = [NetClassifier("cnn", augment={"rotate": 10, "noise": 0.1}, **kw).fit(X, y) for _ in range(2)]  # type: ignore[arg-type]
    plain = NetClassifier("cnn", **kw).fit(X, y)  # type: ignore[arg-type]
    for k, v in fits[0].module_.state_dict().items():
        assert torch.equal(v, fits[1].module_.state_dict()[k])
        # the augmenter draws from its own generator: same init (and shuffle/dropout streams) as without it
        assert torch.equal(fits[0].init_state_[k], plain.init_state_[k])
    assert any(not torch.equal(v, plain.module_.state_dict()[k]) for k, v in fits[0].module_.state_dict().items())
    assert np.array_equal(fits[0].fit_positions_, plain.fit_positions_)  # the same early-stopping split


def test_all_zero_augment_is_off() -> None:
    assert make_augmenter({"rotate": 0, "noise": 0.0}, seed=0, task="classification") is None
    assert make_augmenter(AugmentSpec(noise=0.3, p=0.0), seed=0, task="classification") is None
    assert make_augmenter(None, seed=0, task="classification") is None


def test_regression_with_noise_and_mixup_trains() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=120)
    est = NetRegressor(hidden=(16,), max_epochs=30, lr=0.01, early_stopping=False, dropout=0.0,
                       augment={"noise": 0.05, "mixup": 0.2}, random_state=0).fit(X, y)
    assert est.score(X, y) > 0.8  # R^2 of an easy linear target, with augmentation on


# --------------------------------------------------------------------------- never outside training


class SpyCNN(CNN):
    """The built-in CNN, recording (training flag, input rows) of every forward call."""

    calls: ClassVar[list[tuple[bool, np.ndarray]]] = []

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        SpyCNN.calls.append((self.training, X.detach().cpu().numpy().copy()))
        return super().forward(X)


def test_spy_only_training_batches_are_augmented() -> None:
    X, y = _digits(300)
    folds = [Fold(i, np.setdiff1d(np.arange(240), np.arange(i, 240, 3)), np.arange(i, 240, 3)) for i in range(3)]
    est = NetClassifier(SpyCNN, image_shape=(1, 8, 8), channels=(4,), hidden=(16,), max_epochs=3, scale="none",
                        early_stopping={"patience": 5, "valid_fraction": 0.25},
                        augment={"rotate": 20, "shift": 1, "cutout": 2, "noise": 0.1, "mixup": 0.2})
    SpyCNN.calls.clear()
    res = cross_validate(est, X[:240], y[:240], folds, metric="accuracy", seed=0, X_test=X[240:], y_test=y[240:],
                         measures=["hessian_top"], measure_config=MeasureConfig(sample_size=32, max_iter=5))
    assert all(f.ok for f in res.folds) and "hessian_top_1" in res.folds[0].measures
    assert all(np.isfinite(f.es_loss) and f.test_scores for f in res.folds)  # early stopping and the test set ran
    rows = {r.tobytes() for r in X}
    train = [b for training, b in SpyCNN.calls if training]
    evals = [b for training, b in SpyCNN.calls if not training]
    assert train and evals
    # Every batch in eval mode (held-out folds, early-stopping split, test set, train scores, measures) is
    # rows of the data exactly as loaded (scale: none).
    assert all(r.tobytes() in rows for b in evals for r in b)
    altered = np.mean([r.tobytes() not in rows for b in train for r in b])
    assert altered > 0.99  # p=1 and a continuous random angle: every training row is changed


# --------------------------------------------------------------------------- spec and validation


def test_digests_unchanged_without_augment() -> None:
    # Computed by gencv before data.augment existed.
    assert tiny().digest() == "97b2f118e15788db" and study_digest(tiny()) == "316532002f6a9ef3"
    assert Experiment().digest() == "16aaa59e8b1bd0a8" and Experiment().data.augment is None
    on = tiny(**{"data.augment.noise": 0.1})
    assert on.digest() != tiny().digest() and study_digest(on) != study_digest(tiny())
    assert study_digest(on, legacy=True) != study_digest(tiny(), legacy=True)


@pytest.mark.parametrize(("path", "value", "match"), [
    ("data.augment.rotate", -5, r"data\.augment\.rotate: got -5"),
    ("data.augment.rotate", 200, r"data\.augment\.rotate: got 200"),
    ("data.augment.noise", -0.1, r"data\.augment\.noise: got -0\.1"),
    ("data.augment.p", 1.5, r"data\.augment\.p: got 1\.5"),
    ("data.augment.scale", 1.0, r"data\.augment\.scale: got 1\.0"),
    ("data.augment.mixup", -1, r"data\.augment\.mixup: got -1"),
    ("data.augment.rotat", 5, r"data\.augment\.rotat: unknown key\. Did you mean 'rotate'"),
])
def test_bad_values_name_the_field(path: str, value: object, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        tiny(**{path: value})


@pytest.mark.parametrize("option", ["rotate", "shift", "scale", "cutout"])
def test_image_options_on_a_table_are_refused_before_training(option: str) -> None:
    exp = tiny(**{f"data.augment.{option}": 0.5 if option == "scale" else 2})
    with pytest.raises(SpecError, match=rf"data\.augment\.{option}: got .*not images.*data\.augment\.noise"):
        prepare(exp)


@pytest.mark.parametrize(("path", "value", "match"), [
    ("data.augment.shift", 8, r"data\.augment\.shift: got 8.*at most 7"),
    ("data.augment.cutout", 9, r"data\.augment\.cutout: got 9.*at most 8"),
])
def test_image_options_too_large_for_the_image(path: str, value: int, match: str) -> None:
    exp = tiny(**{"data.source": "digits", "model.kind": "cnn", path: value})
    with pytest.raises(SpecError, match=match):
        prepare(exp)


def test_lbfgs_with_augmentation_is_refused_before_training() -> None:
    exp = tiny(**{"data.augment.noise": 0.1, "train.optimizer": "lbfgs"})
    with pytest.raises(SpecError, match=r"data\.augment: got \{'noise': 0\.1\} with train\.optimizer: lbfgs.*adam"):
        prepare(exp)


def test_table_options_and_the_spec_reach_the_estimator() -> None:
    exp = tiny(**{"data.augment": {"noise": 0.1, "mixup": 0.2}})
    est = prepare(exp).estimator
    assert est.augment == AugmentSpec(noise=0.1, mixup=0.2)
    assert prepare(tiny(**{"data.augment.noise": 0.0})).estimator.augment is None  # all zero: off


def test_batched_engine_refuses_augment_and_auto_falls_back() -> None:
    est = NetClassifier(augment={"noise": 0.1})
    assert unsupported_setting(est) == ("data.augment: got {'noise': 0.1}; the batched engine does not augment "
                                        "training batches")
    assert unsupported_setting(NetClassifier(augment={"noise": 0.0})) is None  # all zero: off
    assert engine_used("auto", est) == "skorch" and engine_used("auto", NetClassifier()) == "batched"
