"""From a data config to ready tf.data pipelines: source -> labels -> patient split -> balancing -> batches.

This is the data half of every experiment (the CLI, the studies and the notebooks all call `prepare_data`)::

    from lungnet.data.dataset import DataConfig, prepare_data

    data = prepare_data(DataConfig(source="../shared/data/lidc-crops/manifest.csv", grouping="paper"))
    data.train  # tf.data.Dataset of (image [128, 128, 3], one-hot target), oversampled and augmented
    data.manifest.groupby("split").size()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import tensorflow as tf

from lungnet.config import from_dict, load_yaml
from lungnet.data.attributes import check_attribute_names
from lungnet.data.augmentation import AugmentConfig
from lungnet.data.balancing import class_weights, oversample, weighted_resample
from lungnet.data.labels import (
    SOFT_GROUPINGS,
    assign_labels,
    class_names,
    excluded_rows,
    reader_soft_targets,
)
from lungnet.data.manifest import check_images
from lungnet.data.neighbours import NEIGHBOUR_COLUMNS, add_neighbour_columns
from lungnet.data.pipelines import SOFT_TARGET_COLUMN, classification_dataset
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.data.registry import Source, load_source
from lungnet.data.sources.phantom import PhantomConfig
from lungnet.data.splits import check_fractions, split_manifest
from lungnet.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataConfig:
    """The `data:` section of an experiment YAML file."""

    source: str = "lidc-phantom"
    grouping: Literal["paper", "exclude-indeterminate", "5class", "labels"] = "paper"
    view: Literal["crop", "full"] = "crop"  # zoomed nodule crop or the full CT slice
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_level: Literal["patient", "row", "manifest"] = "patient"  # manifest: its split / paper_split column
    split_seed: int = 0
    # oversample: every class to largest + oversample_extra; weighted_sampler: a draw with p ~ 1 / class size
    balance: Literal["oversample", "weighted_sampler", "class_weight", "none"] = "oversample"
    oversample_extra: int = 200  # every class is brought to (largest class + this)
    batch_size: int = 32
    seed: int = 0
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # null: only oversampled copies
    # 2.5-D: the slices one below and one above (same nodule_id, slice_index -+ 1) as channels 1 and 3
    neighbour_slices: bool = False
    # carry each image's mask (``mask`` column; the phantom's ``crop_mask`` for crops) for models that also
    # segment as they classify (custom_cnn ``mask_head``)
    masks: bool = False
    # Training targets from the readers (binary groupings): each nodule's share of readers on the malignant
    # side (`lungnet.data.labels.reader_soft_targets`) instead of its median's class; validation and test
    # keep the hard labels. With `train_on_excluded`, the nodules the grouping leaves out (exclude-
    # indeterminate: median 3) join training with their readers' share as target (the others keep theirs,
    # hard unless `reader_targets`), unless their patient is in validation or test.
    reader_targets: bool = False
    train_on_excluded: bool = False
    # the readers' other ratings (median columns such as calcification, spiculation, texture) that ride on
    # every classification target, for models with an attribute head (custom_cnn ``attributes``)
    attribute_targets: tuple[str, ...] = ()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: {self.batch_size} must be >= 1")
        if self.oversample_extra < 0:
            raise ConfigError(f"data.oversample_extra: {self.oversample_extra} must be >= 0")
        for name in ("seed", "split_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: {getattr(self, name)} must be >= 0")
        try:
            check_fractions(self.split, "data.split:")
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "attribute_targets", check_attribute_names(self.attribute_targets))
        for name in ("reader_targets", "train_on_excluded"):
            if getattr(self, name) and self.grouping not in SOFT_GROUPINGS:
                raise ConfigError(
                    f"data.{name}: the readers' share on the malignant side needs a binary grouping "
                    f"({', '.join(SOFT_GROUPINGS)}), not {self.grouping!r}"
                )
        if self.neighbour_slices and self.preprocess.channels != 3:
            raise ConfigError(
                f"data.preprocess.channels: {self.preprocess.channels}; data.neighbour_slices makes three "
                "channels (below, slice, above), so channels must be 3"
            )


def load_data_config(data: dict[str, Any] | str | Path, where: str | None = None) -> DataConfig:
    """A `DataConfig` from a dict or from the `data:` section of a YAML file; bad keys are named."""
    if isinstance(data, str | Path):
        where = where or str(data)
        raw = load_yaml(data)
        if "data" not in raw:
            raise ConfigError(f"{where}: no 'data:' section")
        data = raw["data"]
    return from_dict(DataConfig, data, f"{where or 'config'}: data")


@dataclass
class PreparedData:
    """A labelled, split manifest and its pipelines. `train_manifest` is the balanced training table."""

    source: Source
    config: DataConfig
    manifest: pd.DataFrame  # every kept sample, with target, class_name and split
    train_manifest: pd.DataFrame
    class_names: tuple[str, ...]
    class_weight: dict[int, float] | None
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset

    def split(self, name: str) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)


def image_column(manifest: pd.DataFrame, view: str) -> str:
    """The manifest column holding the view.

    Sources that render both views (the phantom) have ``crop_image`` beside the full slice in ``image``;
    for any other source ``image`` is whatever it holds (for lidc-crops, already a nodule crop).
    """
    return "crop_image" if view == "crop" and "crop_image" in manifest.columns else "image"


def mask_column(manifest: pd.DataFrame, view: str) -> str:
    """The manifest column holding the view's masks (the phantom's crops have ``crop_mask``)."""
    return "crop_mask" if view == "crop" and "crop_mask" in manifest.columns else "mask"


def with_neighbours(frame: pd.DataFrame, config: DataConfig, origin: str) -> pd.DataFrame:
    """`frame` with the neighbouring slices' columns when the config asks for 2.5-D input (every slice of a
    nodule must still be in `frame`)."""
    if not config.neighbour_slices:
        return frame
    return add_neighbour_columns(frame, image_column(frame, config.view), origin)


def classification_pipeline(
    frame: pd.DataFrame,
    config: DataConfig,
    num_classes: int,
    training: bool = False,
    batch_size: int | None = None,
    attributes: bool = False,
) -> tf.data.Dataset:
    """The config's pipeline over `frame` (rows with ``target``, and the neighbour columns for 2.5-D); every
    caller (training, evaluation, explanations, external sets) reads images through this one function.
    `attributes`: the targets carry ``data.attribute_targets`` (the run's own splits, for training; an
    external set needs no ratings to be scored)."""
    return classification_dataset(
        frame,
        config.preprocess,
        num_classes=num_classes,
        training=training,
        batch_size=batch_size or config.batch_size,
        augment=config.augment if training else None,
        image_column=image_column(frame, config.view),
        seed=config.seed,
        neighbour_columns=NEIGHBOUR_COLUMNS if config.neighbour_slices else None,
        mask_column=mask_column(frame, config.view) if config.masks else None,
        attribute_columns=config.attribute_targets if attributes else (),
    )


def check_source_images(source: Source, frame: pd.DataFrame, column: str, progress: bool = True) -> None:
    """Read every image of `column` once, before any training or evaluation (`check_images`), so a bad file
    is one `DataError` naming its row and file instead of a TensorFlow error mid-run.

    Skipped for the embedded phantom: lungnet renders its arrays itself, and re-reading thousands of 512 px
    slices would cost time for nothing. `lungnet evaluate` calls this on its labelled manifest too.
    """
    if source.is_phantom:
        return
    check_images(frame, column, origin=source.spec, progress=progress)


def excluded_training_rows(source: Source, manifest: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """`excluded_rows` of the source whose patient is not in `manifest`'s validation or test split, ready to
    join the training split (images checked, neighbours added); says how many joined."""
    extra = excluded_rows(source.manifest, config.grouping, origin=source.spec)
    held_out = manifest.loc[manifest["split"] != "train", "patient_id"].astype(str).str.strip()
    extra = extra[~extra["patient_id"].astype(str).str.strip().isin(set(held_out))].reset_index(drop=True)
    if extra.empty:
        return extra.assign(split=pd.Series(dtype=str))
    check_source_images(source, extra, image_column(extra, config.view), progress=False)
    extra = with_neighbours(extra, config, source.spec).assign(split="train")
    nodules = extra["nodule_id"].nunique() if "nodule_id" in extra.columns else len(extra)
    print(
        f"data.train_on_excluded: {len(extra)} slices of {nodules} nodules that "
        f"{config.grouping!r} leaves out join training (readers' share as target; none from validation or "
        "test patients)"
    )
    return extra


def balanced_training(
    train: pd.DataFrame, config: DataConfig, num_classes: int
) -> tuple[pd.DataFrame, dict[int, float] | None]:
    """The training rows balanced as `config.balance` says, and the class weights where that is how."""
    if config.balance == "oversample":
        return oversample(train, extra=config.oversample_extra, seed=config.seed), None
    if config.balance == "weighted_sampler":
        return weighted_resample(train, seed=config.seed), None
    if config.balance == "class_weight":
        return train, class_weights(train["target"], num_classes)
    return train, None


def prepare_data(config: DataConfig, progress: bool = True) -> PreparedData:
    """Load, label, check every image (`check_source_images`), split, shuffle, balance, and build pipelines."""
    source = load_source(config.source, config.phantom, progress=progress)
    labelled = assign_labels(source.manifest, config.grouping, origin=source.spec)
    names = class_names(config.grouping, source.manifest)
    check_source_images(source, labelled, image_column(labelled, config.view), progress=progress)
    labelled = with_neighbours(labelled, config, source.spec)
    manifest = split_manifest(
        labelled, config.split, seed=config.split_seed, level=config.split_level, class_names=names
    )
    # One seeded shuffle of the rows: sources list patients in order, and a capped validation pass
    # (training.validation_steps) should still see a mix of patients and classes.
    manifest = manifest.sample(frac=1.0, random_state=config.split_seed).reset_index(drop=True)
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    if config.reader_targets:
        train[SOFT_TARGET_COLUMN] = reader_soft_targets(train, config.grouping, source.spec)
    if config.train_on_excluded:
        extra = excluded_training_rows(source, manifest, config)
        extra[SOFT_TARGET_COLUMN] = reader_soft_targets(extra, config.grouping, source.spec)
        if SOFT_TARGET_COLUMN not in train.columns:
            train[SOFT_TARGET_COLUMN] = train["target"].astype(float)
        train = pd.concat([train, extra], ignore_index=True)
    train, weights = balanced_training(train, config, len(names))

    def pipeline(frame: pd.DataFrame, training: bool) -> tf.data.Dataset:
        return classification_pipeline(frame, config, len(names), training, attributes=True)

    val = manifest[manifest["split"] == "val"].reset_index(drop=True)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    return PreparedData(
        source,
        config,
        manifest,
        train,
        names,
        weights,
        pipeline(train, True),
        pipeline(val, False),
        pipeline(test, False),
    )
