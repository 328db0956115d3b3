from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungnet.config import from_dict
from lungnet.data.augmentation import (
    AugmentConfig,
    RandomAffine,
    affine_transforms,
    apply_affine,
    build_augmenter,
    build_joint_augmenter,
)
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
        AugmentConfig(rotation=0.2, vertical_flip=False, translation=0.0, zoom=0.1, fill_mode="constant")
    ).layers
    assert [type(layer).__name__ for layer in layers] == ["RandomAffine"]  # one warp for all four
    affine = layers[0]
    assert (affine.rotation, affine.translation, affine.zoom) == (0.2, 0.0, 0.1)
    assert (affine.horizontal_flip, affine.vertical_flip, affine.fill_mode) == (True, False, "constant")
    full = build_augmenter(AugmentConfig(randaugment=True, augmix=True)).layers
    assert [type(layer).__name__ for layer in full] == ["RandomAffine", "RandAugment", "AugMix"]
    assert tuple(full[-2].value_range) == (0.0, 1.0) and tuple(full[-1].value_range) == (0.0, 1.0)
    only_photometric = AugmentConfig(
        rotation=0.0, horizontal_flip=False, vertical_flip=False, translation=0.0, randaugment=True
    )
    assert [type(layer).__name__ for layer in build_augmenter(only_photometric).layers] == ["RandAugment"]


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
    assert seen == {"none", "h", "v", "hv"}  # the two flips are drawn independently, per image


# ---- geometry of one warp ----------------------------------------------------------------------------------


def warp(x, fill_mode="reflect", resampler="tensorflow", **params) -> np.ndarray:
    """`x` warped by explicit per-image parameters (lists), through `affine_transforms`."""
    params = {k: tf.constant(v) for k, v in params.items()}
    transforms = affine_transforms(x.shape[1], x.shape[2], **params)
    return apply_affine(x, transforms, fill_mode, resampler=resampler).numpy()


def test_quarter_turns_are_rot90_counter_clockwise():
    x = images(3, size=12)
    out = warp(x, angle=[math.pi / 2, -math.pi / 2, math.pi])
    np.testing.assert_allclose(out[0], np.rot90(x[0]), atol=1e-5)
    np.testing.assert_allclose(out[1], np.rot90(x[1], -1), atol=1e-5)
    np.testing.assert_allclose(out[2], np.rot90(x[2], 2), atol=1e-5)


def test_flips_are_np_flip():
    x = images(3, size=10)
    out = warp(x, flip_horizontal=[True, False, True], flip_vertical=[False, True, True])
    np.testing.assert_array_equal(out[0], np.flip(x[0], axis=1))
    np.testing.assert_array_equal(out[1], np.flip(x[1], axis=0))
    np.testing.assert_array_equal(out[2], np.flip(x[2], axis=(0, 1)))


@pytest.mark.parametrize("resampler", ["tensorflow", "opencv"])
def test_translation_by_whole_pixels_is_np_roll_inside_the_image(resampler):
    x = images(2, size=16)
    out = warp(x, resampler=resampler, translate_x=[3.0, -2.0], translate_y=[0.0, 5.0])
    # Content moves right / down by the shift; only the columns and rows filled from outside differ.
    np.testing.assert_allclose(out[0][:, 3:], np.roll(x[0], 3, axis=1)[:, 3:], atol=1e-6)
    np.testing.assert_allclose(out[1][5:, :-2], np.roll(x[1], (5, -2), axis=(0, 1))[5:, :-2], atol=1e-6)
    assert not np.allclose(out[0][:, :3], np.roll(x[0], 3, axis=1)[:, :3])  # reflected, not wrapped


def test_rotation_and_zoom_are_about_the_centre():
    # Bilinear interpolation reproduces a linear ramp exactly, so the warped ramp shows the exact map.
    size = 33
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    ramp = np.stack([xx, yy])[..., None]  # image 0: x coordinate, image 1: y coordinate
    c = (size - 1) / 2
    theta = math.radians(30.0)
    out = warp(ramp, angle=[theta, theta], zoom=[0.5, 0.5])
    # Output pixel p reads input c + 0.5 * R(theta) (p - c) (zoom 0.5: the centre half, magnified).
    want_x = c + 0.5 * (math.cos(theta) * (xx - c) - math.sin(theta) * (yy - c))
    want_y = c + 0.5 * (math.sin(theta) * (xx - c) + math.cos(theta) * (yy - c))
    np.testing.assert_allclose(out[0, ..., 0], want_x, atol=1e-3)
    np.testing.assert_allclose(out[1, ..., 0], want_y, atol=1e-3)
    assert out[0, 16, 16, 0] == pytest.approx(c) and out[1, 16, 16, 0] == pytest.approx(c)


def test_transforms_compose_in_keras_order_flip_rotate_translate():
    x = images(1, size=12)
    out = warp(x, flip_horizontal=[True], angle=[math.pi / 2], translate_x=[2.0])
    want = np.roll(np.rot90(np.flip(x[0], axis=1)), 2, axis=1)
    np.testing.assert_allclose(out[0][:, 2:], want[:, 2:], atol=1e-5)


@pytest.mark.parametrize("fill_mode", ["reflect", "constant", "nearest", "wrap"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_opencv_resampler_matches_tensorflow(fill_mode, channels):
    rng = np.random.default_rng(3)
    x = rng.random((4, 20, 17, channels), dtype=np.float32)  # noise: any misplaced sample shows
    params = {
        "angle": rng.uniform(-1, 1, 4).astype(np.float32).tolist(),
        "translate_x": rng.uniform(-4, 4, 4).astype(np.float32).tolist(),
        "zoom": rng.uniform(0.8, 1.2, 4).astype(np.float32).tolist(),
        "flip_vertical": [True, False, True, False],
    }
    a = warp(x, fill_mode, "tensorflow", **params)
    b = warp(x, fill_mode, "opencv", **params)
    assert b.shape == x.shape and b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("resampler", ["tensorflow", "opencv"])
def test_warp_can_replicate_grey_to_three_channels_in_the_same_pass(resampler):
    x = images(3, size=16)
    transforms = affine_transforms(
        16, 16, angle=tf.constant([0.3, -0.2, 1.0]), zoom=tf.constant([1.1, 0.9, 1.0])
    )
    grey = apply_affine(x, transforms, resampler=resampler)
    rgb = apply_affine(x, transforms, resampler=resampler, channels=3)
    assert rgb.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(rgb.numpy(), np.repeat(grey.numpy(), 3, axis=-1))
    layer = RandomAffine(rotation=0.1, translation=0.1, resampler=resampler)
    seed = tf.constant([4, 2])
    np.testing.assert_array_equal(
        layer.warp(x, seed, channels=3).numpy(), np.repeat(layer(x, seed=seed).numpy(), 3, axis=-1)
    )
    with pytest.raises(ValueError, match="grey"):
        apply_affine(np.repeat(x, 2, axis=-1), transforms, resampler=resampler, channels=3)


# ---- RandomAffine ------------------------------------------------------------------------------------------


def draws(layer: RandomAffine, n=4000, size=100) -> np.ndarray:
    return layer.transforms(n, size, size, tf.constant([1, 2])).numpy()


def test_parameter_ranges_mean_what_the_keras_layers_mean():
    size = 100
    c = (size - 1) / 2
    angles = np.degrees(np.arctan2(*draws(RandomAffine(rotation=0.1))[:, [3, 0]].T))
    assert -36 <= angles.min() < -35 and 35 < angles.max() <= 36  # 0.1 of a turn, either way
    assert abs(angles.mean()) < 2

    shift = draws(RandomAffine(translation=0.1))
    np.testing.assert_allclose(shift[:, [0, 1, 3, 4]], [[1, 0, 0, 1]] * len(shift), atol=1e-6)
    for column in (2, 5):  # -shift in x, in y: uniform over +-10 % of the side, independent
        assert -10 <= shift[:, column].min() < -9.8 and 9.8 < shift[:, column].max() <= 10
    assert abs(np.corrcoef(shift[:, 2], shift[:, 5])[0, 1]) < 0.1

    zooms = draws(RandomAffine(zoom=0.2))
    np.testing.assert_allclose(zooms[:, 0], zooms[:, 4])  # one factor for both axes
    assert 0.8 <= zooms[:, 0].min() < 0.81 and 1.19 < zooms[:, 0].max() <= 1.2
    np.testing.assert_allclose(zooms[:, 2], c * (1 - zooms[:, 0]), atol=1e-4)  # about the centre

    flips = draws(RandomAffine(horizontal_flip=True, vertical_flip=True))
    horizontal, vertical = flips[:, 0] < 0, flips[:, 4] < 0
    assert 0.45 < horizontal.mean() < 0.55 and 0.45 < vertical.mean() < 0.55
    assert 0.2 < (horizontal & vertical).mean() < 0.3  # independent


def test_random_affine_with_a_seed_is_a_function_of_the_seed():
    layer = RandomAffine(rotation=0.1, translation=0.1, zoom=0.1, horizontal_flip=True, vertical_flip=True)
    x = images(8)
    a = layer(x, training=True, seed=tf.constant([5, 6])).numpy()
    b = layer(x, training=True, seed=tf.constant([5, 6])).numpy()
    c = layer(x, training=True, seed=tf.constant([5, 7])).numpy()
    other = RandomAffine(rotation=0.1, translation=0.1, zoom=0.1, horizontal_flip=True, vertical_flip=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, other(x, training=True, seed=tf.constant([5, 6])).numpy())
    assert all(not np.allclose(a[i], c[i]) for i in range(len(x)))
    assert all(not np.allclose(a[i], x[i], atol=1e-3) for i in range(len(x)))
    # Turning zoom on leaves the angles a seed draws alone (one sub-seed per parameter).
    rotate = RandomAffine(rotation=0.1).transforms(6, 32, 32, tf.constant([5, 6])).numpy()
    both = RandomAffine(rotation=0.1, zoom=0.2).transforms(6, 32, 32, tf.constant([5, 6])).numpy()
    np.testing.assert_allclose(
        np.arctan2(rotate[:, 3], rotate[:, 0]), np.arctan2(both[:, 3], both[:, 0]), atol=1e-6
    )


def test_random_affine_without_a_seed_uses_its_seed_generator():
    x = images(4)
    layer = RandomAffine(rotation=0.1, translation=0.1, seed=11)
    first, second = layer(x, training=True).numpy(), layer(x, training=True).numpy()
    assert not np.allclose(first, second)  # the generator advances
    again = RandomAffine(rotation=0.1, translation=0.1, seed=11)
    np.testing.assert_array_equal(again(x, training=True).numpy(), first)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)


def test_random_affine_validates_and_round_trips_its_config():
    layer = RandomAffine(rotation=0.05, zoom=0.1, horizontal_flip=True, fill_mode="nearest", seed=3)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))  # registered: no custom_objects needed
    assert (clone.rotation, clone.zoom, clone.horizontal_flip, clone.fill_mode, clone.seed) == (
        0.05,
        0.1,
        True,
        "nearest",
        3,
    )
    for bad in ({"rotation": 0.6}, {"translation": 1.0}, {"zoom": -0.1}, {"fill_mode": "mirror"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RandomAffine(**bad)
    with pytest.raises(ValueError, match="resampler"):
        RandomAffine(resampler="pil")


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


def test_joint_augmentation_with_a_seed_repeats_and_opencv_agrees():
    masks = blob_masks(6)
    image = masks * 0.8 + 0.1
    cfg = AugmentConfig(rotation=0.2, translation=0.1, zoom=0.1)
    seed = tf.constant([8, 9])
    a_img, a_mask = build_joint_augmenter(cfg)(image, masks, seed=seed)
    b_img, b_mask = build_joint_augmenter(cfg, seed=99)(image, masks, seed=seed)  # the call's seed decides
    c_img, c_mask = build_joint_augmenter(cfg, resampler="opencv")(image, masks, seed=seed)
    np.testing.assert_array_equal(a_img.numpy(), b_img.numpy())
    np.testing.assert_array_equal(a_mask.numpy(), b_mask.numpy())
    np.testing.assert_allclose(a_img.numpy(), c_img.numpy(), atol=1e-4)
    # Masks are thresholded at 0.5, so a ~1e-6 difference could flip a pixel sitting exactly on it.
    assert np.mean(a_mask.numpy() != c_mask.numpy()) < 1e-3


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
