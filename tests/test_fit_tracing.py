"""The fit path traces its training step once: Keras 3 without a tf.distribute strategy creates the optimizer's
and metrics' variables inside the first trace, and tf.function then traces the step again (what it costs:
`benchmarks/tracing_overhead.py`). `build_training_state` creates them first."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from lungnet.training.fit import TrainingConfig, train_phase


def _count_traces(monkeypatch) -> list:
    traces = []
    original = keras.Model.train_step

    def counted(self, data):
        traces.append(1)  # Python runs only while tf.function traces
        return original(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counted)
    return traces


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n, 8, 8, 1)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(n) % 2]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def _tiny():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))


def test_a_phase_traces_its_training_step_once_and_still_learns(tmp_path, monkeypatch):
    traces = _count_traces(monkeypatch)
    model = _tiny()
    before = [w.numpy().copy() for w in model.trainable_weights]
    summary = train_phase(
        model,
        _data(18),  # a last, smaller batch: the step's shapes are the pipeline's, batch dimension open
        _data(),
        run_dir=tmp_path,
        phase="p",
        epochs=3,
        learning_rate=0.05,
        config=TrainingConfig(verbose=0, early_stopping_patience=100),
        class_weight={0: 1.0, 1: 2.0},  # fit adds sample weights to the batches the step sees
    )
    assert len(traces) == 1
    assert summary["epochs_run"] == 3
    assert model.optimizer.iterations.numpy() == 3 * 5
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True))
