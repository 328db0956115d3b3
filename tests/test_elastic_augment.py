"""The segmentation zoo's extra augmentations: image and mask move together, photometric ones touch the image
only, each repeats exactly from the batch seed, and classification refuses them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lungnet.data import elastic_augment
from lungnet.data.augmentation import AugmentConfig, RandomAffine, build_joint_augmenter
from lungnet.errors import ConfigError

OFF = {"rotation": 0.0, "horizontal_flip": False, "vertical_flip": False, "translation": 0.0}


def _batch(n=8, size=32):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    masks[:, 8:14, 4:20] = 1
    images[masks > 0] = 5.0  # the lesion is bright, so its pixels can be followed
    return tf.constant(images), tf.constant(masks)


def test_dense_warp_with_zero_flow_is_the_identity_and_a_shift_moves_pixels():
    images, _ = _batch(2)
    flow = np.zeros((2, 32, 32, 2), np.float32)
    np.testing.assert_allclose(elastic_augment.dense_warp(images, flow).numpy(), images.numpy(), atol=1e-6)
    flow[..., 1] = 1.0  # each output pixel reads its right-hand neighbour
    out = elastic_augment.dense_warp(images, flow).numpy()
    np.testing.assert_allclose(out[:, :, :-1], images.numpy()[:, :, 1:], atol=1e-6)


def test_the_opencv_dense_warp_matches_the_tensorflow_one():
    images, masks = _batch()
    stacked = tf.concat([images, masks], axis=-1)
    seed = tf.constant([7, 8], tf.int64)
    flow = elastic_augment.displacement_field(8, 32, 32, seed, 0.3, 5, "bilinear", 13)  # past the borders
    np.testing.assert_allclose(
        elastic_augment.dense_warp(stacked, flow, "opencv").numpy(),
        elastic_augment.dense_warp(stacked, flow).numpy(),
        atol=1e-5,
    )


@pytest.mark.parametrize("resampler", ["tensorflow", "opencv"])
def test_quarter_turns_inside_the_affine_warp_equal_turning_after_it(resampler):
    images, masks = _batch()
    stacked = tf.concat([images, masks], axis=-1)
    affine = RandomAffine(0.1, 0.1, 0.1, True, True, resampler=resampler)
    seed, turns = tf.constant([3, 4], tf.int64), np.array([0, 1, 2, 3, 3, 2, 1, 0])
    warped = affine.warp(stacked, seed).numpy()
    turned_after = np.stack([np.rot90(image, k) for image, k in zip(warped, turns, strict=True)])
    turned_inside = affine.warp(stacked, seed, quarter_turns=tf.constant(turns)).numpy()
    # the same values, up to the rounding of the composed coordinates (1e-5 of the images' range of ~10)
    np.testing.assert_allclose(turned_inside, turned_after, atol=1e-4)


def test_the_zoos_augmentation_is_the_same_with_either_resampler():
    images, masks = _batch(size=48)
    cfg = AugmentConfig(
        rotation=0.04,
        translation=0.06,
        zoom=0.1,
        horizontal_flip=True,
        vertical_flip=True,
        rotate90=True,
        elastic=0.02,
        grid_distortion=0.03,
        gamma=0.2,
        brightness=0.2,
        contrast=0.2,
        coarse_dropout=4,
    )
    seed = tf.constant([5, 6], tf.int64)
    by_tf = build_joint_augmenter(cfg, 0, resampler="tensorflow")(images, masks, seed=seed)
    by_cv = build_joint_augmenter(cfg, 0, resampler="opencv")(images, masks, seed=seed)
    np.testing.assert_allclose(by_cv[0].numpy(), by_tf[0].numpy(), atol=1e-4)
    assert np.mean(by_cv[1].numpy() != by_tf[1].numpy()) < 1e-3  # a mask value at 0.5 may round either way


@pytest.mark.parametrize(
    "extra",
    [{"rotate90": True}, {"elastic": 0.05}, {"grid_distortion": 0.05}],
    ids=["rot90", "elastic", "grid"],
)
def test_geometric_extras_move_the_mask_with_the_lesion(extra):
    images, masks = _batch()
    augment = build_joint_augmenter(AugmentConfig(**OFF, **extra))
    seed = tf.constant([3, 4], tf.int64)
    out_images, out_masks = augment(images, masks, seed=seed)
    out_images, out_masks = out_images.numpy(), out_masks.numpy()
    assert set(np.unique(out_masks)) <= {0.0, 1.0}
    changed = [i for i in range(len(out_masks)) if not np.array_equal(out_masks[i], masks.numpy()[i])]
    assert changed  # some of the batch was transformed, not every image (each on a random half)
    assert len(changed) < len(out_masks)
    for i in changed:  # the mask still covers the bright lesion
        assert out_images[i][out_masks[i] > 0].mean() > 3.0
    again = augment(images, masks, seed=seed)
    np.testing.assert_array_equal(again[1].numpy(), out_masks)


def test_photometric_extras_and_coarse_dropout_leave_the_mask_alone():
    images, masks = _batch()
    cfg = AugmentConfig(**OFF, gamma=0.2, brightness=0.5, contrast=0.3, coarse_dropout=2)
    out_images, out_masks = build_joint_augmenter(cfg)(images, masks, seed=tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(out_masks.numpy(), masks.numpy())
    assert not np.allclose(out_images.numpy(), images.numpy())
    # gamma alone keeps each image's min and max
    gamma = build_joint_augmenter(AugmentConfig(**OFF, gamma=0.3))
    out = gamma(images, masks, seed=tf.constant([5, 6], tf.int64))[0].numpy()
    np.testing.assert_allclose(out.min(axis=(1, 2, 3)), images.numpy().min(axis=(1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(out.max(axis=(1, 2, 3)), images.numpy().max(axis=(1, 2, 3)), atol=1e-5)


@pytest.mark.parametrize("n", [1, 8])
def test_gamma_changes_only_the_images_its_coin_picks(n):
    images = _batch(n)[0].numpy()
    picked_any = left_any = False
    for s in range(8):  # with one image, some seeds pick nothing at all
        seed = tf.constant([s, 1], tf.int64)
        out = elastic_augment.photometric(tf.constant(images), seed, 0.0, 0.0, 0.3).numpy()
        picked = elastic_augment._half(seed, n, 22).numpy() > 0
        np.testing.assert_array_equal(out[~picked], images[~picked])
        for i in np.flatnonzero(
            picked
        ):  # x' = lo + (hi - lo) ((x - lo) / (hi - lo)) ** g, g this image's draw
            g = elastic_augment._uniform(seed, [n], 21, 0.7, 1.3).numpy()[i]
            lo, hi = images[i].min(), images[i].max()
            expected = lo + (hi - lo) * ((images[i] - lo) / (hi - lo)) ** g
            np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-5)
            assert not np.array_equal(out[i], images[i])
        picked_any, left_any = picked_any or picked.any(), left_any or not picked.all()
    assert picked_any and left_any


def test_bad_values_and_classification_refuse_them(tmp_path):
    with pytest.raises(ConfigError, match="augment.elastic"):
        AugmentConfig(elastic=0.5)
    with pytest.raises(ConfigError, match="augment.coarse_dropout"):
        AugmentConfig(coarse_dropout=-1)
    import pandas as pd

    from lungnet.data.pipelines import classification_dataset
    from lungnet.data.preprocessing import PreprocessConfig

    frame = pd.DataFrame({"image": [str(tmp_path / "a.npy")], "patient_id": ["P"], "target": [0]})
    np.save(tmp_path / "a.npy", np.zeros((32, 32), np.float32))
    with pytest.raises(ConfigError, match="segmentation transforms"):
        classification_dataset(
            frame,
            PreprocessConfig(image_size=32),
            num_classes=2,
            training=True,
            augment=AugmentConfig(elastic=0.05),
        )
