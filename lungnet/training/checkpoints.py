"""Checkpoints that survive SIGKILL at any moment, early stopping that resumes, and a guard for full disks.

Per phase, in ``backup/<phase>/``:

- ``epoch-NNNN.weights.h5``: the weights (and optimizer state) after epoch N, written under a temporary name
  and renamed, so a file with that name is always complete;
- ``state.json``: written (atomically) only after the epoch's file is complete; it names that file and holds
  the epochs done, the best validation loss so far, its epoch and the early-stopping counter. The previous
  epoch's file is deleted only after the new state is on disk.

So after a kill the state names a complete file of the last finished epoch, or there is no state and the phase
starts again at epoch 0. `PhaseCheckpoint` also writes ``checkpoints/<phase>-last.weights.h5`` (a copy of the
epoch's file) and ``-best.weights.h5`` (the weights alone, a third of the size under Adam), atomically, and
does what Keras' EarlyStopping(restore_best_weights=True) does, with its state carried across a resume (Keras'
own BackupAndRestore and ModelCheckpoint write in place).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import keras
from keras.src.saving import saving_lib

from lungnet.errors import ConfigError, LungnetError
from lungnet.fileio import atomic_path, write_json
from lungnet.models.contract import OUTPUT_NAME

STATE_FILE = "state.json"
# Stop with a clear error, before writing, when less than this many checkpoint sizes are free: libhdf5
# can crash the process when a write runs out of space.
FREE_SPACE_FACTOR = 3  # an epoch writes up to three: its own, -last and -best


class DiskFullError(LungnetError):
    """Not enough free space to write the next checkpoint."""


def read_state(folder: Path) -> dict | None:
    """The phase's resume state, or None when no epoch finished (or the state cannot be read)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # written atomically, so only a foreign edit gets here
        raise LungnetError(
            f"{path}: cannot read the resume state ({exc}); delete {folder} to restart the phase"
        ) from exc
    if not (folder / state["weights"]).is_file():
        raise LungnetError(
            f"{path}: names {state['weights']}, which is missing; delete {folder} to restart the phase"
        )
    return state


def save_weights_atomically(model: keras.Model, path: Path, *, optimizer: bool = True) -> Path:
    """`model.save_weights(path)`, atomically. With ``optimizer=False`` the optimizer's state is left out: a
    file only to predict with or to start a new phase from, a third of the size under Adam (its two moments
    per weight are the rest)."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        state = getattr(model, "optimizer", None)
        if optimizer or state is None:
            model.save_weights(tmp)
        else:  # Keras' own writer; `Model.save_weights` has no switch for it
            saving_lib.save_weights_only(model, str(tmp), objects_to_skip=[state])
    return path


def load_checkpoint(model: keras.Model, path: Path) -> None:
    """Load a file `save_weights_atomically` wrote, with a clear error when it belongs to another
    architecture. Where the file and the model's optimizer differ (a file without the optimizer's state, or a
    model whose optimizer is not built), the model's optimizer keeps its own state: Keras' warning that it
    skipped it is expected here and silenced."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(path)
    except (ValueError, KeyError) as exc:
        raise LungnetError(
            f"{path}: checkpoint does not fit model {model.name!r} (another architecture or size?): {exc}"
        ) from exc


def _copy_atomically(source: Path, target: Path) -> None:
    with atomic_path(target, suffix=".weights.h5") as tmp:
        shutil.copyfile(source, tmp)


def monitored_value(logs: dict, monitor: str):
    """``logs[monitor]``; for a model with side outputs, whose metrics Keras names per output, a metric of
    the final output answers to its plain name (``val_iou`` reads ``val_probabilities_iou``)."""
    if monitor in logs:
        return logs[monitor]
    return logs.get(f"val_{OUTPUT_NAME}_{monitor.removeprefix('val_')}")


class PhaseCheckpoint(keras.callbacks.Callback):
    """Checkpoint, resume state and early stopping on ``monitor`` for one phase.

    Lower is better for a loss (a name containing ``loss``), higher for any other metric (AUC, IoU, ...).
    """

    def __init__(self, folder: Path, last: Path, best: Path, patience: int, monitor: str = "val_loss"):
        super().__init__()
        self.folder, self.last, self.best_path = Path(folder), Path(last), Path(best)
        self.patience, self.monitor = patience, monitor
        self.sign = 1.0 if "loss" in monitor else -1.0  # compare sign * value: lower is better
        self.state = read_state(self.folder) or {
            "epochs_done": 0,
            "weights": None,
            "best": None,
            "best_epoch": None,
            "wait": 0,
            "stopped": False,
        }
        self._best_weights = None  # in memory, as Keras' EarlyStopping keeps them
        self._checkpoint_bytes = 0

    @property
    def epochs_done(self) -> int:
        return self.state["epochs_done"]

    def on_train_begin(self, logs=None):
        if self.state["weights"]:
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:  # so that its moments are restored too
                optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self.folder / self.state["weights"])

    def on_epoch_end(self, epoch, logs=None):
        self._check_free_space()  # once, before this epoch writes anything
        current = monitored_value(logs or {}, self.monitor)
        if current is None and logs:  # a misspelt or absent metric would silently turn early stopping off
            available = sorted(k for k in logs if k.startswith("val_"))
            raise ConfigError(
                f"training.monitor: {self.monitor!r} is not a validation value of this model; "
                f"it reports {available}"
            )
        state = self.state
        if current is not None:  # Keras' EarlyStopping(restore_best_weights=True), step by step
            if self._best_weights is None and state["best"] is None:
                self._best_weights = self._kept_weights()
            state["wait"] += 1
            if math.isfinite(current) and (
                state["best"] is None or self.sign * current < self.sign * state["best"]
            ):
                state.update(best=float(current), best_epoch=epoch + 1, wait=0)
                # with training.ema_momentum the kept weights are the moving average that validation judged;
                # the epoch checkpoints keep the raw ones, so that a resume continues exactly
                with averaged_weights_in(self.model):
                    self._best_weights = self.model.get_weights()
                    save_weights_atomically(self.model, self.best_path, optimizer=False)
            elif state["wait"] >= self.patience and epoch > 0:
                state["stopped"] = True
                self.model.stop_training = True
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        save_weights_atomically(self.model, self.folder / name)
        self._checkpoint_bytes = (self.folder / name).stat().st_size
        _copy_atomically(self.folder / name, self.last)
        previous = state["weights"]
        state.update(epochs_done=epoch + 1, weights=name)
        write_json(self.folder / STATE_FILE, state)
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)

    def on_train_end(self, logs=None):
        self.restore_best()

    def _kept_weights(self) -> list:
        with averaged_weights_in(self.model):
            return self.model.get_weights()

    def restore_best(self) -> None:
        """The best epoch's weights, as EarlyStopping(restore_best_weights=True) leaves the model."""
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        elif self.state["best"] is not None and self.best_path.is_file():  # best epoch before a resume
            load_checkpoint(self.model, self.best_path)

    def _check_free_space(self) -> None:
        needed = FREE_SPACE_FACTOR * (self._checkpoint_bytes or _estimate_bytes(self.model))
        free = shutil.disk_usage(self.folder).free
        if free < needed:
            raise DiskFullError(
                f"{self.folder}: only {free / 2**20:.0f} MB free, a checkpoint needs about "
                f"{needed / FREE_SPACE_FACTOR / 2**20:.0f} MB; stopped after {self.state['epochs_done']} complete "
                "epoch(s), which are kept: free some space and continue with --resume"
            )


@contextmanager
def averaged_weights_in(model: keras.Model):
    """Inside, the model holds its optimizer's moving average of the weights and the optimizer the raw
    ones; they are swapped back on leaving. With an optimizer that keeps no average (``use_ema``) or one
    not yet built, a no-op."""
    optimizer = model.optimizer
    if not (getattr(optimizer, "use_ema", False) and optimizer.built):
        yield
        return
    pairs = list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True))

    def swap():
        for variable, average in pairs:
            raw = keras.ops.convert_to_numpy(variable)
            variable.assign(keras.ops.convert_to_numpy(average))
            average.assign(raw)

    swap()
    try:
        yield
    finally:
        swap()


def _estimate_bytes(model: keras.Model) -> int:
    """Weights plus Adam's two moments, in float32."""
    return 3 * 4 * int(model.count_params())
