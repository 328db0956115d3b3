"""Export a run's model as a TF SavedModel whose signatures take raw images and do the preprocessing.

Signatures (``saved_model_cli show --dir DIR --all`` lists them):

- ``serving_default``: ``images`` float32 ``[batch, height, width]``: raw grey images in their native units
  (Hounsfield units for CT, 0-255 for 8-bit images), any height and width (the training preprocessing crops and
  resizes). Returns ``probabilities`` float32 ``[batch, K]`` in the order of the run's class names.
- ``serving_uint8``: the same for ``uint8`` images.

Runs whose preprocessing needs more than the pixels take more:

- ``preprocess.pixel_spacing_mm`` (a fixed physical scale): a second input ``pixel_spacing_mm`` float32
  ``[batch]``, each image's own pixel spacing in mm;
- ``data.neighbour_slices`` (2.5-D): ``images`` is ``[batch, height, width, 3]``, the slices below, at and
  above the nodule's slice;
- a model that reads the nodule's outline (NoduleHyperFusionNet): a second input ``masks`` ``[batch, height,
  width]`` of the images' own size, float32 or uint8, any value above 0 inside the nodule (a segmenter's
  mask: the nodule-fusion run's ``segmenter/saved_model`` draws one from the same raw image).

A nodule-fusion run with its segmenter also has ``image_only`` (float32) and ``image_only_uint8``: ``images``
alone (and ``pixel_spacing_mm`` where either network resamples), the run's segmenter drawing each mask inside
the graph exactly as the study drew its test masks (its preprocessing, test-time augmentation and threshold,
mapped back onto the image's pixels); they also return those ``masks`` uint8 ``[batch, height, width]``, 0/1,
so a viewer can show the outline the classifier read. This is the image-only setting the study reports.

Bad input is refused with a message (``InvalidArgumentError``): another rank, (float32) NaN or infinite
pixels, a spacing that is not positive or not one per image. An empty batch returns an empty result.

For a segmentation run, ``probabilities`` is the nodule probability map float32 ``[batch, height, width]``
at the input's own size (the model's output resized back bilinearly); threshold it (the run's
``postprocess.threshold``, 0.5 by default) for a mask. The dense CRF is not part of the signature.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from lungnet.data.preprocessing import PreprocessConfig, preprocess_image, preprocess_mask, restore_geometry
from lungnet.evaluation.measured_nodule import SEGMENTER_DIR
from lungnet.fileio import atomic_directory, write_json
from lungnet.inference import segmenter_fn
from lungnet.models.contract import INPUT_NAME, MASK_INPUT_NAME
from lungnet.runs import load_run_config
from lungnet.runs.artifacts import load_run_model, run_class_names, run_preprocess
from lungnet.runs.folder import require_finished, run_status

SAVED_MODEL_DIR = "saved_model"
# Serving never differentiates: skipping the gradient functions' traces makes an export faster (EfficientNetB2
# at 32 px on 2 CPU cores: 15.4 -> 13.1 s, `benchmarks/tracing_overhead.py`).
SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
INPUT_TAKES = "[batch, height, width] raw grey images (HU or 0-255), float32 or uint8 (serving_uint8)"
STACK_TAKES = (
    "[batch, height, width, 3] raw grey slices (below, nodule slice, above; HU or 0-255), float32 or uint8"
)


@dataclasses.dataclass(frozen=True)
class RunSegmenter:
    """The segmenter a nodule-fusion run trained, as the study applies it to draw the masks it tests on."""

    model: keras.Model
    preprocess: PreprocessConfig
    threshold: float
    tta: bool

    def masks(self, images, spacing):
        """0/1 float32 masks [B, H, W] on the pixels of raw `images` [B, H, W] (float32)."""
        probs = segmenter_fn(self.model, self.tta)(
            preprocess_image(images[..., None], self.preprocess, spacing)
        )
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        if spacing is None:  # (a segmenter without a fixed physical scale ignores the spacing)
            spacing = tf.zeros(tf.shape(images)[:1], tf.float32)

        def on_its_pixels(pair):  # each image its own spacing, so one map at a time
            return restore_geometry(pair[0][..., None], height, width, self.preprocess, pair[1])[..., 0]

        spec = tf.TensorSpec([None, None], tf.float32)
        native = tf.map_fn(on_its_pixels, (probs, spacing), fn_output_signature=spec)
        return tf.cast(native >= self.threshold, tf.float32)


def run_segmenter(run_dir: Path, config) -> RunSegmenter | None:
    """The finished segmenter of a nodule-fusion run (``<run>/segmenter``), or None."""
    seg_dir = run_dir / SEGMENTER_DIR
    if getattr(config, "segmenter", None) is None or run_status(seg_dir).get("status") != "finished":
        return None
    seg_config = load_run_config(seg_dir)
    model, _ = load_run_model(seg_dir)
    return RunSegmenter(
        model, run_preprocess(seg_dir, seg_config), seg_config.postprocess.threshold, config.segmenter.tta
    )


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

    physical = preprocess.pixel_spacing_mm is not None
    stacked = bool(getattr(config.data, "neighbour_slices", False))
    fused = MASK_INPUT_NAME in [t.name for t in model.inputs]  # the nodule's outline as a second input
    segmenter = run_segmenter(run_dir, config) if fused else None  # draws the outline: `image_only`
    rank = 4 if stacked else 3
    takes = STACK_TAKES if stacked else INPUT_TAKES
    grey = dataclasses.replace(preprocess, channels=1)

    def model_input(images, spacing, masks):
        images = tf.cast(images, tf.float32)
        if stacked:  # each slice is preprocessed as an image of its own, as in training
            return tf.concat([preprocess_image(images[..., c : c + 1], grey, spacing) for c in range(3)], -1)
        x = preprocess_image(images[..., None], preprocess, spacing)
        if not fused:
            return x
        inside = tf.cast(tf.cast(masks, tf.float32) > 0, tf.float32)[..., None]
        return {INPUT_NAME: x, MASK_INPUT_NAME: preprocess_mask(inside, grey, spacing)}

    def predict(images, spacing, masks, drawn):
        if drawn:  # image-only: the run's segmenter outlines each nodule first
            masks = segmenter.masks(tf.cast(images, tf.float32), spacing)
        out = tf.cast(model(model_input(images, spacing, masks), training=False), tf.float32)
        if segmentation:  # back to the input's size: a map a viewer can lay over the image it sent
            out = tf.image.resize(out, tf.shape(images)[1:3], method="bilinear")[..., 0]
        else:
            out = tf.concat([1.0 - out, out], axis=-1) if binary else out
        return {"probabilities": out, "masks": tf.cast(masks, tf.uint8)} if drawn else {"probabilities": out}

    def nothing(images, drawn):  # what an empty or refused batch returns, in the same structure
        shape = tf.shape(images)
        probabilities = tf.zeros(tf.concat([[0], shape[1:3]], 0) if segmentation else [0, k], tf.float32)
        if not drawn:
            return {"probabilities": probabilities}
        return {"probabilities": probabilities, "masks": tf.zeros(tf.concat([[0], shape[1:3]], 0), tf.uint8)}

    def checked(images, spacing, masks, drawn):
        # static rank for the preprocessing (tf.ensure_shape would run, and fail, before the rank branch)
        dims = tf.shape(images)
        images = tf.reshape(images, tf.stack([dims[i] for i in range(rank)]))
        if stacked:
            images = tf.ensure_shape(images, [None, None, None, 3])
        if images.dtype != tf.uint8:  # a NaN image would come back as ordinary-looking probabilities
            tf.debugging.assert_all_finite(images, "images: NaN or infinite pixels; send finite raw values")
        if fused and not drawn:  # one mask per image, of its size; checked before it takes the images' shape
            padded = [tf.pad(tf.shape(t), [[0, 4]])[:4] for t in (masks, images)]  # equal lengths
            same = tf.logical_and(tf.equal(tf.rank(masks), tf.rank(images)), tf.reduce_all(tf.equal(*padded)))
            message = "masks: one mask of each image's own size, [batch, height, width]"
            with tf.control_dependencies([tf.debugging.Assert(same, [message])]):
                masks = tf.reshape(masks, tf.shape(images))
        if spacing is not None:
            spacing = tf.reshape(tf.cast(spacing, tf.float32), [-1])
            tf.debugging.assert_equal(
                tf.size(spacing), tf.shape(images)[0], "pixel_spacing_mm: one spacing (mm) per image"
            )
            tf.debugging.assert_positive(spacing, "pixel_spacing_mm: spacings must be > 0 mm")
        return tf.cond(
            tf.shape(images)[0] > 0,
            lambda: predict(images, spacing, masks, drawn),
            lambda: nothing(images, drawn),
        )

    def refused(drawn):
        with tf.control_dependencies([tf.debugging.Assert(False, [f"images: expected {takes}"])]):
            return nothing(tf.zeros([0, 0, 0]), drawn)

    def respond(images, spacing=None, masks=None, drawn=False):
        # Any rank in the signature, and a branch on it: a wrong rank gets this message, not a graph error.
        return tf.cond(
            tf.rank(images) == rank, lambda: checked(images, spacing, masks, drawn), lambda: refused(drawn)
        )

    # one endpoint function per input set (a SavedModel signature binds its arguments by position)
    if fused and physical:

        def serve(images, masks, pixel_spacing_mm):
            return respond(images, pixel_spacing_mm, masks)
    elif fused:

        def serve(images, masks):
            return respond(images, None, masks)
    else:

        def serve(images, spacing=None):
            return respond(images, spacing)

    def signature(dtype, masks=fused, spacing=physical):
        specs = [tf.TensorSpec(None, dtype, name="images")]
        if masks:
            specs.append(tf.TensorSpec(None, dtype, name="masks"))
        return specs + [tf.TensorSpec([None], tf.float32, name="pixel_spacing_mm")] if spacing else specs

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, signature(tf.float32))
    archive.add_endpoint("serving_uint8", serve, signature(tf.uint8))
    image_only = segmenter is not None
    if image_only:
        # the spacing travels where either network resamples to a fixed scale
        spaced = physical or segmenter.preprocess.pixel_spacing_mm is not None
        if spaced:

            def serve_image_only(images, pixel_spacing_mm):
                return respond(images, pixel_spacing_mm, drawn=True)
        else:

            def serve_image_only(images):
                return respond(images, drawn=True)

        archive.track(segmenter.model)
        for name, dtype in (("image_only", tf.float32), ("image_only_uint8", tf.uint8)):
            archive.add_endpoint(name, serve_image_only, signature(dtype, masks=False, spacing=spaced))
    target = Path(out) if out else run_dir / SAVED_MODEL_DIR
    with atomic_directory(target) as tmp:
        shutil.rmtree(tmp)
        archive.write_out(str(tmp), options=SAVE_OPTIONS, verbose=False)
        write_json(
            tmp / "lungnet.json",
            {
                "model": name,
                "task": config.task,
                "class_names": class_names,
                "output": "probability map float32 [batch, height, width] at the input size"
                if segmentation
                else "class probabilities float32 [batch, K]",
                "input": f"images: {takes}"
                + ("; masks: [batch, height, width], above 0 inside the nodule" if fused else "")
                + ("; pixel_spacing_mm: float32 [batch], each image's spacing" if physical else "")
                + "; preprocessing is inside the signature",
                "image_only": "signatures image_only / image_only_uint8: images alone; the run's segmenter "
                "draws each mask (returned as `masks`, uint8 0/1 [batch, height, width])"
                if image_only
                else None,
                "preprocess": str(preprocess),
            },
        )
    return target
