"""Multi-scale training (Inf-Net's recipe): the sizes, the resized batches, the any-size wrapper, the config."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungnet.errors import ConfigError
from lungnet.experiment import InfNetModelSpec
from lungnet.models import SEGMENTERS, build_segmenter
from lungnet.training.multiscale import (
    any_size_model,
    check_rates,
    multiscale_batches,
    multiscale_training,
    scaled_sizes,
)
from tests.test_inf_net import TINY


def test_sizes_are_the_references_rounding():
    # round(352 * rate / 32) * 32, as the reference computes its training sizes
    assert scaled_sizes(352, (0.75, 1.0, 1.25)) == (256, 352, 448)
    assert scaled_sizes(128, (0.75, 1.0, 1.25)) == (96, 128, 160)
    assert scaled_sizes(64, (0.75, 1.0, 1.25)) == (64, 64, 64)  # 1.5 and 2.5 strides round to 2
    assert scaled_sizes(64, (0.1,)) == (32,)  # never below one stride


@pytest.mark.parametrize("rates", [[0, 1], [1, "x"], [True], [8.0]])
def test_bad_rates_are_named(rates):
    with pytest.raises(ConfigError, match="models\\[a\\].multiscale_rates"):
        check_rates(rates, "models[a].multiscale_rates")


def test_no_rates_is_single_scale():
    assert check_rates(None, "x") is None and check_rates([], "x") is None
    model = build_segmenter(TINY, (64, 64, 1))
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((2, 64, 64, 1), "float32")).batch(2)
    assert multiscale_training(model, dataset, None, 64) == (model, dataset)


def _batches(n=8, size=64):
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size, 1), dtype=np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    masks[:, 16:48, 20:44] = 1
    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)


def test_every_batch_is_trained_at_every_size_in_order_and_masks_stay_binary():
    resized = list(multiscale_batches(_batches(n=8), 64, (0.5, 1.0, 1.5)))
    sizes = [x.shape[1] for x, _ in resized]
    assert sizes == [32, 64, 96] * 4  # four batches, one step per rate each, as the reference trains
    originals = [x.numpy() for x, _ in _batches(n=8)]
    np.testing.assert_allclose(resized[1][0].numpy(), originals[0])  # rate 1: the batch itself
    for x, y in resized:
        assert x.shape[:3] == y.shape[:3] and x.dtype == tf.float32
        assert set(np.unique(y.numpy())) <= {0.0, 1.0}
        # the box covers 3/8 x 3/8 of the image at every size
        np.testing.assert_allclose(y.numpy().mean(), (32 / 64) * (24 / 64), atol=0.03)


def test_the_wrapper_trains_the_model_at_several_sizes():
    keras.utils.set_random_seed(0)
    model = build_segmenter(TINY, (64, 64, 1))
    wrapper = any_size_model(model)
    assert wrapper.count_params() == model.count_params()
    names = list(model.output)
    wrapper.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={k: "binary_crossentropy" for k in names},
        run_eagerly=True,  # concrete shapes, as under XLA or JAX; and no tracing per size
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    batches = multiscale_batches(_batches(n=4), 64, (0.5, 1.5)).map(lambda x, y: (x, {k: y for k in names}))
    wrapper.fit(batches, epochs=1, verbose=0)
    # the model itself (fixed size, for evaluation and export) holds the trained weights
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True))
    image = np.random.default_rng(1).random((1, 64, 64, 1), dtype=np.float32)
    np.testing.assert_allclose(
        model(image)["probabilities"], wrapper(image)["probabilities"], rtol=1e-5, atol=1e-6
    )
    assert wrapper(np.zeros((1, 96, 96, 1), np.float32))["probabilities"].shape == (1, 96, 96, 1)


def test_only_inf_net_models_take_rates():
    unet = SEGMENTERS.parse({"name": "unet", "depth": 2, "filters": 4}, "model")
    with pytest.raises(ConfigError, match="models\\[u\\].multiscale_rates: only Inf-Net"):
        InfNetModelSpec(name="u", model=unet, multiscale_rates=(0.75, 1.0))
    inf_net = SEGMENTERS.parse(TINY, "model")
    assert InfNetModelSpec(name="i", model=inf_net, multiscale_rates=[0.75, 1]).multiscale_rates == (
        0.75,
        1.0,
    )
