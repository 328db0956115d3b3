"""Export a run's model as a TF SavedModel whose signatures take raw images and do the preprocessing.

Signatures (``saved_model_cli show --dir DIR --all`` lists them):

- ``serving_default``: ``images`` float32 ``[batch, height, width]``: raw grey images in their native units
  (Hounsfield units for CT, 0-255 for 8-bit images), any height and width (the training preprocessing crops and
  resizes). Returns ``probabilities`` float32 ``[batch, K]`` in the order of the run's class names.
- ``serving_uint8``: the same for ``uint8`` images.

For a segmentation run, ``probabilities`` is the nodule probability map float32 ``[batch, height, width]``
at the input's own size (the model's output resized back bilinearly); threshold it (the run's
``postprocess.threshold``, 0.5 by default) for a mask. The dense CRF is not part of the signature.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from lungnet.data.preprocessing import preprocess_image
from lungnet.errors import LungnetError
from lungnet.fileio import atomic_directory, write_json
from lungnet.runs import load_run_config, require_files

SAVED_MODEL_DIR = "saved_model"


def selected_model_name(run_dir: Path) -> str:
    require_files(run_dir, "metrics.json")
    return json.loads((run_dir / "metrics.json").read_text())["selected_model"]


def load_run_model(run_dir: str | Path, model_name: str | None = None) -> tuple[keras.Model, str]:
    """The trained Keras model of a run (the selected one unless `model_name` is given)."""
    run_dir = Path(run_dir)
    name = model_name or selected_model_name(run_dir)
    path = run_dir / "models" / f"{name}.keras"
    if not path.is_file():
        available = sorted(p.stem for p in (run_dir / "models").glob("*.keras"))
        raise LungnetError(
            f"{run_dir}: no trained model {name!r} (models/{name}.keras); available: {available}"
        )
    import lungnet.losses  # noqa: F401  (registers the segmentation losses a saved model may name)
    import lungnet.models.unet  # noqa: F401

    try:
        return keras.models.load_model(path, compile=False), name
    except Exception as exc:  # a truncated or foreign file
        raise LungnetError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from exc


def export_run(run_dir: str | Path, model_name: str | None = None, out: str | Path | None = None) -> Path:
    """Write the SavedModel (atomically) to `out` or ``<run>/saved_model`` and return its path."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    model, name = load_run_model(run_dir, model_name)
    segmentation = getattr(config, "task", "classification") == "segmentation"
    if segmentation:
        from lungnet.studies.segmentation import load_preprocess

        preprocess = load_preprocess(run_dir)
        class_names = None
    else:
        preprocess = config.data.preprocess
        class_names = json.loads((run_dir / "metrics.json").read_text()).get("class_names")
    binary = int(model.outputs[0].shape[-1]) == 1

    def serve(images):
        x = preprocess_image(tf.cast(images, tf.float32)[..., None], preprocess)
        out = tf.cast(model(x, training=False), tf.float32)
        if segmentation:  # back to the input's size: a map a viewer can lay over the image it sent
            out = tf.image.resize(out, tf.shape(images)[1:3], method="bilinear")
            return {"probabilities": out[..., 0]}
        probs = tf.concat([1.0 - out, out], axis=-1) if binary else out
        return {"probabilities": probs}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve, [tf.TensorSpec([None, None, None], tf.float32, name="images")]
    )
    archive.add_endpoint("serving_uint8", serve, [tf.TensorSpec([None, None, None], tf.uint8, name="images")])
    target = Path(out) if out else run_dir / SAVED_MODEL_DIR
    with atomic_directory(target) as tmp:
        shutil.rmtree(tmp)
        archive.write_out(str(tmp), verbose=False)
        write_json(
            tmp / "lungnet.json",
            {
                "model": name,
                "task": "segmentation" if segmentation else "classification",
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
