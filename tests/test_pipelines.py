from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest

from lungnet.data.augmentation import AugmentConfig
from lungnet.data.pipelines import classification_dataset, data_errors, segmentation_dataset
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import ConfigError, DataError

SIZE = 32
# Raw values pass through unchanged (no normalisation, no sigmoid, native size), so tests can read them.
RAW = PreprocessConfig(normalize="none", sigmoid_gain=None, image_size=SIZE, channels=1)
NO_GEOMETRY_SHIFT = AugmentConfig(rotation=0.1, translation=0.1)


def gradient_image(value: float, size: int = SIZE) -> np.ndarray:
    """An asymmetric image whose mean identifies it; any rotation, flip or shift changes its pixels."""
    yy, xx = np.mgrid[:size, :size]
    return (value + xx * 2 + yy).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    """Eight rows: PNGs (two sizes), single .npy files and a stacked .npy with `#i` references."""
    refs = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        size = SIZE if i % 2 == 0 else SIZE + 8
        cv2.imwrite(str(path), np.clip(gradient_image(10 * i, size), 0, 255).astype(np.uint8))
        refs.append(str(path))
    for i in range(4, 6):
        path = tmp_path / f"img{i}.npy"
        np.save(path, gradient_image(10 * i))
        refs.append(str(path))
    stack = tmp_path / "stack.npy"
    np.save(stack, np.stack([gradient_image(60), gradient_image(70)]))
    refs += [f"{stack}#0", f"{stack}#1"]
    return refs


def manifest(refs, **columns) -> pd.DataFrame:
    return pd.DataFrame({"image": refs, "target": np.arange(len(refs)) % 3, **columns})


def collect(ds):
    images, targets = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(images), np.concatenate(targets)


def test_classification_shapes_dtypes_and_ranges(files):
    ds = classification_dataset(
        manifest(files), PreprocessConfig(image_size=SIZE), num_classes=3, training=True, batch_size=3
    )
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [3, 3, 2]
    x, y = batches[0]
    assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == "float32"
    assert y.shape == (3, 3) and y.dtype == "float32"
    images, targets = collect(ds)
    assert images.min() >= 0 and images.max() <= 1  # min-max then sigmoid
    np.testing.assert_array_equal(targets.sum(axis=1), 1)

    ds = classification_dataset(
        manifest(files), RAW, num_classes=3, training=False, batch_size=4, one_hot=False
    )
    x, y = next(iter(ds))
    assert x.shape == (4, SIZE, SIZE, 1) and y.dtype == "int32" and y.shape == (4,)


def test_validation_follows_manifest_order(files):
    order = [5, 2, 7, 0, 3, 1, 6, 4]
    refs = [files[i] for i in order]
    ds = classification_dataset(
        manifest(refs), RAW, num_classes=3, training=False, batch_size=3, augment=NO_GEOMETRY_SHIFT
    )
    images, targets = collect(ds)
    # Each image's top-left pixel is 10 * its file index (resizing the larger PNGs keeps the corner close).
    np.testing.assert_allclose(images[:, 0, 0, 0], [10 * i for i in order], atol=1.5)
    np.testing.assert_array_equal(targets.argmax(1), np.arange(len(refs)) % 3)
    # training=False: no augmentation even with `augment` given -- same pixels as without it.
    plain, _ = collect(
        classification_dataset(manifest(refs), RAW, num_classes=3, training=False, batch_size=3)
    )
    np.testing.assert_array_equal(images, plain)


def test_training_is_shuffled_and_repeatable_for_a_seed(files):
    def first_batch(seed):
        ds = classification_dataset(
            manifest(files),
            RAW,
            num_classes=3,
            training=True,
            batch_size=4,
            augment=AugmentConfig(),
            seed=seed,
        )
        return [t.numpy() for t in next(iter(ds))]

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    np.testing.assert_array_equal(a[0], b[0])  # pixels, so the augmentation repeats too
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])

    # With targets = row numbers, the targets of one epoch show its order.
    ds_rows = classification_dataset(
        pd.DataFrame({"image": files, "target": range(len(files))}),
        RAW,
        num_classes=len(files),
        training=True,
        batch_size=8,
        one_hot=False,
    )
    orders = [next(iter(ds_rows))[1].numpy().tolist() for _ in range(2)]
    assert sorted(orders[0]) == list(range(len(files)))
    assert orders[0] != list(range(len(files))) and orders[0] != orders[1]  # reshuffled each epoch


def expected_images(refs) -> np.ndarray:
    """Unaugmented, preprocessed images in manifest order."""
    df = pd.DataFrame({"image": refs, "target": 0})
    images, _ = collect(classification_dataset(df, RAW, num_classes=1, training=False, batch_size=len(refs)))
    return images


def by_row(refs, copies, augment):
    df = pd.DataFrame({"image": refs, "target": range(len(refs)), "augment_copy": copies})
    ds = classification_dataset(
        df, RAW, num_classes=len(refs), training=True, batch_size=3, augment=augment, one_hot=False
    )
    images, rows = collect(ds)
    return images[np.argsort(rows)]


def test_augment_copy_rows_are_augmented_and_others_are_not(files):
    refs = files + files[:3]  # oversampled: the last three rows are copies
    copies = [False] * len(files) + [True] * 3
    got = by_row(refs, copies, augment=None)
    plain = expected_images(refs)
    for row, is_copy in enumerate(copies):
        same = np.allclose(got[row], plain[row], atol=1e-4)
        assert same != is_copy, row

    got = by_row(refs, copies, augment=NO_GEOMETRY_SHIFT)  # with `augment`, every training row is augmented
    assert all(not np.allclose(got[row], plain[row], atol=1e-4) for row in range(len(refs)))


def epochs_by_row(refs, seed=0, epochs=2, **kwargs):
    """Each epoch's images in row order (targets are row numbers), from one pipeline iterated `epochs` times."""
    df = pd.DataFrame({"image": refs, "target": range(len(refs))})
    ds = classification_dataset(
        df, RAW, num_classes=len(refs), training=True, batch_size=3, one_hot=False, seed=seed, **kwargs
    )
    out = []
    for _ in range(epochs):
        images, rows = collect(ds)
        out.append(images[np.argsort(rows)])
    return out


def test_parallel_augmentation_repeats_for_a_seed_and_changes_every_epoch(files):
    cfg = AugmentConfig(rotation=0.1, translation=0.1, zoom=0.1)
    first = epochs_by_row(files, augment=cfg)
    again = epochs_by_row(files, augment=cfg)  # a second pipeline, built separately
    other = epochs_by_row(files, seed=5, augment=cfg, epochs=1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.allclose(first[0][i], first[1][i]) for i in range(len(files)))  # new draws per epoch
    assert all(not np.allclose(first[0][i], other[0][i]) for i in range(len(files)))
    # AugmentConfig.seed, when set, overrides the dataset's seed for the augmentation only.
    fixed = AugmentConfig(rotation=0.1, translation=0.1, zoom=0.1, seed=7)
    np.testing.assert_array_equal(
        epochs_by_row(files, seed=1, augment=fixed, epochs=1)[0],
        epochs_by_row(files, seed=1, augment=fixed, epochs=1)[0],
    )


def test_opencv_and_tensorflow_resamplers_give_the_same_batches(files):
    cfg = AugmentConfig(rotation=0.1, translation=0.1, zoom=0.1)
    a = epochs_by_row(files, augment=cfg, epochs=1, resampler="opencv")[0]
    b = epochs_by_row(files, augment=cfg, epochs=1, resampler="tensorflow")[0]
    np.testing.assert_allclose(a, b, atol=1e-3)  # raw pixel values up to ~150: ~1e-5 relative
    with pytest.raises(ConfigError, match="resampler"):
        classification_dataset(manifest(files), RAW, num_classes=3, training=True, resampler="scipy")


def test_randaugment_runs_after_the_warp_with_three_channels(files):
    unit = PreprocessConfig(image_size=SIZE, channels=3)
    cfg = AugmentConfig(randaugment=True, randaugment_factor=0.3)

    def epoch(preprocess):
        ds = classification_dataset(
            manifest(files), preprocess, num_classes=3, training=True, batch_size=4, augment=cfg, seed=2
        )
        return collect(ds)[0]

    rgb, grey = epoch(unit), epoch(dataclasses.replace(unit, channels=1))
    assert rgb.shape == (len(files), SIZE, SIZE, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # Photometric ops see 3 (equal) channels, then the config's channel count is made; a second pipeline
    # with the same seed repeats the warp and RandAugment's draws exactly.
    assert grey.shape == (len(files), SIZE, SIZE, 1)
    np.testing.assert_allclose(grey, rgb.mean(axis=-1, keepdims=True), atol=1e-6)
    assert not np.allclose(rgb, epoch_plain(files))


def epoch_plain(files):
    unit = PreprocessConfig(image_size=SIZE, channels=3)
    ds = classification_dataset(manifest(files), unit, num_classes=3, training=True, batch_size=4, seed=2)
    return collect(ds)[0]


def test_missing_file_is_named_with_its_row_before_iterating(files, tmp_path):
    refs = list(files)
    refs[5] = str(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"row 5: image file not found: .*nowhere\.png"):
        classification_dataset(manifest(refs), RAW, num_classes=3, training=False)
    refs[5] = str(tmp_path / "nostack.npy#3")
    with pytest.raises(DataError, match=r"row 5: .*nostack\.npy"):
        classification_dataset(manifest(refs), RAW, num_classes=3, training=False)


def test_unreadable_file_error_is_unburied_by_data_errors(files, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    refs = list(files)
    refs[2] = str(bad)
    ds = classification_dataset(manifest(refs), RAW, num_classes=3, training=False, batch_size=2)
    with pytest.raises(DataError, match=r"manifest row 2 \(image\): .*broken\.png"), data_errors():
        list(ds)


@pytest.mark.parametrize(
    "target,match",
    [([0, 1, 2, 3, 0, 1, 2, 0], r"row 3: target 3"), ([0, 1, 0.5, 0, 0, 1, 2, 0], r"row 2: target 0.5")],
)
def test_bad_targets_are_named(files, target, match):
    with pytest.raises(DataError, match=match):
        classification_dataset(
            pd.DataFrame({"image": files, "target": target}), RAW, num_classes=3, training=True
        )
    with pytest.raises(DataError, match="no 'target' column"):
        classification_dataset(pd.DataFrame({"image": files}), RAW, num_classes=3, training=True)


def test_randaugment_needs_unit_range_preprocessing(files):
    with pytest.raises(ConfigError, match="randaugment"):
        classification_dataset(
            manifest(files), RAW, num_classes=3, training=True, augment=AugmentConfig(randaugment=True)
        )


# ---- segmentation ------------------------------------------------------------------------------------------


@pytest.fixture
def seg_files(tmp_path):
    """Images that are their mask times 200, so a thresholded image must equal its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    for i in range(6):
        cy, cx = rng.integers(8, SIZE - 8, 2)
        mask = ((yy - cy) ** 2 / 25 + (xx - cx) ** 2 / 10 <= 1).astype(np.uint8)
        image_path, mask_path = tmp_path / f"s{i}.png", tmp_path / f"s{i}_mask.png"
        cv2.imwrite(str(image_path), mask * 200)
        cv2.imwrite(str(mask_path), mask * 255)
        rows.append({"image": str(image_path), "mask": str(mask_path)})
    return pd.DataFrame(rows)


def test_segmentation_shapes_and_aligned_augmentation(seg_files):
    ds = segmentation_dataset(
        seg_files, RAW, training=True, batch_size=4, augment=AugmentConfig(rotation=0.2, zoom=0.1), seed=3
    )
    plain = segmentation_dataset(seg_files, RAW, training=False, batch_size=6)
    plain_masks = next(iter(plain))[1].numpy()
    masks_seen = []
    for images, masks in ds:
        images, masks = images.numpy(), masks.numpy()
        assert images.shape[1:] == (SIZE, SIZE, 1) and masks.shape[1:] == (SIZE, SIZE, 1)
        assert masks.dtype == np.float32 and set(np.unique(masks)) <= {0.0, 1.0}
        np.testing.assert_array_equal((images > 100).astype(np.float32), masks)
        masks_seen.append(masks)
    masks_seen = np.concatenate(masks_seen)
    assert not any(np.array_equal(m, p) for m in masks_seen for p in plain_masks)  # they did move

    rgb = PreprocessConfig(image_size=24, channels=3)
    images, masks = next(iter(segmentation_dataset(seg_files, rgb, training=False, batch_size=2)))
    assert images.shape == (2, 24, 24, 3) and masks.shape == (2, 24, 24, 1)


def test_segmentation_augmentation_repeats_for_a_seed(seg_files):
    def epoch(seed, resampler="opencv"):
        ds = segmentation_dataset(
            seg_files,
            RAW,
            training=True,
            batch_size=4,
            augment=AugmentConfig(rotation=0.2, translation=0.1),
            seed=seed,
            resampler=resampler,
        )
        return [np.concatenate(parts) for parts in zip(*[(x.numpy(), m.numpy()) for x, m in ds], strict=True)]

    (a_images, a_masks), (b_images, b_masks) = epoch(3), epoch(3)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_masks, b_masks)
    assert not np.array_equal(a_masks, epoch(4)[1])
    tf_images, _ = epoch(3, resampler="tensorflow")
    np.testing.assert_allclose(a_images, tf_images, atol=1e-3)
    with pytest.raises(ConfigError, match="segmentation"):
        segmentation_dataset(seg_files, RAW, training=True, augment=AugmentConfig(augmix=True))


def test_segmentation_rows_without_a_mask_and_mismatched_masks(seg_files, tmp_path):
    df = seg_files.copy()
    df.loc[4, "mask"] = ""
    with pytest.raises(DataError, match=r"row 4: no mask in column 'mask'"):
        segmentation_dataset(df, RAW, training=False)
    df = seg_files.copy()
    small = tmp_path / "small_mask.png"
    cv2.imwrite(str(small), np.zeros((8, 8), np.uint8))
    df.loc[1, "mask"] = str(small)
    ds = segmentation_dataset(df, RAW, training=False, batch_size=2)
    with pytest.raises(DataError, match=r"row 1 \(mask\): .*does not match its image shape"), data_errors():
        list(ds)
