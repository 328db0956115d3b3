"""Predictions as class-probability matrices, with optional test-time augmentation."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _identity(x):
    return x


def _flip_left_right(x):
    return tf.reverse(x, axis=[2])


def _flip_up_down(x):
    return tf.reverse(x, axis=[1])


def _rotate_90(x):
    return tf.image.rot90(x, k=1)


def _rotate_270(x):
    return tf.image.rot90(x, k=3)


# The study's five test-time transforms on [B, H, W, C]: identity, two flips and two quarter turns (exact, no
# resampling). Named functions, not lambdas: AutoGraph cannot tell equal lambdas apart and warns at each trace.
TTA_TRANSFORMS = {
    "identity": _identity,
    "flip_left_right": _flip_left_right,
    "flip_up_down": _flip_up_down,
    "rotate_90": _rotate_90,
    "rotate_270": _rotate_270,
}
# each transform's inverse, which maps a segmentation map back onto the untransformed image
TTA_INVERSES = {
    "identity": "identity",
    "flip_left_right": "flip_left_right",
    "flip_up_down": "flip_up_down",
    "rotate_90": "rotate_270",
    "rotate_270": "rotate_90",
}

# (transform, its inverse) pairs: the mapped-back maps align pixel for pixel
TTA_PAIRS = tuple((TTA_TRANSFORMS[name], TTA_TRANSFORMS[TTA_INVERSES[name]]) for name in TTA_TRANSFORMS)


def segmenter_fn(model: keras.Model, tta: bool = False):
    """A compiled ``x [B, H, W, C] -> probability maps [B, H, W]``; with `tta`, the mean over `TTA_PAIRS`
    mapped back to `x`'s frame. Traced once per call site, so batches run as one graph, not op by op."""
    pairs = TTA_PAIRS if tta else TTA_PAIRS[:1]

    @tf.function(reduce_retracing=True)
    def fn(x):
        maps = [inverse(tf.cast(model(forward(x), training=False), tf.float32)) for forward, inverse in pairs]
        return (tf.add_n(maps) / len(maps))[..., 0]

    return fn


def as_class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A single sigmoid column p -> [1 - p, p]; softmax outputs pass through. Always float64 [N, K]."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        p = outputs.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return outputs


def images_only(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda x, *rest: x, num_parallel_calls=tf.data.AUTOTUNE)


def predict_proba(model: keras.Model, dataset: tf.data.Dataset, transform: str = "identity") -> np.ndarray:
    """[N, K] probabilities for every image of `dataset` (batches of images, or (image, target) pairs)."""
    fn = TTA_TRANSFORMS[transform]
    images = images_only(dataset).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    return as_class_probabilities(model.predict(images, verbose=0))


def predict_tta(model: keras.Model, dataset: tf.data.Dataset) -> list[np.ndarray]:
    """One [N, K] probability matrix per test-time transform, in `TTA_TRANSFORMS` order."""
    return [predict_proba(model, dataset, name) for name in TTA_TRANSFORMS]
