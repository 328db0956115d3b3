"""A few steps of lungnet's fit path under a strategy, in a process of its own (`test_distribute`).

``python -m tests.distributed_fit STRATEGY BATCH LEARNING_RATE RUN_DIR [LOGICAL_CPUS [KILL_AFTER]]``: a
tiny classifier trained 3 epochs on the same fixed data, unshuffled, through
`lungnet.training.fit.train_phase`; the per-epoch training losses go to ``RUN_DIR/losses.json``. With
KILL_AFTER, the process dies (``os._exit``, like a kill) right after that epoch's checkpoint, and running
it again without it resumes the phase. Logical CPUs must be set before TensorFlow's first operation, hence
a process per run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(strategy: str, batch: int, learning_rate: float, run_dir: Path, cpus: int = 1, kill_after=0) -> None:
    import tensorflow as tf

    if cpus > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpus)

    from lungnet.training.checkpoints import PhaseCheckpoint
    from lungnet.training.distribute import distribution_scope, replicas
    from lungnet.training.fit import TrainingConfig, set_global_options, train_phase

    if kill_after:
        checkpoint_epoch = PhaseCheckpoint.on_epoch_end

        def die_after(self, epoch, logs=None):
            checkpoint_epoch(self, epoch, logs)
            if epoch + 1 == kill_after:
                os._exit(3)

        PhaseCheckpoint.on_epoch_end = die_after

    config = TrainingConfig(
        strategy=strategy, epochs=3, lr_schedule="constant", optimizer="adam", verbose=0, monitor="val_loss"
    )
    distribution_scope(config)  # the strategy first, on the logical devices just set
    set_global_options(config)
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = np.zeros((64, 2), "float32")
    y[np.arange(64), (x.mean(axis=(1, 2, 3)) > 0).astype(int)] = 1.0
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    val = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    with distribution_scope(config):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(
            4, 3, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(1)
        )(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        outputs = keras.layers.Dense(
            1, activation="sigmoid", kernel_initializer="ones", name="probabilities"
        )(h)
        model = keras.Model(inputs, outputs)
    summary = train_phase(
        model, train, val, run_dir=run_dir, phase="p", epochs=3, learning_rate=learning_rate, config=config
    )
    import pandas as pd

    losses = pd.read_csv(run_dir / "logs" / "p.csv")["loss"].tolist()
    out = {"losses": losses, "replicas": replicas(strategy), "learning_rate": summary["learning_rate"]}
    (run_dir / "losses.json").write_text(json.dumps(out))


if __name__ == "__main__":
    args = sys.argv[1:]
    numbers = [int(a) for a in args[4:]]
    main(args[0], int(args[1]), float(args[2]), Path(args[3]), *numbers)
