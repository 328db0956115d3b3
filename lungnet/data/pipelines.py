"""tf.data pipelines from a manifest to batches for training and evaluation.

Order of stages (why):

    references -> parallel load (NumPy reader) + deterministic preprocessing (TF)
      -> cache            decoding and preprocessing happen once; only deterministic work is cached
      -> shuffle          training only; seeded, a new order every epoch
      -> batch
      -> augment          training only; Keras random layers transform a whole batch per call, and run
                          sequentially so their seeded state advances in a repeatable order
      -> channels         grey -> 3 channels last, so the cache and augmentation touch a third of the data
      -> prefetch

Images are cached as one grey channel; `PreprocessConfig.channels` is applied after augmentation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
from collections.abc import Iterator

import numpy as np
import pandas as pd
import tensorflow as tf

from lungnet.data.augmentation import AugmentConfig, build_augmenter, build_joint_augmenter
from lungnet.data.io import read_image, read_mask, split_reference
from lungnet.data.preprocessing import PreprocessConfig, preprocess_image, preprocess_mask, to_channels
from lungnet.errors import ConfigError, DataError

AUGMENT_COPY_COLUMN = "augment_copy"
TARGET_COLUMN = "target"


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Turn a loading failure inside tf.data back into the `DataError` it started as.

    TensorFlow reports an exception raised in a loader as an ``InvalidArgumentError`` with the original
    message buried in a traceback; wrap iteration (or ``model.fit``) in ``with data_errors():`` to get the
    file and row named plainly.
    """
    try:
        yield
    except tf.errors.OpError as exc:
        found = re.search(r"DataError: (.*)", exc.message or "")
        if found is None:
            raise
        raise DataError(found.group(1).strip()) from exc


def classification_dataset(
    manifest: pd.DataFrame,
    preprocess: PreprocessConfig,
    *,
    num_classes: int,
    training: bool,
    batch_size: int = 32,
    augment: AugmentConfig | None = None,
    image_column: str = "image",
    seed: int = 0,
    cache: bool = True,
    one_hot: bool = True,
) -> tf.data.Dataset:
    """Batches of ``(image [S, S, C] float32, target)`` from a manifest with an int ``target`` column.

    `target` is one-hot float32 ``[num_classes]`` when `one_hot`, else int32. In training, rows whose
    boolean ``augment_copy`` column is true (oversampled copies) are always augmented, with `augment` or,
    when that is None, the default `AugmentConfig`; with `augment` given every training sample is
    augmented. Nothing is shuffled or augmented when `training` is False, so batches follow the manifest
    order.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes: {num_classes!r} must be >= 1")
    _check_batch_size(batch_size)
    refs = _references(manifest, image_column)
    targets = _targets(manifest, num_classes)
    copies = _augment_copies(manifest)
    grey = dataclasses.replace(preprocess, channels=1)

    def load(ref, row, target, copy):
        image = tf.numpy_function(_load_image, [ref, row, image_column], tf.float32, stateful=False)
        image.set_shape([None, None])
        image = tf.ensure_shape(preprocess_image(image, grey), [grey.image_size, grey.image_size, 1])
        label = tf.one_hot(target, num_classes, dtype=tf.float32) if one_hot else target
        return image, label, copy

    rows = np.arange(len(refs), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((refs, rows, targets, copies))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(refs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    augment_all = training and augment is not None
    augment_some = training and augment is None and bool(copies.any())
    augmenter, photometric = None, False
    if augment_all or augment_some:
        cfg = augment if augment is not None else AugmentConfig()
        if not cfg.geometric_only and not preprocess.output_in_unit_range:
            raise ConfigError(
                "augment: randaugment/augmix need images in [0, 1]; use preprocess.normalize 'minmax' or "
                "'lung_window', or keep the sigmoid on"
            )
        augmenter = build_augmenter(cfg, _augment_seed(cfg, seed))
        # RandAugment/AugMix see 3 channels like the model does; geometric layers run on grey (3x cheaper).
        photometric = not cfg.geometric_only

    def finish(images, labels, copy):
        if augmenter is not None:
            if photometric:
                images = to_channels(images, 3)
            augmented = augmenter(images, training=True)
            images = augmented if augment_all else tf.where(copy[:, None, None, None], augmented, images)
        return to_channels(images, preprocess.channels), labels

    # Sequential on purpose: the augmenter's seed state must advance in batch order to be repeatable.
    with _python_random_seeded(seed):  # AugMix draws its operation chains from `random` at trace time
        ds = ds.map(finish)
    return _finalise(ds)


def segmentation_dataset(
    manifest: pd.DataFrame,
    preprocess: PreprocessConfig,
    *,
    training: bool,
    batch_size: int = 32,
    augment: AugmentConfig | None = None,
    image_column: str = "image",
    mask_column: str = "mask",
    seed: int = 0,
    cache: bool = True,
) -> tf.data.Dataset:
    """Batches of ``(image [S, S, C] float32, mask [S, S, 1] float32 0/1)``.

    Masks get the image's geometry (centre crop, nearest resize) and, in training with `augment`, exactly
    the image's random geometric transform. Every row needs a mask.
    """
    _check_batch_size(batch_size)
    refs = _references(manifest, image_column)
    masks = _references(manifest, mask_column, what="mask")
    grey = dataclasses.replace(preprocess, channels=1)
    size = grey.image_size

    def load(ref, mask_ref, row):
        image, mask = tf.numpy_function(
            _load_pair, [ref, mask_ref, row, image_column], [tf.float32, tf.float32], stateful=False
        )
        image.set_shape([None, None])
        mask.set_shape([None, None])
        image = tf.ensure_shape(preprocess_image(image, grey), [size, size, 1])
        mask = tf.ensure_shape(preprocess_mask(mask, grey), [size, size, 1])
        return image, mask

    rows = np.arange(len(refs), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((refs, masks, rows))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(refs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    joint = None
    if training and augment is not None:
        joint = build_joint_augmenter(augment, _augment_seed(augment, seed))

    def finish(images, masks):
        if joint is not None:
            images, masks = joint(images, masks)
        return to_channels(images, preprocess.channels), masks

    ds = ds.map(finish)  # sequential: see classification_dataset
    return _finalise(ds)


def _finalise(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _augment_seed(cfg: AugmentConfig, seed: int) -> int:
    """`AugmentConfig.seed` when set, else the dataset's seed."""
    return cfg.seed if cfg.seed is not None else seed


@contextlib.contextmanager
def _python_random_seeded(seed: int) -> Iterator[None]:
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: {batch_size!r} must be an integer >= 1")


def _references(manifest: pd.DataFrame, column: str, what: str = "image") -> np.ndarray:
    """The column as strings, after checking that every row has one and every referenced file exists.

    Checking here costs one stat per file and names the manifest row; a missing file found inside
    tf.data would surface as a TensorFlow error, possibly many batches in.
    """
    if column not in manifest.columns:
        raise DataError(f"manifest: no {what} column {column!r}; columns present: {list(manifest.columns)}")
    if len(manifest) == 0:
        raise DataError("manifest: has no rows")
    values = manifest[column]
    blank = values.isna() | (values.astype(str).str.strip() == "")
    if blank.any():
        row = int(np.argmax(blank.to_numpy()))
        raise DataError(f"manifest row {row}: no {what} in column {column!r}")
    refs = values.astype(str).to_numpy()
    seen: set[str] = set()
    for row, ref in enumerate(refs):
        path = split_reference(ref)[0]
        if path in seen:
            continue
        if not os.path.isfile(path):
            raise DataError(f"manifest row {row}: {what} file not found: {path}")
        seen.add(path)
    return refs


def _targets(manifest: pd.DataFrame, num_classes: int) -> np.ndarray:
    if TARGET_COLUMN not in manifest.columns:
        raise DataError(
            f"manifest: no {TARGET_COLUMN!r} column (integer class 0..{num_classes - 1}); "
            f"columns present: {list(manifest.columns)}"
        )
    values = pd.to_numeric(manifest[TARGET_COLUMN], errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) | (values != np.round(values)) | (values < 0) | (values >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"manifest row {row}: {TARGET_COLUMN} {manifest[TARGET_COLUMN].tolist()[row]!r} is not an integer "
            f"class in 0..{num_classes - 1}"
        )
    return values.astype(np.int32)


def _augment_copies(manifest: pd.DataFrame) -> np.ndarray:
    if AUGMENT_COPY_COLUMN not in manifest.columns:
        return np.zeros(len(manifest), dtype=bool)
    values = manifest[AUGMENT_COPY_COLUMN].fillna(False)
    allowed = values.map(lambda v: isinstance(v, bool | np.bool_) or v in (0, 1))
    if not allowed.all():
        row = int(np.argmax(~allowed.to_numpy()))
        raise DataError(
            f"manifest row {row}: {AUGMENT_COPY_COLUMN} {values.tolist()[row]!r} is not true/false"
        )
    return values.astype(bool).to_numpy()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _load_image(ref, row, column) -> np.ndarray:
    try:
        return read_image(_text(ref))
    except DataError as exc:
        raise DataError(f"manifest row {int(row)} ({_text(column)}): {exc}") from exc


def _load_pair(ref, mask_ref, row, column) -> tuple[np.ndarray, np.ndarray]:
    image = _load_image(ref, row, column)
    try:
        mask = read_mask(_text(mask_ref), expected_shape=image.shape)
    except DataError as exc:
        raise DataError(f"manifest row {int(row)} (mask): {exc}") from exc
    return image, mask.astype(np.float32)
