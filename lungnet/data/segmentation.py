"""The data half of a segmentation study: source -> masks checked -> patient split -> intensity -> pipelines.

Intensity handling follows the attention U-Net study: CT in Hounsfield units is clipped to a window
([-1000, 400] HU) and z-scored with dataset statistics (mean and std of the clipped training images, so
validation, test and the exported model all use the numbers fitted on training); 8-bit sources (PNG crops
whose intensities were already rescaled per image) are z-scored per image. Images are resized bilinearly,
masks by nearest neighbour::

    from lungnet.data.segmentation import SegmentationDataConfig, prepare_segmentation_data

    data = prepare_segmentation_data(SegmentationDataConfig(source="../shared/data/lidc-crops"))
    data.train  # tf.data.Dataset of (image [S, S, 1] z-scores, mask [S, S, 1] 0/1)

Empty masks (a slice where the 50 % consensus excludes every pixel) are kept by default: they are real
negatives, and the metrics count a prediction of nothing on them as a perfect Dice. ``empty_masks: drop``
leaves them out, ``error`` refuses them, naming the row.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import tensorflow as tf

from lungnet.data.augmentation import AugmentConfig
from lungnet.data.io import IMAGE_SUFFIXES, file_suffix, read_image, split_reference
from lungnet.data.manifest import check_mask_pairs, row_labels
from lungnet.data.pipelines import segmentation_dataset
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.data.registry import Source, load_source
from lungnet.data.sources.phantom import PhantomConfig
from lungnet.data.splits import split_manifest
from lungnet.errors import ConfigError, DataError

EIGHT_BIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SMALL_NODULE_MM = 10.0  # the split is stratified by nodule size at this diameter
STATS_SAMPLE = 512  # training images read to fit the dataset z-score statistics


@dataclass(frozen=True)
class SegmentationDataConfig:
    """The `data:` section of a segmentation experiment."""

    source: str = "lidc-phantom"
    view: Literal["crop", "full"] = "full"  # phantom only: the nodule crop or the full 512 px slice
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_level: Literal["patient", "row", "manifest"] = "patient"  # manifest: its split / paper_split column
    split_seed: int = 0
    batch_size: int = 8
    seed: int = 0
    image_size: int = 256
    channels: Literal[1, 3] = 1
    intensity: Literal["auto", "ct", "8bit"] = "auto"  # auto: 8-bit for PNG/JPG/BMP/TIFF files, else CT (HU)
    hu_clip: tuple[float, float] = (-1000.0, 400.0)
    zscore: Literal["auto", "dataset", "per_image"] = "auto"  # auto: dataset for CT, per image for 8-bit
    empty_masks: Literal["keep", "drop", "error"] = "keep"
    phantom: PhantomConfig = field(default_factory=lambda: PhantomConfig(one_per_nodule=True))
    augment: AugmentConfig | None = field(
        default_factory=lambda: AugmentConfig(rotation=0.1, horizontal_flip=True, vertical_flip=True)
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: {self.batch_size} must be >= 1")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size: {self.image_size} must be >= 8")
        if len(self.hu_clip) != 2 or not self.hu_clip[0] < self.hu_clip[1]:
            raise ConfigError(f"data.hu_clip: {self.hu_clip!r} must be two numbers lo < hi")
        object.__setattr__(self, "hu_clip", (float(self.hu_clip[0]), float(self.hu_clip[1])))


@dataclass
class PreparedSegmentationData:
    """A split manifest with masks, the resolved preprocessing and the three pipelines."""

    source: Source
    config: SegmentationDataConfig
    manifest: pd.DataFrame  # kept rows with split, image_ref, mask_ref, eval_spacing_mm
    preprocess: PreprocessConfig  # resolved: dataset z-score statistics filled in when used
    intensity: Literal["ct", "8bit"]
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    n_empty_masks: int = 0

    def split(self, name: str) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    def pipeline(self, frame: pd.DataFrame, training: bool = False, perturb=None) -> tf.data.Dataset:
        return segmentation_pipeline(frame, self.preprocess, self.config, training=training, perturb=perturb)


def view_columns(manifest: pd.DataFrame, view: str) -> tuple[str, str]:
    """(image column, mask column) of the view: the phantom has crops beside its full slices."""
    if view == "crop" and "crop_image" in manifest.columns and "crop_mask" in manifest.columns:
        return "crop_image", "crop_mask"
    return "image", "mask"


def detect_intensity(refs: pd.Series, setting: str = "auto") -> Literal["ct", "8bit"]:
    """'ct' (Hounsfield units) or '8bit', from the setting or, for 'auto', the image file type."""
    if setting in ("ct", "8bit"):
        return setting
    suffixes = {file_suffix(split_reference(r)[0]) for r in refs.astype(str)}
    if suffixes and suffixes <= set(EIGHT_BIT_SUFFIXES):
        return "8bit"
    if suffixes & set(EIGHT_BIT_SUFFIXES):
        raise DataError(
            f"images mix 8-bit files and CT files ({sorted(suffixes)}); set data.intensity to 'ct' or '8bit'"
        )
    unknown = suffixes - set(IMAGE_SUFFIXES)
    if unknown:
        raise DataError(f"image files of unsupported type {sorted(unknown)}")
    return "ct"


def base_preprocess(config: SegmentationDataConfig, intensity: str) -> PreprocessConfig:
    """The preprocessing before dataset statistics are known (per-image z-score)."""
    return PreprocessConfig(
        hu_window=config.hu_clip if intensity == "ct" else None,
        normalize="zscore",
        sigmoid_gain=None,
        image_size=config.image_size,
        channels=config.channels,
    )


def fit_zscore(refs: pd.Series, hu_clip: tuple[float, float], seed: int = 0) -> tuple[float, float]:
    """Mean and std of the HU-clipped pixels of (up to `STATS_SAMPLE`) training images."""
    refs = refs.astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    chosen = refs if len(refs) <= STATS_SAMPLE else rng.choice(refs, STATS_SAMPLE, replace=False)
    total = total_sq = count = 0.0
    for ref in chosen:
        x = np.clip(read_image(ref).astype(np.float64), *hu_clip)
        total += x.sum()
        total_sq += np.square(x).sum()
        count += x.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    if not std > 0:
        raise DataError("training images are constant after the HU clip: cannot fit z-score statistics")
    return float(mean), std


def check_masks(frame: pd.DataFrame, policy: str, progress: bool) -> tuple[pd.DataFrame, int]:
    """Read every mask and image once (`lungnet.data.manifest.check_mask_pairs`: mask values, and the mask's
    shape against its image's, naming the row and file of every bad pair) and apply the empty-mask policy."""
    # Up front, so a bad pair is named here rather than from inside a tf.data pipeline.
    areas = check_mask_pairs(frame, "image_ref", "mask_ref", progress=progress)
    empty = areas == 0
    frame = frame.assign(mask_area_px=areas)
    if empty.any() and policy == "error":
        row = int(np.argmax(empty))
        raise DataError(
            f"{row_labels(frame)[row]}: mask {frame['mask_ref'].iloc[row]} is empty (data.empty_masks is "
            "'error'; 'keep' evaluates it as a negative, 'drop' leaves it out)"
        )
    if policy == "drop":
        frame = frame[~empty].reset_index(drop=True)
    return frame, int(empty.sum())


def _eval_spacing(frame: pd.DataFrame, view: str, image_size: int, native_size: int | None) -> np.ndarray:
    """Pixel spacing (mm) at the evaluated resolution: the source spacing x native size / image size."""
    column = "crop_pixel_spacing_mm" if view == "crop" and "crop_pixel_spacing_mm" in frame else None
    column = column or ("pixel_spacing_mm" if "pixel_spacing_mm" in frame else None)
    if column is None or native_size is None:
        return np.full(len(frame), np.nan)
    spacing = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    return spacing * native_size / image_size


def segmentation_frame(
    source: Source, config: SegmentationDataConfig, progress: bool = True
) -> tuple[pd.DataFrame, int]:
    """(rows with ``image_ref``, ``mask_ref``, ``eval_spacing_mm``; number of empty masks) of a source."""
    manifest = source.manifest
    image_col, mask_col = view_columns(manifest, config.view)
    if mask_col not in manifest.columns:
        raise DataError(f"{source.spec}: the manifest has no '{mask_col}' column; segmentation needs masks")
    frame = manifest.assign(image_ref=manifest[image_col], mask_ref=manifest[mask_col])
    no_mask = frame["mask_ref"].fillna("").astype(str).str.strip() == ""
    if no_mask.all():
        raise DataError(f"{source.spec}: no row has a mask ('{mask_col}' is empty everywhere)")
    if no_mask.any():  # classification-only slices of a mixed source (a harmonised LungCT-Diagnosis)
        warnings.warn(
            f"{source.spec}: {int(no_mask.sum())} rows without a mask (classification-only slices) left out "
            "of segmentation",
            stacklevel=2,
        )
        frame = frame[~no_mask].reset_index(drop=True)
    frame, n_empty = check_masks(frame, config.empty_masks, progress)
    if frame.empty:
        raise DataError(f"{source.spec}: no samples left after data.empty_masks '{config.empty_masks}'")
    native = read_image(str(frame["image_ref"].iloc[0])).shape[0]
    frame["eval_spacing_mm"] = _eval_spacing(frame, config.view, config.image_size, native)
    return frame, n_empty


def prepare_segmentation_data(
    config: SegmentationDataConfig, progress: bool = True
) -> PreparedSegmentationData:
    source = load_source(config.source, config.phantom, progress=progress)
    frame, n_empty = segmentation_frame(source, config, progress)
    # Stratify the patient split by nodule size, so every split has small nodules for small-tumour recall.
    diameter = pd.to_numeric(frame.get("diameter_mm", pd.Series(np.nan, index=frame.index)), errors="coerce")
    frame["target"] = (diameter >= SMALL_NODULE_MM).astype(int)
    frame = split_manifest(
        frame, config.split, seed=config.split_seed, level=config.split_level, require_every_class=False
    )
    frame = frame.sample(frac=1.0, random_state=config.split_seed).reset_index(drop=True)

    intensity = detect_intensity(frame["image_ref"], config.intensity)
    preprocess = base_preprocess(config, intensity)
    zscore = config.zscore if config.zscore != "auto" else ("dataset" if intensity == "ct" else "per_image")
    if zscore == "dataset":
        train_refs = frame.loc[frame["split"] == "train", "image_ref"]
        hu_clip = config.hu_clip if intensity == "ct" else (-np.inf, np.inf)
        mean, std = fit_zscore(train_refs, hu_clip, seed=config.seed)
        preprocess = dataclasses.replace(preprocess, zscore_mean=mean, zscore_std=std)

    def pipeline(name: str, training: bool) -> tf.data.Dataset:
        part = frame[frame["split"] == name].reset_index(drop=True)
        if part.empty:
            raise DataError(f"{source.spec}: the {name} split is empty; use more patients or other fractions")
        return segmentation_pipeline(part, preprocess, config, training=training)

    return PreparedSegmentationData(
        source,
        config,
        frame,
        preprocess,
        intensity,
        pipeline("train", True),
        pipeline("val", False),
        pipeline("test", False),
        n_empty,
    )


def segmentation_pipeline(
    frame: pd.DataFrame,
    preprocess: PreprocessConfig,
    config: SegmentationDataConfig,
    *,
    training: bool,
    perturb=None,
    batch_size: int | None = None,
) -> tf.data.Dataset:
    """Batches of (image, mask) for rows with ``image_ref``/``mask_ref``; `perturb` acts on the raw image."""
    return segmentation_dataset(
        frame,
        preprocess,
        training=training,
        batch_size=batch_size or config.batch_size,
        augment=config.augment if training else None,
        image_column="image_ref",
        mask_column="mask_ref",
        seed=config.seed,
        cache=perturb is None,
        perturb=perturb,
    )
