from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungnet.config import from_dict
from lungnet.data.augmentation import AugmentConfig, build_augmenter, build_joint_augmenter
from lungnet.errors import ConfigError

RNG = np.random.default_rng(7)


def images(n=6, size=32, channels=1) -> np.ndarray:
    """Smooth, asymmetric images in [0, 1]: any rotation, flip or shift changes them."""
    yy, xx = np.mgrid[:size, :size] / size
    base = 0.6 * xx + 0.3 * yy**2
    batch = np.stack([base + 0.1 * RNG.random((size, size)) for _ in range(n)])
    return np.repeat(batch[..., None], channels, axis=-1).astype(np.float32)


def blob_masks(n=6, size=32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(n):
        cy, cx = RNG.integers(8, size - 8, 2)
        masks.append(((yy - cy) ** 2 / 30 + (xx - cx) ** 2 / 12 <= 1).astype(np.float32))
    return np.stack(masks)[..., None]


def test_layers_follow_the_config():
    layers = build_augmenter(
        AugmentConfig(rotation=0.2, vertical_flip=False, translation=0.0, zoom=0.1)
    ).layers
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert layers[0].mode == "horizontal"
    assert layers[1].factor == (-0.2, 0.2)
    full = build_augmenter(AugmentConfig(randaugment=True, augmix=True)).layers
    assert [type(layer).__name__ for layer in full][-2:] == ["RandAugment", "AugMix"]
    assert tuple(full[-2].value_range) == (0.0, 1.0) and tuple(full[-1].value_range) == (0.0, 1.0)


def test_no_transforms_is_identity():
    cfg = AugmentConfig(rotation=0.0, horizontal_flip=False, vertical_flip=False, translation=0.0)
    x = images()
    np.testing.assert_array_equal(build_augmenter(cfg)(x, training=True).numpy(), x)


def test_augmentation_changes_images_and_repeats_with_the_same_seed():
    x = images(8)
    a = build_augmenter(AugmentConfig(), seed=3)(x, training=True).numpy()
    b = build_augmenter(AugmentConfig(), seed=3)(x, training=True).numpy()
    c = build_augmenter(AugmentConfig(), seed=4)(x, training=True).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert all(not np.allclose(a[i], x[i], atol=1e-3) for i in range(len(x)))
    assert a.min() >= 0 and a.max() <= x.max() + 1e-5  # bilinear + reflect never leaves the input range


def test_flips_only_give_one_of_the_four_flips_of_each_image():
    cfg = AugmentConfig(rotation=0.0, translation=0.0)
    x = images(16)
    out = build_augmenter(cfg, seed=0)(x, training=True).numpy()
    seen = set()
    for i in range(len(x)):
        options = {
            "none": x[i],
            "h": x[i, :, ::-1],
            "v": x[i, ::-1],
            "hv": x[i, ::-1, ::-1],
        }
        match = [k for k, v in options.items() if np.array_equal(out[i], v)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 1  # flips do happen, per image


def test_joint_augmentation_keeps_mask_aligned_with_image():
    masks = blob_masks(12)
    augment = build_joint_augmenter(AugmentConfig(rotation=0.2, translation=0.15, zoom=0.1), seed=5)
    out_images, out_masks = augment(masks * 1.0, masks)
    out_images, out_masks = out_images.numpy(), out_masks.numpy()
    assert out_masks.shape == masks.shape and set(np.unique(out_masks)) <= {0.0, 1.0}
    np.testing.assert_array_equal((out_images > 0.5).astype(np.float32), out_masks)
    moved = [not np.array_equal(out_masks[i], masks[i]) for i in range(len(masks))]
    assert all(moved)


def test_joint_augmentation_with_three_channel_images():
    masks = blob_masks(4)
    augment = build_joint_augmenter(AugmentConfig(), seed=1)
    out_images, out_masks = augment(np.repeat(masks, 3, axis=-1), masks)
    assert out_images.shape == (4, 32, 32, 3) and out_masks.shape == (4, 32, 32, 1)
    np.testing.assert_array_equal((out_images.numpy()[..., 2:] > 0.5).astype(np.float32), out_masks.numpy())


def test_joint_augmentation_refuses_photometric_ops():
    with pytest.raises(ConfigError, match="segmentation"):
        build_joint_augmenter(AugmentConfig(randaugment=True))


def test_randaugment_and_augmix_run_in_tf_data_on_unit_range_images():
    x = images(4, channels=3)
    for cfg in (AugmentConfig(randaugment=True), AugmentConfig(augmix=True)):
        augmenter = build_augmenter(cfg, seed=2)

        def apply(batch, augmenter=augmenter):
            return augmenter(batch, training=True)

        out = next(iter(tf.data.Dataset.from_tensors(x).map(apply))).numpy()
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert not np.allclose(out, x)


def test_augmenter_is_a_keras_layer_usable_in_a_model():
    augmenter = build_augmenter(AugmentConfig())
    assert isinstance(augmenter, keras.layers.Layer)
    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, augmenter(inputs))
    x = images(2)
    np.testing.assert_array_equal(model(x, training=False).numpy(), x)  # inference: no augmentation


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"rotation": 0.7}, "rotation"),
        ({"rotation": -0.1}, "rotation"),
        ({"translation": 1.0}, "translation"),
        ({"zoom": -0.2}, "zoom"),
        ({"fill_mode": "mirror"}, "fill_mode"),
        ({"randaugment_ops": 0}, "randaugment_ops"),
        ({"randaugment_factor": 0.0}, "randaugment_factor"),
        ({"augmix_factor": 1.5}, "augmix_factor"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"augment.{field}"):
        dataclasses.replace(AugmentConfig(), **changes)


def test_config_from_dict():
    cfg = from_dict(AugmentConfig, {"rotation": 0.05, "vertical_flip": False, "seed": 9})
    assert (cfg.rotation, cfg.vertical_flip, cfg.seed) == (0.05, False, 9)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(AugmentConfig, {"rotate": 0.1}, "augment")
