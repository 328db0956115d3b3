"""A segmentation run's masks on any images, mapped back onto each image's own pixels.

A model sees an image through `lungnet.data.preprocessing.preprocess_image`: optionally resampled to a fixed
pixel spacing and centre-cropped or padded (``pixel_spacing_mm`` + ``center_crop``), or only centre-cropped,
then resized to ``image_size``. `to_native` undoes that geometry for a probability map, so a mask lies on
the image it came from (zero outside the field of view the model saw). Used by the measured-nodule
classifier, the pseudo-labels of Semi-Inf-Net and `lungnet predict` on segmentation runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from lungnet.data.io import read_image
from lungnet.data.pipelines import sample_spacings
from lungnet.data.preprocessing import PreprocessConfig, preprocess_image, restore_geometry
from lungnet.errors import ConfigError
from lungnet.fileio import atomic_path
from lungnet.inference import segmenter_fn


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    """A 0/255 PNG of `mask`, written atomically (a reader never sees half a file)."""
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), mask.astype(np.uint8) * 255):
            raise OSError(f"{path}: cannot write the mask")
    return path


def to_native(
    prob: np.ndarray, shape: tuple[int, int], preprocess: PreprocessConfig, spacing_mm: float | None = None
) -> np.ndarray:
    """A model-resolution map [S, S] on the pixels of its image of `shape` (H, W): the inverse of
    `preprocess_image`'s geometry (`restore_geometry`: bilinear, zero outside the field of view).
    `spacing_mm` is the image's own pixel spacing, needed where the preprocessing resamples to
    ``pixel_spacing_mm``."""
    if preprocess.pixel_spacing_mm is not None and (spacing_mm is None or not spacing_mm > 0):
        raise ConfigError(
            f"preprocess.pixel_spacing_mm is {preprocess.pixel_spacing_mm}: mapping a mask back needs "
            f"the image's own pixel spacing (got {spacing_mm!r})"
        )
    native = restore_geometry(
        np.asarray(prob, np.float32)[..., None], int(shape[0]), int(shape[1]), preprocess, spacing_mm
    )
    return native.numpy()[..., 0]


@dataclass(frozen=True)
class Segmenter:
    """A trained segmentation model with the preprocessing, test-time augmentation and threshold its run
    evaluates it with."""

    model: keras.Model
    name: str
    preprocess: PreprocessConfig
    tta: bool
    threshold: float

    @classmethod
    def from_run(cls, run_dir: Path, model_name: str | None = None, tta: bool | None = None) -> Segmenter:
        from lungnet.runs import load_run_config
        from lungnet.runs.artifacts import load_run_model, run_preprocess

        config = load_run_config(run_dir)
        model, name = load_run_model(run_dir, model_name)
        return cls(
            model,
            name,
            run_preprocess(run_dir, config),
            config.evaluation.tta if tta is None else tta,
            config.postprocess.threshold,
        )


@dataclass(frozen=True)
class SegmentedBatch:
    """One batch: the images as read, the model's inputs [B, S, S], its probability maps at the model's
    resolution [B, S, S] and on each image's own pixels."""

    paths: list[str]
    images: list[np.ndarray]
    inputs: np.ndarray
    probs: np.ndarray
    native: list[np.ndarray]


def segmented_batches(
    segmenter: Segmenter,
    paths: list[str],
    spacings: np.ndarray | None = None,
    batch: int = 32,
    progress: bool = True,
) -> Iterator[SegmentedBatch]:
    """`segmenter` over the images of `paths` (each read once; `spacings` their pixel spacings in mm where
    the preprocessing resamples to a fixed one), `batch` at a time."""
    if segmenter.preprocess.pixel_spacing_mm is not None and spacings is None:
        raise ConfigError(
            f"model {segmenter.name}: its preprocessing resamples to {segmenter.preprocess.pixel_spacing_mm} "
            "mm per pixel, so every image needs its pixel spacing"
        )
    fn = segmenter_fn(segmenter.model, segmenter.tta)
    for start in tqdm(range(0, len(paths), batch), desc="segmenting", disable=not progress, leave=False):
        chunk = list(paths[start : start + batch])
        chunk_spacings = [None] * len(chunk) if spacings is None else list(spacings[start : start + batch])
        images = [read_image(p) for p in chunk]
        inputs = tf.stack(
            [
                preprocess_image(tf.convert_to_tensor(image[..., None], tf.float32), segmenter.preprocess, s)
                for image, s in zip(images, chunk_spacings, strict=True)
            ]
        )
        probs = np.asarray(fn(inputs), dtype=np.float32)
        native = [
            to_native(prob, image.shape[:2], segmenter.preprocess, s)
            for prob, image, s in zip(probs, images, chunk_spacings, strict=True)
        ]
        yield SegmentedBatch(chunk, images, np.asarray(inputs)[..., 0], probs, native)


def predict_masks(
    seg_dir: Path, frame: pd.DataFrame, column: str, tta: bool, progress: bool = True
) -> dict[str, np.ndarray]:
    """Binary masks on the pixels of each image of `frame`'s `column` from the selected model of
    `seg_dir`, keyed by image path (each image's pixel spacing is read where the segmenter resamples)."""
    segmenter = Segmenter.from_run(seg_dir, tta=tta)
    keys = frame[column].astype(str).to_numpy()
    first = ~pd.Series(keys).duplicated().to_numpy()
    spacings = None
    if segmenter.preprocess.pixel_spacing_mm is not None:
        spacings = sample_spacings(frame, segmenter.preprocess, image_column=column)[first]
    out = {}
    for part in segmented_batches(segmenter, list(keys[first]), spacings, progress=progress):
        for path, prob in zip(part.paths, part.native, strict=True):
            out[path] = prob >= segmenter.threshold
    return out
