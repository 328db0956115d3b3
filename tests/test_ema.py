"""`training.ema_momentum`: validation, early stopping and the kept weights use the optimizer's moving average
of the weights, while training (and the epoch checkpoints a resume reads) keep the raw ones."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.errors import ConfigError
from lungnet.training.checkpoints import averaged_weights_in
from lungnet.training.fit import TrainingConfig, targets_for, train_phase


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = np.eye(2, dtype="float32")[
        (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    ]  # one-hot, as the pipelines give
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def _tiny():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(4)(inputs)))


def _phase(model, run_dir, momentum):
    config = TrainingConfig(verbose=0, early_stopping_patience=100, ema_momentum=momentum)
    return train_phase(
        model, _data(), _data(seed=1), run_dir=run_dir, phase="p", epochs=4, learning_rate=0.1, config=config
    )


def test_validation_and_the_kept_weights_are_the_moving_average(tmp_path):
    model = _tiny()
    summary = _phase(model, tmp_path, momentum=0.8)
    log = pd.read_csv(tmp_path / "logs" / "p.csv")
    best = summary["best_monitor_epoch"]
    validation = targets_for(model, _data(seed=1))  # the targets as the phase fed them
    kept = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    # the model a phase returns is the one validation judged at its best epoch
    np.testing.assert_allclose(kept, log["val_loss"].iloc[best - 1], rtol=1e-5)
    raw = _tiny()
    raw.load_weights(tmp_path / "checkpoints" / "p-last.weights.h5")  # the raw weights of the last epoch
    assert any(not np.allclose(a, b) for a, b in zip(raw.get_weights(), model.get_weights(), strict=True)), (
        "the kept weights are the raw ones, not their average"
    )
    if best == len(log):  # then the raw weights of that epoch were not what validation scored
        raw.compile(loss=model.loss)
        assert abs(raw.evaluate(validation, verbose=0) - kept) > 1e-6


def test_without_it_the_kept_weights_are_the_raw_ones(tmp_path):
    model = _tiny()
    _phase(model, tmp_path, momentum=None)
    assert not hasattr(model.optimizer, "_model_variables_moving_average")
    with averaged_weights_in(model):  # no average to swap in: nothing changes
        before = model.get_weights()
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_swapping_in_the_average_is_undone_on_leaving(tmp_path):
    model = _tiny()
    _phase(model, tmp_path, momentum=0.8)
    raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    averages = [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]
    with averaged_weights_in(model):
        for a, v in zip(averages, model.trainable_variables, strict=True):
            np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(v))
    for r, v in zip(raw, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(r, keras.ops.convert_to_numpy(v))


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.5])
def test_a_momentum_outside_0_1_is_refused(momentum):
    with pytest.raises(ConfigError, match="training.ema_momentum"):
        TrainingConfig(ema_momentum=momentum)


def test_the_average_warms_up_instead_of_holding_the_initial_weights():
    from lungnet.training.fit import make_optimizer

    variable = keras.Variable(np.zeros(3, "float32"))
    optimizer = make_optimizer(0.5, TrainingConfig(optimizer="adam", ema_momentum=0.99))
    optimizer.build([variable])
    for step in range(40):
        before = keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0]).copy()
        optimizer.apply([keras.ops.ones(3)], [variable])
        momentum = min(0.99, (1 + step) / (10 + step))  # TensorFlow's num_updates warm-up
        expected = momentum * before + (1 - momentum) * keras.ops.convert_to_numpy(variable)
        average = keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0])
        np.testing.assert_allclose(average, expected, rtol=1e-5, atol=1e-6)
    # after 40 steps Keras's fixed 0.99 would still hold 0.99^40 = 67 % of the initial zeros
    assert np.all(average < 0.75 * keras.ops.convert_to_numpy(variable))
