"""The fit path every experiment uses; schedules (transfer -> fine-tune, two-phase, ...) call `train_phase`.

A run folder holds, per phase: ``checkpoints/<phase>-last.weights.h5`` (every epoch, with the optimizer's
state), ``checkpoints/<phase>-best.weights.h5`` (lowest validation loss; the weights alone),
``logs/<phase>.csv``, TensorBoard logs in ``logs/tensorboard/<phase>``, and ``backup/<phase>/`` (the resume
state, `lungnet.training.checkpoints`) while the phase runs; every file is written atomically, so a kill at
any moment leaves each complete or absent. A phase that finished writes
``checkpoints/<phase>-final.weights.h5`` (the weights alone) and is recorded in ``phases.json``; running the
same schedule again on the folder skips finished phases and resumes an interrupted one after its last complete
epoch, with the CSV log cut to the same epochs (true counts).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lungnet.errors import ConfigError
from lungnet.fileio import remove_unfinished_writes, write_json, write_text
from lungnet.losses import LossConfig, build_loss
from lungnet.models.contract import ATTRIBUTE_OUTPUT, OUTPUT_NAME, output_names
from lungnet.training.checkpoints import PhaseCheckpoint, load_checkpoint, save_weights_atomically
from lungnet.training.distribute import distribution_scope, scaled_for_replicas, sharded
from lungnet.training.multi_worker import any_worker

# Keras warns on every fit of a tf.data pipeline that its default shuffle=True is ignored: our pipelines
# shuffle themselves (seeded), so the warning says nothing to a user.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed, but will be ignored")


@dataclass(frozen=True)
class TrainingConfig:
    """The `training:` section of an experiment file."""

    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    optimizer: Literal["adamw", "adam"] = "adamw"  # adam: the segmentation study's (no weight decay)
    early_stopping_patience: int = 5  # epochs without a better `monitor`; the best weights are restored
    # What early stopping and the kept weights follow: a validation loss (lower is better) or metric
    # (higher is better), e.g. val_auc for a binary classifier, val_iou for a segmenter.
    monitor: str = "val_loss"
    # Learning rate per epoch: constant, or cosine decay to `min_learning_rate_ratio` x the phase's rate after
    # `warmup_epochs` of linear warm-up (both count the phase's own epochs, so a resume continues the curve).
    # plateau: ReduceLROnPlateau on `monitor` (x plateau_factor after plateau_patience epochs without a
    # better value; the multi-dataset study's 0.5 / 7). Its state is not checkpointed: a resumed phase
    # starts again at the phase's rate.
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_epochs: int = 0
    min_learning_rate_ratio: float = 0.0
    plateau_patience: int = 7
    plateau_factor: float = 0.5
    fine_tune_epochs: int = 20
    fine_tune_learning_rate: float = 1e-5
    steps_per_epoch: int | None = None  # cap per epoch (quick profiles); None = the whole training split
    # Wall-clock budget of one phase (minutes): no epoch starts that would end past it (judged by the
    # longest epoch so far); the best weights are kept as after early stopping. None: no budget.
    max_minutes: float | None = None
    validation_steps: int | None = (
        None  # cap on validation batches per epoch (the same first batches each time)
    )
    label_smoothing: float = 0.0
    # Polyak averaging: validation, early stopping and the kept weights use an exponential moving average of
    # the weights (this momentum per step; 0.99 averages about the last 100 steps), training the raw ones.
    # It steadies a validation curve that swings from epoch to epoch. None: off.
    ema_momentum: float | None = None
    # every gradient element clamped to [-v, v] before the update (Inf-Net's reference: 0.5); None: no clipping
    gradient_clip_value: float | None = None
    mixed_precision: bool = False  # float16 compute: a GPU switch (slower on CPU)
    xla: bool = False  # jit_compile: a GPU switch (1.5-14x slower on a 2-core CPU, measured)
    # tf.distribute (`lungnet.training.distribute`): mirrored over local GPUs (or logical CPUs), multi_worker
    # over TF_CONFIG's machines. Batch and learning rate are a replica's, scaled by the count
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    scale_with_replicas: bool = True
    # tf.data's autotuning of the training and validation pipelines. "auto": off on a machine without a GPU,
    # where it left 2-core training idle a fifth of the time for the same CPU time (`make bench-autotune`);
    # on with a GPU, whose pipeline it was built to keep fed
    data_autotune: bool | Literal["auto"] = "auto"
    seed: int = 0
    verbose: int = 1  # Keras progress bars: 1 bar, 2 one line per epoch, 0 silent

    def __post_init__(self):
        # every phase trains at least one epoch (skip fine-tuning with `fine_tune: false` on the model)
        for name in ("epochs", "fine_tune_epochs", "early_stopping_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name}: {getattr(self, name)} must be >= 1")
        if self.seed < 0:
            raise ConfigError(f"training.seed: {self.seed} must be >= 0")
        if self.data_autotune not in (True, False, "auto"):
            raise ConfigError(f"training.data_autotune: {self.data_autotune!r} must be true, false or auto")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"training.verbose: {self.verbose} must be 0, 1 or 2")
        if self.gradient_clip_value is not None and not self.gradient_clip_value > 0:
            raise ConfigError(
                f"training.gradient_clip_value: {self.gradient_clip_value} must be > 0 (or null)"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"training.weight_decay: {self.weight_decay} must be >= 0")
        if not self.monitor.startswith("val_"):
            raise ConfigError(
                f"training.monitor: {self.monitor!r} must be a validation value, e.g. val_loss, val_auc"
            )
        if self.plateau_patience < 1 or not 0 < self.plateau_factor < 1:
            raise ConfigError(
                f"training.plateau_patience {self.plateau_patience} must be >= 1 and plateau_factor "
                f"{self.plateau_factor} in (0, 1)"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"training.warmup_epochs: {self.warmup_epochs} must be >= 0")
        if not 0 <= self.min_learning_rate_ratio <= 1:
            raise ConfigError(
                f"training.min_learning_rate_ratio: {self.min_learning_rate_ratio} must be in [0, 1]"
            )
        for name in ("learning_rate", "fine_tune_learning_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"training.{name}: {getattr(self, name)} must be > 0")
        for name in ("steps_per_epoch", "validation_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"training.{name}: {value} must be >= 1")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"training.max_minutes: {self.max_minutes} must be > 0 (or null for no budget)")
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ConfigError(
                f"training.ema_momentum: {self.ema_momentum} must be in (0, 1) (or null for off)"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"training.label_smoothing: {self.label_smoothing} must be in [0, 1)")


def set_global_options(config: TrainingConfig) -> None:
    """Seeds and the precision policy; call before building models."""
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")


def main_output(model: keras.Model):
    """The model's ``probabilities`` tensor (its only output, or the named one beside side outputs)."""
    output = model.output
    return output[OUTPUT_NAME] if isinstance(output, dict) else model.outputs[0]


def binary_output(model: keras.Model) -> bool:
    """A classifier with one sigmoid unit ``[B, 1]`` (a segmentation map ``[B, H, W, 1]`` is not one)."""
    shape = main_output(model).shape
    return len(shape) == 2 and int(shape[-1]) == 1


def classifier_side_outputs(model: keras.Model) -> list[str]:
    """A classifier's side outputs (``aux_mask`` of a classifier that also segments); [] for segmenters."""
    if len(main_output(model).shape) != 2:
        return []
    return [name for name in output_names(model) if name != OUTPUT_NAME]


def scheduled_learning_rate(epoch: int, base: float, epochs: int, config: TrainingConfig) -> float:
    """The learning rate of (0-based) `epoch` of a phase of `epochs` starting at `base`."""
    if config.lr_schedule in ("constant", "plateau"):  # plateau: the callback lowers it as it goes
        return base
    warmup = min(config.warmup_epochs, epochs)
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    span = max(epochs - warmup, 1)
    floor = base * config.min_learning_rate_ratio
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))


def make_optimizer(learning_rate: float, config: TrainingConfig) -> keras.optimizers.Optimizer:
    options = {"clipvalue": config.gradient_clip_value} if config.gradient_clip_value else {}
    if config.ema_momentum is not None:
        options.update(use_ema=True, ema_momentum=config.ema_momentum)
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate, **options)
    else:
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=config.weight_decay, **options
        )
    if config.ema_momentum is not None:
        optimizer._update_model_variables_moving_average = types.MethodType(warm_moving_average, optimizer)
    return optimizer


def warm_moving_average(optimizer: keras.optimizers.Optimizer, trainable_variables) -> None:
    """Keras's moving average of the weights with TensorFlow's warm-up (`tf.train.ExponentialMovingAverage`
    with ``num_updates``): momentum min(m, (1 + t) / (10 + t)) at step t. Keras's fixed m makes the first
    epochs' average mostly the initial weights (0.99^60 = 0.55 after a 60-step epoch): on real CT a U-Net's
    averaged weights scored validation IoU 0 for 4 epochs while the raw ones trained to 0.40, and the
    plateau schedule halved the rate on that lag."""
    step = keras.ops.cast(optimizer.iterations, "float32")
    momentum = keras.ops.minimum(optimizer.ema_momentum, (1.0 + step) / (10.0 + step))
    for variable, average in zip(trainable_variables, optimizer._model_variables_moving_average, strict=True):
        if average is not None:
            m = keras.ops.cast(momentum, variable.dtype)
            average.assign(m * average + (1 - m) * variable)


@keras.saving.register_keras_serializable(package="lungnet")
class HardLabelAUC(keras.metrics.AUC):
    """AUC of the labels' classes (> 0.5). Keras' `AUC` casts labels to bool, so a soft training target (the
    readers' share, `data.reader_targets`) of 0.25 would count as positive."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(keras.ops.cast(y_true > 0.5, y_pred.dtype), y_pred, sample_weight)


def _side_output_loss(name: str):
    if name == ATTRIBUTE_OUTPUT:
        return keras.losses.MeanSquaredError()
    return build_loss(LossConfig())


def compile_model(model: keras.Model, learning_rate: float, config: TrainingConfig) -> None:
    if binary_output(model):
        loss = keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing)
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), HardLabelAUC(name="auc")]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        # macro F1 (of the arg-max class): what the 5-class study reports, so it can be the monitor
        metrics = [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.F1Score(average="macro", name="f1_macro"),
        ]
    side = classifier_side_outputs(model)
    if side:  # masks learn with the segmentation study's hybrid loss, the readers' ratings by squared error
        loss = {OUTPUT_NAME: loss, **{name: _side_output_loss(name) for name in side}}
        metrics = {OUTPUT_NAME: metrics}
    model.compile(
        optimizer=make_optimizer(learning_rate, config), loss=loss, metrics=metrics, jit_compile=config.xla
    )


def autotune_enabled(config: TrainingConfig) -> bool:
    """Whether tf.data autotunes a run's pipelines: ``training.data_autotune``, where "auto" means only
    when TensorFlow sees a GPU."""
    if config.data_autotune == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return config.data_autotune


def with_autotune(dataset: tf.data.Dataset, config: TrainingConfig) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off unless `autotune_enabled`; else unchanged."""
    if autotune_enabled(config):
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False  # AUTOTUNE parallelism then means one call per core
    return dataset.with_options(options)


def targets_for(model: keras.Model, dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Pipeline targets -> what the model's outputs expect.

    One-hot classes become a single sigmoid column for a binary classifier; a model with side outputs
    (deep supervision) gets the same target for each of its named outputs. A classifier that also segments
    gets its pipeline's masks (``(target, mask)`` elements), area-resized to each side output's size; other
    classifiers ignore masks a pipeline carries. Ratings after the class columns (``data.attribute_targets``)
    go to a classifier's ``aux_attributes``; a classifier without that head ignores them.
    """
    with_masks = isinstance(dataset.element_spec[1], tuple)
    side = classifier_side_outputs(model)
    if side or with_masks or _target_width(dataset) not in (None, _class_width(model)):
        if _mask_side_outputs(side) and not with_masks:
            raise ConfigError(
                f"model {model.name!r} has side outputs {side} that learn from masks, but the pipeline has "
                "none: set data.masks to true"
            )
        classes = _class_width(model)
        rated = ATTRIBUTE_OUTPUT in side
        if rated:
            head = int(model.output[ATTRIBUTE_OUTPUT].shape[-1])
            carried = (_target_width(dataset) or classes) - classes
            if carried != head:
                raise ConfigError(
                    f"model {model.name!r} rates {head} of the readers' characteristics (model.attributes), "
                    f"but the pipeline carries {carried} (data.attribute_targets): make them the same"
                )
        binary = binary_output(model)
        sizes = {name: tuple(model.output[name].shape[1:3]) for name in _mask_side_outputs(side)}

        def split(x, y):
            target, mask = y if with_masks else (y, None)
            outputs = {OUTPUT_NAME: target[:, 1:classes] if binary else target[:, :classes]}
            if rated:
                outputs[ATTRIBUTE_OUTPUT] = target[:, classes:]
            for name, size in sizes.items():
                outputs[name] = tf.image.resize(mask, size, method="area")
            return x, outputs if side else outputs[OUTPUT_NAME]

        return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)
    if binary_output(model):
        return dataset.map(lambda x, y: (x, y[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE)
    names = output_names(model)
    if len(names) > 1:
        return dataset.map(lambda x, y: (x, {n: y for n in names}), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset


def _mask_side_outputs(side: list[str]) -> list[str]:
    return [name for name in side if name != ATTRIBUTE_OUTPUT]


def _class_width(model: keras.Model) -> int:
    """Target columns of the model's classes: 2 for one sigmoid unit (the pipeline's one-hot pair)."""
    return 2 if binary_output(model) else int(main_output(model).shape[-1])


def _target_width(dataset: tf.data.Dataset) -> int | None:
    spec = dataset.element_spec[1]
    spec = spec[0] if isinstance(spec, tuple) else spec
    return None if isinstance(spec, dict) or spec.shape.rank != 2 else spec.shape[-1]


def _truncate_log(log: Path, epochs: int) -> None:
    """Keep the CSV log's first `epochs` rows: a killed epoch may have left a row (or half of one) after them."""
    if not log.is_file():
        return
    lines = log.read_text().splitlines(keepends=True)
    if epochs == 0:
        log.unlink()
    elif len(lines) != epochs + 1:
        write_text(log, "".join(lines[: epochs + 1]))


class TimeBudget(keras.callbacks.Callback):
    """Stops a fit before an epoch that would end past `minutes` of wall clock (this process's share).

    The next epoch is judged by the longest epoch after the first (the first also traces and compiles the
    step, which can take a minute on a CPU), or by the first while it is the only one.
    """

    def __init__(self, minutes: float | None):
        super().__init__()
        self.seconds = None if minutes is None else 60.0 * minutes
        self.hit = False
        self.elapsed = 0.0

    def on_train_begin(self, logs=None):
        self.start = self.epoch_start = time.monotonic()
        self.durations: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.durations.append(now - self.epoch_start)
        self.elapsed = now - self.start
        expected = max(self.durations[1:]) if len(self.durations) > 1 else self.durations[0]
        # every worker of a cluster stops at the same epoch, whichever worker's clock ran out
        if self.seconds is not None and any_worker(self.elapsed + expected > self.seconds):
            self.hit = True
            self.model.stop_training = True


def unconverged_phases(run_dir: str | Path) -> list[str]:
    """One line per phase of `run_dir` (and of the runs nested one level in it, such as a measured-nodule
    run's segmenter) that its time budget stopped while validation was still improving."""
    run_dir = Path(run_dir)
    lines = []
    for path in [run_dir / "phases.json", *sorted(run_dir.glob("*/phases.json"))]:
        for phase, info in _Phases(path.parent).finished().items():
            if info.get("cut_while_improving"):
                where = "" if path.parent == run_dir else f"{path.parent.name}/"
                lines.append(
                    f"{where}{phase}: its time budget stopped it after {info['epochs_run']} epoch"
                    f"{'' if info['epochs_run'] == 1 else 's'}, {info['epochs_run'] - info['best_monitor_epoch']} "
                    f"after its best {info['monitor']} (epoch {info['best_monitor_epoch']}), before early "
                    "stopping would have: it may not have converged (raise training.max_minutes; see the "
                    "learning curves)"
                )
    return lines


class _Phases:
    """phases.json: which phases of a run have finished."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "phases.json"

    def finished(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def mark(self, phase: str, info: dict) -> None:
        write_json(self.path, {**self.finished(), phase: info})


def build_training_state(model: keras.Model, dataset: tf.data.Dataset) -> None:
    """Create the optimizer's and the compiled metrics' variables before `fit` traces its training step.

    Without a tf.distribute strategy Keras 3 creates them inside that first trace, and tf.function then
    traces the whole step a second time, variables existing (a smoke Inf-Net fit of 2 epochs on 2 CPU
    cores: 45 s -> 28 s, `benchmarks/tracing_overhead.py`). Keras's own symbolic build, which `fit` runs
    under a strategy, here fed the pipeline's element spec, so that no batch is drawn."""
    if keras.backend.backend() == "tensorflow" and not model.run_eagerly:
        model._symbolic_build(data_batch=dataset.element_spec)


def train_phase(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    *,
    run_dir: str | Path,
    phase: str,
    epochs: int,
    learning_rate: float,
    config: TrainingConfig,
    class_weight: dict[int, float] | None = None,
    compile_fn: Callable[[keras.Model, float, TrainingConfig], None] | None = None,
) -> dict:
    """Compile and fit one phase with checkpoints, early stopping, logs and resume. Returns the phase summary.

    If the phase already finished in `run_dir`, its final weights are loaded and nothing is trained.
    `compile_fn(model, learning_rate, config)` replaces the classifier's `compile_model` (other losses).
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    logs = run_dir / "logs"
    for folder in (checkpoints, logs):
        folder.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"{phase}-final.weights.h5"
    phases = _Phases(run_dir)
    done = phases.finished().get(phase)
    if done is not None and final.is_file():
        load_checkpoint(model, final)
        return {**done, "resumed": "skipped (already finished)"}

    train, learning_rate = scaled_for_replicas(train, learning_rate, config)
    with distribution_scope(config):  # the optimizer's variables belong to the strategy too
        (compile_fn or compile_model)(model, learning_rate, config)
    backup = run_dir / "backup" / phase
    backup.mkdir(parents=True, exist_ok=True)
    for folder, suffix in ((checkpoints, ".weights.h5"), (backup, ".weights.h5"), (backup, ".tmp")):
        remove_unfinished_writes(folder, suffix)  # half-written files of a killed earlier attempt
    checkpoint = PhaseCheckpoint(
        backup,
        last=checkpoints / f"{phase}-last.weights.h5",
        best=checkpoints / f"{phase}-best.weights.h5",
        patience=config.early_stopping_patience,
        monitor=config.monitor,
    )
    log = logs / f"{phase}.csv"
    _truncate_log(log, checkpoint.epochs_done)  # the log and the checkpoint agree on the epochs done
    budget = TimeBudget(config.max_minutes)
    started = time.monotonic()
    callbacks = [
        budget,
        # the log row before the checkpoint: a kill between them leaves an extra row, which a resume cuts
        # (`_truncate_log`), never a missing one
        keras.callbacks.CSVLogger(str(log), append=True),
        checkpoint,
        keras.callbacks.TensorBoard(str(logs / "tensorboard" / phase), write_graph=False, profile_batch=0),
    ]
    if config.ema_momentum is not None:  # validation on the averaged weights (swapped in and back out)
        callbacks.append(keras.callbacks.SwapEMAWeights())
    if config.lr_schedule == "plateau":
        callbacks.insert(
            0,
            keras.callbacks.ReduceLROnPlateau(
                monitor=config.monitor,
                mode="min" if config.monitor.endswith("loss") else "max",
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                verbose=0,
            ),
        )
    elif config.lr_schedule != "constant":
        callbacks.insert(
            0,
            keras.callbacks.LearningRateScheduler(
                lambda epoch, lr: scheduled_learning_rate(epoch, learning_rate, epochs, config)
            ),
        )
    train = with_autotune(targets_for(model, train), config)
    if config.steps_per_epoch:
        train = train.repeat()
    if checkpoint.state["stopped"] or checkpoint.epochs_done >= epochs:  # killed after its last epoch
        load_checkpoint(model, backup / checkpoint.state["weights"])  # its optimizer state is not needed
        checkpoint.set_model(model)  # no fit attaches it here
        checkpoint.restore_best()
    else:
        # in the strategy's scope: a resume restores the optimizer's state into its (mirrored) variables
        with distribution_scope(config):
            build_training_state(model, train)
            model.fit(
                train,
                validation_data=sharded(with_autotune(targets_for(model, val), config), config),
                validation_steps=config.validation_steps,
                epochs=epochs,
                initial_epoch=checkpoint.epochs_done,
                steps_per_epoch=config.steps_per_epoch,
                class_weight=class_weight,
                callbacks=callbacks,
                verbose=config.verbose,
            )
    save_weights_atomically(model, final, optimizer=False)  # the next phase compiles a fresh optimizer
    losses = list(pd.read_csv(log)["val_loss"]) if log.is_file() else []
    summary = {
        "epochs_run": len(losses),
        "best_epoch": int(np.argmin(losses)) + 1 if losses else None,
        "best_val_loss": float(np.min(losses)) if losses else None,
        "learning_rate": learning_rate,
        "early_stopped": bool(checkpoint.state["stopped"]),
        "monitor": config.monitor,
        "best_monitor_epoch": checkpoint.state["best_epoch"],
        "best_monitor": checkpoint.state["best"],
        "wall_seconds": round(time.monotonic() - started, 1),  # this process's share (a resume restarts it)
        "data_autotune": autotune_enabled(config),  # what "auto" meant on this machine
        "stopped_by_time_budget": budget.hit,
        # the budget ended it before early stopping would have: the kept weights may not be the best reachable
        "cut_while_improving": budget.hit
        and checkpoint.state["best_epoch"] is not None
        and len(losses) - checkpoint.state["best_epoch"] < config.early_stopping_patience,
    }
    phases.mark(phase, summary)
    shutil.rmtree(backup, ignore_errors=True)  # after the mark: a kill in between resumes from `final`
    with contextlib.suppress(OSError):  # `backup/` itself once no phase's state is left in it
        backup.parent.rmdir()
    return summary
