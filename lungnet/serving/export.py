"""Export a run's model as a TF SavedModel whose signatures take raw images and do the preprocessing.

Signatures (``saved_model_cli show --dir DIR --all`` lists them):

- ``serving_default``: ``images`` float32 ``[batch, height, width]``: raw grey images in their native units
  (Hounsfield units for CT, 0-255 for 8-bit images), any height and width (the training preprocessing crops and
  resizes). Returns ``probabilities`` float32 ``[batch, K]`` in the order of the run's class names.
- ``serving_uint8``: the same for ``uint8`` images.

Bad input is refused with a message (``InvalidArgumentError``): a rank other than 3, and (float32) NaN or
infinite pixels. An empty batch ``[0, H, W]`` returns an empty result.

For a segmentation run, ``probabilities`` is the nodule probability map float32 ``[batch, height, width]``
at the input's own size (the model's output resized back bilinearly); threshold it (the run's
``postprocess.threshold``, 0.5 by default) for a mask. The dense CRF is not part of the signature.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import tensorflow as tf

from lungnet.data.preprocessing import preprocess_image
from lungnet.fileio import atomic_directory, write_json
from lungnet.runs import load_run_config
from lungnet.runs.artifacts import load_run_model, run_class_names, run_preprocess
from lungnet.runs.folder import require_finished

SAVED_MODEL_DIR = "saved_model"
INPUT_TAKES = "[batch, height, width] raw grey images (HU or 0-255), float32 or uint8 (serving_uint8)"


def export_run(run_dir: str | Path, model_name: str | None = None, out: str | Path | None = None) -> Path:
    """Write the SavedModel (atomically) to `out` or ``<run>/saved_model`` and return its path."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    require_finished(run_dir)
    model, name = load_run_model(run_dir, model_name)
    preprocess = run_preprocess(run_dir, config)
    # the output's own shape says what to serve: a map [B, H, W, 1] or class probabilities [B, K]
    segmentation = len(model.outputs[0].shape) == 4
    class_names = None if segmentation else run_class_names(run_dir)
    binary = int(model.outputs[0].shape[-1]) == 1

    k = 2 if binary else int(model.outputs[0].shape[-1])  # columns of `probabilities`

    def predict(images):
        x = preprocess_image(tf.cast(images, tf.float32)[..., None], preprocess)
        out = tf.cast(model(x, training=False), tf.float32)
        if segmentation:  # back to the input's size: a map a viewer can lay over the image it sent
            return tf.image.resize(out, tf.shape(images)[1:3], method="bilinear")[..., 0]
        return tf.concat([1.0 - out, out], axis=-1) if binary else out

    def checked(images):
        # static rank 3 for the preprocessing (tf.ensure_shape would run, and fail, before the rank branch)
        dims = tf.shape(images)
        images = tf.reshape(images, tf.stack([dims[0], dims[1], dims[2]]))
        if images.dtype != tf.uint8:  # a NaN image would come back as ordinary-looking probabilities
            tf.debugging.assert_all_finite(images, "images: NaN or infinite pixels; send finite raw values")
        shape = tf.shape(images)
        empty = tf.zeros(tf.concat([[0], shape[1:3]], 0) if segmentation else [0, k], tf.float32)
        return tf.cond(shape[0] > 0, lambda: predict(images), lambda: empty)

    def refused():
        with tf.control_dependencies([tf.debugging.Assert(False, [f"images: expected {INPUT_TAKES}"])]):
            return tf.zeros([0, 0, 0] if segmentation else [0, k], tf.float32)

    def serve(images):
        # Any rank in the signature, and a branch on it: a wrong rank gets this message, not a graph error.
        return {"probabilities": tf.cond(tf.rank(images) == 3, lambda: checked(images), refused)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, [tf.TensorSpec(None, tf.float32, name="images")])
    archive.add_endpoint("serving_uint8", serve, [tf.TensorSpec(None, tf.uint8, name="images")])
    target = Path(out) if out else run_dir / SAVED_MODEL_DIR
    with atomic_directory(target) as tmp:
        shutil.rmtree(tmp)
        archive.write_out(str(tmp), verbose=False)
        write_json(
            tmp / "lungnet.json",
            {
                "model": name,
                "task": config.task,
                "class_names": class_names,
                "output": "probability map float32 [batch, height, width] at the input size"
                if segmentation
                else "class probabilities float32 [batch, K]",
                "input": "float32 or uint8 [batch, height, width], raw "
                "grey images (HU or 0-255); preprocessing is inside the signature",
                "preprocess": str(preprocess),
            },
        )
    return target
