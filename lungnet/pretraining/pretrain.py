"""Self-supervised pretraining of an encoder on unlabelled CT slices (Models Genesis), cached for reuse.

    from lungnet.pretraining import PretrainConfig, pretrain_encoder
    base = pretrain_encoder("efficientnet_b2", frame, data_config, "lidc-phantom", PretrainConfig(steps=400))
    base.path  # model.weights for a classifier or a U-Net with this encoder

The images are read through the classification pipeline with the data config's own preprocessing (labels
ignored), so the encoder sees in pretraining what it sees in the study. A tenth of the patients (at least
one) is held out for the restoration loss that early stopping follows and the learning curve shows. The
result is cached (`lungnet.pretraining.cache`), keyed by the backbone, the method and its parameters, the
input shape, the preprocessing and the exact set of images: a study whose training split, preprocessing or
step budget differs builds its own base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from lungnet.data.dataset import (
    DataConfig,
    PreparedData,
    check_source_images,
    classification_pipeline,
    image_column,
    with_neighbours,
)
from lungnet.data.neighbours import NEIGHBOUR_COLUMNS
from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.figures import learning_curve_figure, save_figure
from lungnet.fileio import write_json
from lungnet.models.encoders import pretrained_encoder_names
from lungnet.models.registry import ENCODERS
from lungnet.models.weights import flat_layers, save_encoder_weights
from lungnet.pretraining import cache
from lungnet.pretraining.genesis import GenesisConfig, genesis_pair
from lungnet.pretraining.restoration import restoration_model
from lungnet.training.checkpoints import read_state
from lungnet.training.fit import TrainingConfig, train_phase

METHODS = ("genesis",)
# bumped when a build makes different weights from the same inputs (2: batch-norm statistics re-estimated)
BUILD_VERSION = 2
METHOD_NAMES = {"genesis": "Models Genesis"}
PHASE = "restoration"


@dataclass(frozen=True)
class PretrainConfig:
    """The `pretraining:` section of an experiment, and the options of `lungnet pretrain`.

    Training stops at `steps` batches or after `minutes`, whichever comes first (at least one must be set),
    or earlier when the held-out restoration loss has not improved for `patience` epochs of
    `steps_per_epoch` batches; the best epoch's encoder is kept.
    """

    method: Literal["genesis"] = "genesis"
    steps: int | None = 400
    minutes: float | None = None
    batch_size: int = 16
    learning_rate: float = 1e-3  # Adam (the reference uses SGD at 1.0 with a plateau schedule, 3-D)
    steps_per_epoch: int = 50
    patience: int = 4
    max_images: int = 4000  # a seeded sample of the images when there are more (memory: float16 arrays)
    seed: int = 0
    genesis: GenesisConfig = field(default_factory=GenesisConfig)
    cache_dir: str | None = None  # default: the data cache (--cache-dir, $LUNGNET_CACHE, user cache dir)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"pretraining.method: {self.method!r} is not one of {list(METHODS)}")
        if self.steps is None and self.minutes is None:
            raise ConfigError("pretraining: give steps, minutes or both (the first reached stops training)")
        if self.steps is not None and (isinstance(self.steps, bool) or self.steps < 1):
            raise ConfigError(f"pretraining.steps: {self.steps!r} must be an integer >= 1 (or null)")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"pretraining.minutes: {self.minutes!r} must be > 0 (or null)")
        for name in ("batch_size", "steps_per_epoch", "patience", "max_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretraining.{name}: {getattr(self, name)} must be >= 1")
        if not self.learning_rate > 0:
            raise ConfigError(f"pretraining.learning_rate: {self.learning_rate} must be > 0")
        if self.seed < 0:
            raise ConfigError(f"pretraining.seed: {self.seed} must be >= 0")

    def keyed(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cache_dir"}


@dataclass(frozen=True)
class PretrainedBase:
    """A finished, cached encoder: its weights file and what `pretraining.json` says of it."""

    path: Path
    info: dict

    @property
    def provenance(self) -> str:
        return self.info["provenance"]


def check_backbone(name: str) -> None:
    choices = pretrained_encoder_names() + ["conv"]
    if name not in choices:
        raise ConfigError(f"--backbone: {name!r} is not an encoder lungnet can pretrain; choices: {choices}")


def pretraining_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image (oversampled copies dropped), labels ignored."""
    if frame.empty:
        raise DataError("pretraining: the source has no images (after the split and exclusions)")
    if "augment_copy" in frame.columns:
        frame = frame[~frame["augment_copy"].astype(bool)]
    return frame.assign(target=0).reset_index(drop=True)


def training_patients_images(prepared: PreparedData) -> pd.DataFrame:
    """Every image of the training split's patients, whatever its label (rows a grouping leaves out, such as
    indeterminate nodules, included: pretraining reads no labels), with the 2.5-D neighbour columns."""
    patients = set(prepared.split("train")["patient_id"].astype(str))
    manifest = prepared.source.manifest
    frame = manifest[manifest["patient_id"].astype(str).isin(patients)].reset_index(drop=True)
    check_source_images(prepared.source, frame, image_column(frame, prepared.config.view), progress=False)
    return with_neighbours(frame, prepared.config, prepared.source.spec)


def _image_refs(frame: pd.DataFrame, config: DataConfig) -> list[str]:
    columns = [image_column(frame, config.view)]
    if config.neighbour_slices:
        columns += list(NEIGHBOUR_COLUMNS)
    return sorted("|".join(str(row[c]) for c in columns) for _, row in frame.iterrows())


def base_key(backbone: str, frame: pd.DataFrame, data: DataConfig, config: PretrainConfig) -> str:
    pre = data.preprocess
    return cache.cache_key(
        {
            "backbone": backbone,
            "input_shape": [pre.image_size, pre.image_size, pre.channels],
            "preprocess": dataclasses.asdict(pre),
            "view": data.view,
            "neighbour_slices": data.neighbour_slices,
            "images": cache.cache_key({"refs": _image_refs(frame, data)}),
            "pretraining": config.keyed(),
            "build_version": BUILD_VERSION,
        }
    )


def read_images(frame: pd.DataFrame, data: DataConfig, progress: bool = True) -> np.ndarray:
    """The frame's images as the study's pipeline makes them, float16 [N, H, W, C] (no augmentation)."""
    if not data.preprocess.output_in_unit_range:
        raise ConfigError(
            "pretraining: Models Genesis needs images in [0, 1]; use data.preprocess.normalize minmax (or a "
            "sigmoid contrast) rather than a z-score"
        )
    config = dataclasses.replace(data, masks=False)
    batches = classification_pipeline(frame, config, num_classes=1, training=False, batch_size=64)
    images = [
        x.numpy().astype(np.float16)
        for x, _ in tqdm(
            batches,
            total=math.ceil(len(frame) / 64),
            desc="reading images",
            unit="batch",
            disable=not progress,
        )
    ]
    return np.concatenate(images)


def _held_out_patients(patients: pd.Series, seed: int) -> set[str]:
    ids = sorted(patients.astype(str).unique())
    if len(ids) < 2:
        raise DataError(
            f"pretraining needs images of at least 2 patients (one is held out for validation), got {len(ids)}"
        )
    rng = np.random.default_rng(seed)
    return set(rng.choice(ids, size=max(1, round(0.1 * len(ids))), replace=False).tolist())


def genesis_batches(images: np.ndarray, batch_size: int, config: GenesisConfig, seed: int):
    """An endless dataset of (transformed, original) batches from random images."""
    shape = images.shape[1:]

    def generate():
        rng = np.random.default_rng(seed)
        while True:
            pairs = [
                genesis_pair(images[i].astype(np.float32), rng, config)
                for i in rng.integers(0, len(images), batch_size)
            ]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    spec = tf.TensorSpec((None, *shape), tf.float32)
    return tf.data.Dataset.from_generator(generate, output_signature=(spec, spec)).prefetch(2)


def fixed_pairs(images: np.ndarray, batch_size: int, config: GenesisConfig, seed: int) -> tf.data.Dataset:
    """One transformed copy of each held-out image (at most 256), the same every epoch."""
    rng = np.random.default_rng(seed)
    chosen = images[rng.permutation(len(images))[:256]]
    pairs = [genesis_pair(image.astype(np.float32), rng, config) for image in chosen]
    xs, ys = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    return tf.data.Dataset.from_tensor_slices((xs, ys)).batch(batch_size)


def recalibrate_batch_norm(
    encoder: keras.Model, images: np.ndarray, batch_size: int = 32, batches: int = 50, momentum: float = 0.9
) -> int:
    """Re-estimate every batch-norm layer's moving mean and variance on untransformed images; returns the
    number of images used.

    After a few hundred steps at Keras' momentum of 0.99 the moving statistics are still far from the
    batch statistics the layers were trained with, and in a deep encoder the mismatch compounds: frozen
    (inference-mode) EfficientNetB2 features then hardly vary between images (measured on lidc-crops after
    100 steps: a standard deviation across images of 1e-5, against about 1e-2 after this re-estimation), so
    transfer learning has nothing to read. The batches run in training mode at `momentum` (0.9: after 50
    batches the old statistics weigh 0.5 %), without touching any trained weight.
    """
    norms = [layer for layer in flat_layers(encoder) if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms or len(images) == 0:
        return 0
    momenta = [layer.momentum for layer in norms]
    batch_size = min(batch_size, len(images))  # whole batches (one traced step), the images cycled
    order = np.resize(np.random.default_rng(0).permutation(len(images)), batches * batch_size)
    try:
        for layer in norms:
            layer.momentum = momentum  # read when the step is traced
        step = tf.function(lambda x: encoder(x, training=True))
        for start in range(0, len(order), batch_size):
            step(tf.constant(images[order[start : start + batch_size]], tf.float32))
    finally:
        for layer, old in zip(norms, momenta, strict=True):
            layer.momentum = old
    return len(order)


def _compile_restoration(model: keras.Model, learning_rate: float, config: TrainingConfig) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")  # the paper's loss


def pretrain_encoder(
    backbone: str,
    frame: pd.DataFrame,
    data: DataConfig,
    data_description: str,
    config: PretrainConfig = PretrainConfig(),
    cache_root: Path | None = None,
    progress: bool = True,
) -> PretrainedBase:
    """The cached base for (backbone, images of `frame`, preprocessing, `config`): reused if finished,
    else pretrained (resuming a killed build of the same key) and published atomically."""
    check_backbone(backbone)
    frame = pretraining_frame(frame)
    key = base_key(backbone, frame, data, config)
    root = (
        Path(config.cache_dir).expanduser() if config.cache_dir else (cache_root or data.phantom.cache_root())
    )
    entry = cache.entry_dir(root, backbone, config.method, key)
    if (weights := cache.finished_weights(entry)) is not None:
        base = PretrainedBase(weights, _read_info(entry))
        print(f"pretrained {backbone} reused from the cache: {base.provenance} ({weights})")
        return base
    with cache.building(entry) as partial:
        info = _build(backbone, frame, data, data_description, config, partial, progress)
        path = cache.publish(partial, entry)
    print(f"pretrained {backbone}: {info['provenance']} -> {path}")
    return PretrainedBase(path, info)


def _read_info(entry: Path) -> dict:
    return json.loads((entry / cache.INFO_FILE).read_text())


def _build(
    backbone, frame, data: DataConfig, description: str, config: PretrainConfig, partial: Path, progress
):
    pre = data.preprocess
    shape = (pre.image_size, pre.image_size, pre.channels)
    # a sample independent of the frame's row order: the same images give the same base
    frame = frame.sort_values(image_column(frame, data.view), kind="stable").reset_index(drop=True)
    if len(frame) > config.max_images:
        frame = frame.sample(n=config.max_images, random_state=config.seed).reset_index(drop=True)
    held_out = _held_out_patients(frame["patient_id"], config.seed)
    is_val = frame["patient_id"].astype(str).isin(held_out).to_numpy()
    images = read_images(frame, data, progress)
    train_images, val_images = images[~is_val], images[is_val]
    keras.utils.set_random_seed(config.seed)
    pretrainable = backbone in pretrained_encoder_names()  # the others have no weights option
    encoder_config = ENCODERS.parse(
        {"name": backbone, **({"weights": None} if pretrainable else {})}, "--backbone"
    )
    model, encoder = restoration_model(encoder_config, shape)
    steps_per_epoch = min(config.steps_per_epoch, config.steps or config.steps_per_epoch)
    epochs = math.ceil(config.steps / steps_per_epoch) if config.steps else 100_000
    training = TrainingConfig(
        epochs=epochs,
        learning_rate=config.learning_rate,
        optimizer="adam",
        early_stopping_patience=config.patience,
        steps_per_epoch=steps_per_epoch,
        max_minutes=config.minutes,
        seed=config.seed,
        verbose=1 if progress else 0,
    )
    state = read_state(partial / "backup" / PHASE) or {}
    done = int(state.get("epochs_done", 0))  # a resumed build draws new batches, not epoch 1's again
    n_patients = frame["patient_id"].nunique()
    print(
        f"pretraining {backbone} ({METHOD_NAMES[config.method]}) on {len(train_images)} images of "
        f"{n_patients - len(held_out)} patients ({len(val_images)} images of {len(held_out)} held out), "
        f"input {list(shape)}, "
        + " or ".join(
            ([f"{config.steps} steps"] if config.steps else [])
            + ([f"{config.minutes} min"] if config.minutes else [])
        )
        + (f"; resuming after epoch {done}" if done else "")
    )
    started = time.monotonic()
    summary = train_phase(
        model,
        genesis_batches(train_images, config.batch_size, config.genesis, config.seed + 1000 * done),
        fixed_pairs(val_images, config.batch_size, config.genesis, config.seed + 1),
        run_dir=partial,
        phase=PHASE,
        epochs=epochs,
        learning_rate=config.learning_rate,
        config=training,
        compile_fn=_compile_restoration,
    )
    steps_run = summary["epochs_run"] * steps_per_epoch
    best_steps = (summary["best_monitor_epoch"] or summary["epochs_run"]) * steps_per_epoch
    info = {
        "backbone": backbone,
        "method": config.method,
        "input_shape": list(shape),
        "data": description,
        "patients": int(n_patients - len(held_out)),
        "images": int(len(train_images)),
        "held_out_patients": sorted(held_out),
        "pretraining_patients": sorted(set(frame["patient_id"].astype(str)) - held_out),
        "steps_run": int(steps_run),
        "best_step": int(best_steps),
        "best_val_mse": summary["best_monitor"],
        "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "early_stopped": summary["early_stopped"],
        "wall_seconds": round(time.monotonic() - started, 1),
        "pretraining": config.keyed(),
        "preprocess": dataclasses.asdict(pre),
        "neighbour_slices": data.neighbour_slices,
        "provenance": (
            f"self-supervised ({METHOD_NAMES[config.method]}) on {description} "
            f"({n_patients - len(held_out)} patients, {len(train_images)} images), {steps_run} steps "
            f"(kept: step {best_steps})"
        ),
    }
    recalibrated = recalibrate_batch_norm(encoder, train_images)
    info["batch_norm_recalibrated_on"] = recalibrated
    log = partial / "logs" / f"{PHASE}.csv"
    if log.is_file():  # the restoration loss against steps: did pretraining converge?
        figure = learning_curve_figure({PHASE: pd.read_csv(log)}, {PHASE: steps_per_epoch}, "val_loss")
        save_figure(figure, partial / "learning_curve.png")
    save_encoder_weights(encoder, partial / cache.WEIGHTS_FILE, info)
    write_json(partial / cache.INFO_FILE, info)
    for folder in ("checkpoints", "backup"):  # the restoration model's checkpoints are not the product
        shutil.rmtree(partial / folder, ignore_errors=True)
    return info
