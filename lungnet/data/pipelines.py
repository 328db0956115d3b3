"""tf.data pipelines from a manifest to batches for training and evaluation.

Order of stages (why):

    references -> parallel load (NumPy reader) + deterministic preprocessing (TF)
      -> cache            decoding and preprocessing happen once; only deterministic work is cached
      -> shuffle          training only; seeded, a new order every epoch
      -> batch
      -> augment          training only, a whole batch per call. Geometric (`RandomAffine`: one warp per
                          image) in a parallel, order-keeping map: each batch gets its own stateless seed
                          from a seeded `Dataset.random` zipped alongside, so the result does not depend
                          on which thread runs which batch, and differs from epoch to epoch. RandAugment /
                          AugMix (stateful Keras layers) run after it in a sequential map, only when asked
      -> channels         grey -> 3 channels last, so the cache and augmentation touch a third of the data
                          (in the same parallel map as the warp)
      -> prefetch

Images are cached as one grey channel; `PreprocessConfig.channels` is applied after augmentation.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import os
import random
import re
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import tensorflow as tf

from lungnet.data.attributes import attribute_targets
from lungnet.data.augmentation import (
    RESAMPLERS,
    AugmentConfig,
    Resampler,
    build_geometric_augmenter,
    build_joint_augmenter,
    build_photometric_augmenters,
)
from lungnet.data.io import read_image, read_mask, split_reference
from lungnet.data.manifest import row_labels
from lungnet.data.preprocessing import PreprocessConfig, preprocess_image, preprocess_mask, to_channels
from lungnet.errors import ConfigError, DataError

AUGMENT_COPY_COLUMN = "augment_copy"
TARGET_COLUMN = "target"
# P(class 1) of a binary training row (readers' share, `lungnet.data.labels.reader_soft_targets`): the
# one-hot target becomes [1 - p, p]
SOFT_TARGET_COLUMN = "soft_target"
SPACING_COLUMN = "pixel_spacing_mm"


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Turn a loading failure inside tf.data back into the `DataError` it started as.

    TensorFlow reports an exception raised in a loader as an ``InvalidArgumentError`` with the original
    message buried in a traceback; wrap iteration (or ``model.fit``) in ``with data_errors():`` to get the
    file and row named plainly.

    It also shuts the failed pipeline down before the error leaves: the iterator that failed lives on in the
    error's traceback (Keras' fit/predict frames) and in reference cycles, and if it is only collected while
    Python shuts down, its worker threads, still calling the loader, can no longer take the interpreter lock:
    the process then hangs or aborts ("terminate called without an active exception") after the error was
    printed. The finished frames of the traceback are cleared and a garbage collection run, so the iterator
    is destroyed now, while its threads can still finish.
    """
    try:
        yield
    except tf.errors.OpError as exc:
        found = re.search(r"DataError: (.*)", exc.message or "")
        if found is None:
            raise
        message = found.group(1).strip()
        release_pipelines(exc)
        raise DataError(message) from None


def release_pipelines(exc: BaseException | None = None) -> None:
    """Destroy tf.data iterators that only `exc`'s frames, or reference cycles, keep alive (see `data_errors`).

    Clears the local variables of every finished frame the error passed through, then collects garbage.
    Walking ``f_back`` from the innermost frame matters: Keras and TensorFlow re-raise errors with their own
    frames filtered out of the traceback, and those hidden frames (``fit``, ``predict``) hold the iterator.
    Frames still running (the caller's) are left alone.
    """
    seen: set[int] = set()
    pending = [exc] if exc is not None else []
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        frames, tb = [], error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        frame = frames[-1].f_back if frames else None
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        for frame in frames:
            with contextlib.suppress(RuntimeError):  # a frame still executing cannot be cleared
                frame.clear()
        pending += [e for e in (error.__cause__, error.__context__) if e is not None]
    gc.collect()


@atexit.register
def _release_pipelines_at_exit() -> None:
    # The same for an error nobody caught (the interpreter keeps it in sys.last_value) and for iterators left
    # in reference cycles: atexit functions run before Python starts shutting down, while tf.data's threads
    # can still take the interpreter lock and stop; after that point they hang or abort the process.
    release_pipelines(getattr(sys, "last_value", None))


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
    resampler: Resampler = "opencv",
    neighbour_columns: tuple[str, str] | None = None,
    mask_column: str | None = None,
    attribute_columns: tuple[str, ...] = (),
) -> tf.data.Dataset:
    """Batches of ``(image [S, S, C] float32, target)`` from a manifest with an int ``target`` column.

    With `mask_column` each element is ``(image, (target, mask [S, S, 1] 0/1))``: the image's mask, with the
    image's geometry and, in training, exactly its random warp (for classifiers that also segment). Masks
    and RandAugment / AugMix (which move pixels the mask cannot follow) do not go together.

    With `neighbour_columns` (``lungnet.data.neighbours``: the images one slice below and above), the three
    channels are (below, slice, above), each preprocessed as a grey image of its own (2.5-D input);
    ``preprocess.channels`` must then be 3.

    `target` is one-hot float32 ``[num_classes]`` when `one_hot` (``[1 - p, p]`` for a binary row with a
    ``soft_target`` p), else int32. With `attribute_columns` (readers' ratings, `lungnet.data.attributes`) the
    one-hot target goes on with each rating scaled to [0, 1]: ``[num_classes + len(attribute_columns)]``
    (`lungnet.training.fit.targets_for` splits them for a model's attribute head). In training, rows whose
    boolean ``augment_copy`` column is true (oversampled copies) are always augmented, with `augment` or,
    when that is None, the default `AugmentConfig`; with `augment` given every training sample is
    augmented. Nothing is shuffled or augmented when `training` is False, so batches follow the manifest
    order. `resampler` is `RandomAffine`'s: "opencv" (default; a fraction of the CPU time per warp) or
    "tensorflow" (pure TF ops, e.g. to keep the whole pipeline in graph ops); both give the same images
    to ~1e-5 of their range. With "opencv", grey -> 3 channels is also done by OpenCV (same values).
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes: {num_classes!r} must be >= 1")
    _check_batch_size(batch_size)
    _check_resampler(resampler)
    labels = row_labels(manifest)
    refs = _references(manifest, image_column, labels=labels)
    targets = _targets(manifest, num_classes, labels)
    if one_hot:
        targets = _target_rows(manifest, targets, num_classes, labels)
        if attribute_columns:
            targets = np.concatenate([targets, attribute_targets(manifest, attribute_columns)], axis=1)
    elif attribute_columns:
        raise ConfigError("attribute_columns: the readers' ratings ride on one-hot targets (one_hot=True)")
    copies = _augment_copies(manifest, labels)
    spacings = sample_spacings(manifest, preprocess, labels, image_column)
    grey = dataclasses.replace(preprocess, channels=1)
    if neighbour_columns is not None and preprocess.channels != 3:
        raise ConfigError(
            f"preprocess.channels: {preprocess.channels} with neighbouring slices as channels; they make 3 "
            "(below, slice, above): set channels to 3"
        )
    columns = (image_column, *(neighbour_columns or ()))
    refs = np.stack([refs] + [_references(manifest, c, labels=labels) for c in columns[1:]], axis=1)
    with_mask = mask_column is not None
    if with_mask:  # the mask's reference rides along as the last column
        masks = _references(manifest, mask_column, what="mask", labels=labels)
        refs = np.concatenate([refs, masks[:, None]], axis=1)
        if augment is not None and not augment.geometric_only:
            raise ConfigError(
                "augment: randaugment/augmix move pixels a mask cannot follow; turn them off for a model "
                "that also segments (masks in the classification pipeline)"
            )

    def load_image(ref, row, column):
        return _load_image(ref, labels[int(row)], column)

    def load_pair(ref, mask_ref, row, column):
        return _load_pair(ref, mask_ref, labels[int(row)], column)

    def load_mask(ref, mask_ref, row, spacing):
        _, mask = tf.numpy_function(
            load_pair, [ref, mask_ref, row, image_column], [tf.float32, tf.float32], stateful=False
        )
        mask.set_shape([None, None])
        return tf.ensure_shape(preprocess_mask(mask, grey, spacing), [grey.image_size, grey.image_size, 1])

    def load_one(ref, row, column, spacing):
        image = tf.numpy_function(load_image, [ref, row, column], tf.float32, stateful=False)
        image.set_shape([None, None])
        image = preprocess_image(image, grey, spacing)
        return tf.ensure_shape(image, [grey.image_size, grey.image_size, 1])

    def load(ref, row, target, copy, spacing):
        # (below, slice, above) for 2.5-D: the centre slice is the middle channel
        stack = [load_one(ref[i], row, column, spacing) for i, column in enumerate(columns)]
        image = stack[0] if len(stack) == 1 else tf.concat([stack[1], stack[0], stack[2]], axis=-1)
        if with_mask:  # an extra last channel until the end, so every warp moves image and mask together
            image = tf.concat([image, load_mask(ref[0], ref[-1], row, spacing)], axis=-1)
        return image, target, copy

    rows = np.arange(len(refs), dtype=np.int64)
    ds = _loaded_batches((refs, rows, targets, copies, spacings), load, cache, training, seed, batch_size)

    opencv = resampler == "opencv"
    augment_all = training and augment is not None
    augment_some = training and augment is None and bool(copies.any())
    geometric, photometric, augment_seed = None, [], seed
    if augment_all or augment_some:
        cfg = augment if augment is not None else AugmentConfig()
        if cfg.segmentation_extras:
            raise ConfigError(
                f"augment: {', '.join(cfg.segmentation_extras)} are segmentation transforms; the "
                "classification pipelines do not apply them (turn them off for classification)"
            )
        if not cfg.geometric_only and not preprocess.output_in_unit_range:
            raise ConfigError(
                "augment: randaugment/augmix need images in [0, 1]; use preprocess.normalize 'minmax' or "
                "'lung_window', or keep the sigmoid on"
            )
        augment_seed = _augment_seed(cfg, seed)
        geometric = build_geometric_augmenter(cfg, augment_seed, resampler=resampler)
        photometric = build_photometric_augmenters(cfg, augment_seed)

    def augmented_rows(augmented, images, copy):
        return augmented if augment_all else tf.where(copy[:, None, None, None], augmented, images)

    def split_mask(images, labels):
        mask = tf.cast(images[..., -1:] > 0.5, tf.float32)  # warped masks are resampled: back to 0/1
        return _batch_channels(images[..., :-1], preprocess.channels, opencv), (labels, mask)

    # The warp runs on grey (3x cheaper); RandAugment/AugMix see 3 channels, like the model does.
    if geometric is not None:

        def warp(batch, batch_seed):
            images, labels, copy = batch
            channels = 3 if photometric else preprocess.channels
            if with_mask:  # image channels and mask in one warp; the channels are made after the split
                return split_mask(augmented_rows(geometric.warp(images, batch_seed), images, copy), labels)
            if augment_all:  # the warp also makes the channels, in the same pass over the batch
                images = geometric.warp(images, batch_seed, channels=channels)
            else:
                images = augmented_rows(geometric.warp(images, batch_seed), images, copy)
                images = _batch_channels(images, channels, opencv)
            return (images, labels, copy) if photometric else (images, labels)

        ds = tf.data.Dataset.zip((ds, _batch_seeds(augment_seed)))
        ds = ds.map(warp, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif with_mask:
        ds = ds.map(
            lambda images, labels, copy: split_mask(images, labels),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    elif not photometric:
        ds = ds.map(
            lambda images, labels, copy: (_batch_channels(images, preprocess.channels, opencv), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    if photometric:

        def photometric_augment(images, labels, copy):
            images = _batch_channels(images, 3, opencv)
            augmented = images
            for layer in photometric:
                augmented = layer(augmented, training=True)
            return _batch_channels(
                augmented_rows(augmented, images, copy), preprocess.channels, opencv
            ), labels

        # Sequential on purpose: these layers' seed state must advance in batch order to be repeatable.
        with _python_random_seeded(seed):  # AugMix draws its operation chains from `random` at trace time
            ds = ds.map(photometric_augment)
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
    resampler: Resampler = "opencv",
    perturb: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(image [S, S, C] float32, mask [S, S, 1] float32 0/1)``.

    Masks get the image's geometry (centre crop, nearest resize) and, in training with `augment`, exactly
    the image's random geometric transform. Every row needs a mask. `resampler`: see
    `classification_dataset`. `perturb(image [H, W] in native units, row int64) -> image` runs before
    preprocessing (intensity-robustness tests); seed any randomness from the row, so it is repeatable.
    """
    _check_batch_size(batch_size)
    _check_resampler(resampler)
    labels = row_labels(manifest)
    refs = _references(manifest, image_column, labels=labels)
    masks = _references(manifest, mask_column, what="mask", labels=labels)
    spacings = sample_spacings(manifest, preprocess, labels, image_column)
    grey = dataclasses.replace(preprocess, channels=1)
    size = grey.image_size

    def load_pair(ref, mask_ref, row, column):
        return _load_pair(ref, mask_ref, labels[int(row)], column)

    def load(ref, mask_ref, row, spacing):
        image, mask = tf.numpy_function(
            load_pair, [ref, mask_ref, row, image_column], [tf.float32, tf.float32], stateful=False
        )
        image.set_shape([None, None])
        mask.set_shape([None, None])
        if perturb is not None:
            image = perturb(image, row)
        image = tf.ensure_shape(preprocess_image(image, grey, spacing), [size, size, 1])
        mask = tf.ensure_shape(preprocess_mask(mask, grey, spacing), [size, size, 1])
        return image, mask

    rows = np.arange(len(refs), dtype=np.int64)
    ds = _loaded_batches((refs, masks, rows, spacings), load, cache, training, seed, batch_size)
    opencv = resampler == "opencv"
    if training and augment is not None:
        joint = build_joint_augmenter(augment, _augment_seed(augment, seed), resampler=resampler)

        def finish(batch, batch_seed):
            images, masks = joint(*batch, seed=batch_seed)
            return _batch_channels(images, preprocess.channels, opencv), masks

        ds = tf.data.Dataset.zip((ds, _batch_seeds(_augment_seed(augment, seed))))
    else:

        def finish(images, masks):
            return _batch_channels(images, preprocess.channels, opencv), masks

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)  # see classification_dataset
    return _finalise(ds)


def _loaded_batches(
    columns, load, cache: bool, training: bool, seed: int, batch_size: int
) -> tf.data.Dataset:
    """The deterministic head of every pipeline: parallel load + preprocess, cache, shuffle (training), batch."""
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(columns[0]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def _finalise(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _batch_channels(images: tf.Tensor, channels: int, opencv: bool) -> tf.Tensor:
    """`to_channels` for a batch ``[B, H, W, C]``; with `opencv`, grey -> 3 is done by ``cv2.merge``.

    Same values; but ``tf.repeat`` / ``tf.tile`` / ``tf.broadcast_to`` cost ~3-5 ms of CPU for a batch of
    32 x 128 px on a 2-core CPU, ``cv2.merge`` ~0.3 ms, and the pipelines do it for every batch.
    """
    if not opencv or images.shape[-1] != 1 or channels != 3:
        return to_channels(images, channels)
    out = tf.numpy_function(_grey_to_rgb, [images], images.dtype, stateful=False)
    out.set_shape(images.shape[:-1].concatenate(3))
    return out


def _grey_to_rgb(images: np.ndarray) -> np.ndarray:
    import cv2

    batch, height, width, _ = images.shape
    if images.size == 0 or images.dtype not in (np.float32, np.uint8):
        return np.repeat(images, 3, axis=-1)
    rows = np.ascontiguousarray(images).reshape(batch * height, width)
    return cv2.merge([rows, rows, rows]).reshape(batch, height, width, 3)


def _batch_seeds(seed: int) -> tf.data.Dataset:
    """Endless int64 ``[2]`` seeds, one per batch, for the stateless random ops of `RandomAffine`.

    Seeded, so two pipelines built with the same seed draw the same seeds; re-randomised on every new
    iterator, so each epoch draws new ones. Zipped with the batches, each batch's seed is fixed by its
    position, whichever thread of a parallel map transforms it.
    """
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)


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


def _check_resampler(resampler: str) -> None:
    if resampler not in RESAMPLERS:
        raise ConfigError(f"resampler: {resampler!r} is not one of {list(RESAMPLERS)}")


def _references(
    manifest: pd.DataFrame, column: str, what: str = "image", labels: list[str] | None = None
) -> np.ndarray:
    """The column as strings, after checking that every row has one and every referenced file exists.

    Checking here costs one stat per file and names the manifest row; a missing file found inside
    tf.data would surface as a TensorFlow error, possibly many batches in. (It does not decode them:
    `lungnet.data.manifest.check_images` does, before training.)
    """
    if column not in manifest.columns:
        raise DataError(f"manifest: no {what} column {column!r}; columns present: {list(manifest.columns)}")
    if len(manifest) == 0:
        raise DataError("manifest: has no rows")
    labels = labels or row_labels(manifest)
    values = manifest[column]
    blank = values.isna() | (values.astype(str).str.strip() == "")
    if blank.any():
        row = int(np.argmax(blank.to_numpy()))
        raise DataError(f"{labels[row]}: no {what} in column {column!r}")
    refs = values.astype(str).to_numpy()
    seen: set[str] = set()
    for row, ref in enumerate(refs):
        path = split_reference(ref)[0]
        if path in seen:
            continue
        if not os.path.isfile(path):
            raise DataError(f"{labels[row]}: {what} file not found: {path}")
        seen.add(path)
    return refs


def spacing_column(image_column: str) -> str:
    """The phantom's crops (``crop_image``) have their own spacing (``crop_pixel_spacing_mm``); every other
    image column is at ``pixel_spacing_mm``."""
    return f"crop_{SPACING_COLUMN}" if image_column == "crop_image" else SPACING_COLUMN


def sample_spacings(
    manifest: pd.DataFrame,
    preprocess: PreprocessConfig,
    labels: list[str] | None = None,
    image_column: str = "image",
) -> np.ndarray:
    """Each row's pixel spacing (mm) as float32, for ``preprocess.pixel_spacing_mm``; zeros when unused.

    A missing column, or a row without a positive spacing, is a `DataError` naming it: a silently wrong
    scale would teach the model wrong sizes.
    """
    if preprocess.pixel_spacing_mm is None:
        return np.zeros(len(manifest), dtype=np.float32)
    column = spacing_column(image_column)
    if column not in manifest.columns:
        raise DataError(
            f"manifest: preprocess.pixel_spacing_mm ({preprocess.pixel_spacing_mm} mm) resamples every image "
            f"from its own spacing, but there is no {column!r} column; columns present: "
            f"{list(manifest.columns)}"
        )
    values = pd.to_numeric(manifest[column], errors="coerce").to_numpy(dtype=float)
    bad = ~(values > 0) | ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        labels = labels or row_labels(manifest)
        raise DataError(
            f"{labels[row]}: {column} {manifest[column].tolist()[row]!r} is not a positive "
            "number of millimetres (needed by preprocess.pixel_spacing_mm)"
        )
    return values.astype(np.float32)


def _targets(manifest: pd.DataFrame, num_classes: int, labels: list[str]) -> np.ndarray:
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
            f"{labels[row]}: {TARGET_COLUMN} {manifest[TARGET_COLUMN].tolist()[row]!r} is not an integer "
            f"class in 0..{num_classes - 1}"
        )
    return values.astype(np.int32)


def _target_rows(
    manifest: pd.DataFrame, targets: np.ndarray, num_classes: int, labels: list[str]
) -> np.ndarray:
    """float32 ``[N, num_classes]``: one-hot rows, or ``[1 - p, p]`` where a ``soft_target`` p is given."""
    rows = np.eye(num_classes, dtype=np.float32)[targets]
    if SOFT_TARGET_COLUMN not in manifest.columns:
        return rows
    soft = pd.to_numeric(manifest[SOFT_TARGET_COLUMN], errors="coerce").to_numpy(dtype=float)
    bad = ~((soft >= 0) & (soft <= 1))
    if num_classes != 2 or bad.any():
        row = int(np.argmax(bad)) if bad.any() else 0
        raise DataError(
            f"{labels[row]}: {SOFT_TARGET_COLUMN} {manifest[SOFT_TARGET_COLUMN].tolist()[row]!r} must be a "
            f"probability in [0, 1] of the second of two classes (this pipeline has {num_classes})"
        )
    return np.stack([1 - soft, soft], axis=1).astype(np.float32)


def _augment_copies(manifest: pd.DataFrame, labels: list[str]) -> np.ndarray:
    if AUGMENT_COPY_COLUMN not in manifest.columns:
        return np.zeros(len(manifest), dtype=bool)
    values = manifest[AUGMENT_COPY_COLUMN].fillna(False)
    allowed = values.map(lambda v: isinstance(v, bool | np.bool_) or v in (0, 1))
    if not allowed.all():
        row = int(np.argmax(~allowed.to_numpy()))
        raise DataError(f"{labels[row]}: {AUGMENT_COPY_COLUMN} {values.tolist()[row]!r} is not true/false")
    return values.astype(bool).to_numpy()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _load_image(ref, label: str, column) -> np.ndarray:
    # Runs inside tf.data: the message must say all (`data_errors` recovers it from TensorFlow's error).
    try:
        return read_image(_text(ref))
    except DataError as exc:
        raise DataError(f"{label} ({_text(column)}): {exc}") from None
    except Exception as exc:  # anything else would reach the user as a bare TensorFlow error
        raise DataError(f"{label} ({_text(column)}): {_text(ref)}: {type(exc).__name__}: {exc}") from None


def _load_pair(ref, mask_ref, label: str, column) -> tuple[np.ndarray, np.ndarray]:
    image = _load_image(ref, label, column)
    try:
        mask = read_mask(_text(mask_ref), expected_shape=image.shape)
    except DataError as exc:
        raise DataError(f"{label} (mask): {exc}") from None
    except Exception as exc:
        raise DataError(f"{label} (mask): {_text(mask_ref)}: {type(exc).__name__}: {exc}") from None
    return image, mask.astype(np.float32)
