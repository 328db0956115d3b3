"""One check for every family's export: the SavedModel's raw-image signatures give what Keras gives.

The exported signature does the preprocessing itself; here the same raw images go through the run's
preprocessing and the reloaded ``.keras`` model, and the two answers must agree, for float32 and uint8 input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from lungnet.data.preprocessing import preprocess_image
from lungnet.runs.artifacts import load_run_model, run_preprocess
from lungnet.runs.folder import load_run_config


def keras_answer(run_dir: Path, images: np.ndarray, model_name: str | None = None) -> np.ndarray:
    """What the run's Keras model says of raw [B, H, W] images, in the export's output format."""
    model, _ = load_run_model(run_dir, model_name)
    x = preprocess_image(
        tf.constant(images, tf.float32)[..., None], run_preprocess(run_dir, load_run_config(run_dir))
    )
    out = tf.cast(model(x, training=False), tf.float32)
    if len(out.shape) == 4:  # a map, back at the input's size
        return tf.image.resize(out, images.shape[1:3], method="bilinear")[..., 0].numpy()
    return tf.concat([1.0 - out, out], -1).numpy() if out.shape[-1] == 1 else out.numpy()


def assert_export_matches_keras(
    run_dir: Path, saved_model: Path, images: np.ndarray, model_name: str | None = None, atol: float = 1e-5
) -> np.ndarray:
    """Both signatures of `saved_model` against Keras on `images` (raw, [B, H, W]); the served answer."""
    saved = tf.saved_model.load(
        str(saved_model)
    )  # kept alive while its signatures run: it owns the variables
    served = saved.signatures["serving_default"](images=tf.constant(images, tf.float32))[
        "probabilities"
    ].numpy()
    np.testing.assert_allclose(served, keras_answer(run_dir, images, model_name), atol=atol)
    grey = np.clip(images, 0, 255).astype(np.uint8)
    served_uint8 = saved.signatures["serving_uint8"](images=tf.constant(grey))["probabilities"].numpy()
    np.testing.assert_allclose(
        served_uint8, keras_answer(run_dir, grey.astype(np.float32), model_name), atol=atol
    )
    return served
