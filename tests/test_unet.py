"""Segmentation models: shapes, attention maps, the gate's arithmetic, training steps, .keras round trips and
config errors. Tiny models (filters 4, depth 2-3, 32-64 px) so the file runs in seconds on a CPU."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from lungnet.errors import ConfigError
from lungnet.losses import HybridLoss
from lungnet.models import SEGMENTERS, build_segmenter
from lungnet.models.classifiers.custom_cnn import CustomCNNConfig
from lungnet.models.segmenters.unet import attention_layer_names

SEGMENTATION_MODELS = ("unet", "attention_res_unet")


def SegmentationModelConfig(**fields):  # noqa: N802  (reads like the config it returns)
    return SEGMENTERS.parse(fields, "model")


def _model(name: str, size: int = 32, depth: int = 2, channels: int = 1, **kwargs) -> keras.Model:
    config = SegmentationModelConfig(name=name, depth=depth, filters=4, **kwargs)
    return build_segmenter(config, (size, size, channels))


def _squares(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark images each with one bright square, and the square's mask."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.2, 0.05, (n, size, size, 1)).astype("float32")
    masks = np.zeros((n, size, size, 1), dtype="float32")
    for i in range(n):
        side = int(rng.integers(size // 6, size // 3))
        top, left = rng.integers(0, size - side, size=2)
        masks[i, top : top + side, left : left + side] = 1.0
    images += 0.6 * masks
    return images, masks


def _attention_maps(model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    names = attention_layer_names(model)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    maps = probe(images, training=False)
    return [keras.ops.convert_to_numpy(m) for m in (maps if isinstance(maps, list | tuple) else [maps])]


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", SEGMENTATION_MODELS)
@pytest.mark.parametrize(("size", "depth"), [(32, 2), (32, 3), (64, 2), (64, 3)])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_range(name, size, depth, channels):
    model = _model(name, size, depth, channels)
    assert model.get_layer("image").output.shape == (None, size, size, channels)
    assert model.output.shape == (None, size, size, 1)
    assert model.get_layer("probabilities").output is model.output
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat graph
    images = np.random.default_rng(0).random((2, size, size, channels), dtype=np.float32)
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    assert probabilities.shape == (2, size, size, 1)
    assert np.all((probabilities > 0) & (probabilities < 1))


def test_filters_double_per_level():
    model = _model("unet", 32, depth=3)
    assert [model.get_layer(f"enc{level}_2_conv").filters for level in (1, 2, 3)] == [4, 8, 16]
    assert model.get_layer("bottleneck_2_conv").filters == 32
    assert model.get_layer("dec1_up").filters == 4


def test_batch_norm_and_dropout_switches():
    def count(model, kind):
        return sum(isinstance(layer, kind) for layer in model.layers)

    assert count(_model("unet"), layers.BatchNormalization) == 0  # the study's plain U-Net
    # two convs per block, 2 encoder + bottleneck + 2 decoder blocks
    assert count(_model("unet", batch_norm=True), layers.BatchNormalization) == 10
    # residual blocks: two convs + the shortcut's, always with batch norm
    assert count(_model("attention_res_unet"), layers.BatchNormalization) == 15
    assert count(_model("unet"), layers.SpatialDropout2D) == 0
    assert count(_model("attention_res_unet", dropout=0.3), layers.SpatialDropout2D) == 1


def test_mixed_precision_output_is_float32(mixed_precision):
    model = _model("attention_res_unet")
    assert model.get_layer("enc1_1_conv").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert model.get_layer("attention_gate_1").output.dtype == "float32"  # exact maps for figures
    out = model(np.zeros((1, 32, 32, 1), dtype="float32"), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_mixed_precision_gradients_compile_with_xla(mixed_precision):
    # Regression: a float16 bilinear up-sampling of the gate made XLA reject the gradient graph
    # ("Seen floating point types of different precisions" in SigmoidGrad). Gradients only, no optimizer:
    # compiling a whole train step with XLA takes 4x longer on a CPU.
    model = _model("attention_res_unet", 32, depth=1)
    images = tf.constant(np.random.default_rng(3).random((2, 32, 32, 1), dtype=np.float32))

    @tf.function(jit_compile=True)
    def gradients(x):
        with tf.GradientTape() as tape:
            loss = HybridLoss()(tf.ones_like(x), model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    assert all(np.all(np.isfinite(g.numpy())) for g in gradients(images))


# --------------------------------------------------------------------------------------------- attention


def test_plain_unet_has_no_attention():
    assert attention_layer_names(_model("unet")) == []


@pytest.mark.parametrize(("size", "depth"), [(32, 2), (64, 3)])
def test_attention_maps(size, depth):
    model = _model("attention_res_unet", size, depth)
    names = attention_layer_names(model)
    assert names == [f"attention_gate_{level}" for level in range(1, depth + 1)]
    images = np.random.default_rng(1).random((2, size, size, 1), dtype=np.float32)
    for level, gate in enumerate(_attention_maps(model, images), start=1):
        # the coefficients live on the gating signal's grid: half the skip's resolution
        side = size // 2**level
        assert gate.shape == (2, side, side, 1)
        assert np.all((gate > 0) & (gate < 1))


def test_gate_rescales_the_skip():
    model = _model("attention_res_unet", 32, depth=2)
    probe = keras.Model(
        model.input,
        [
            model.get_layer("enc1_relu").output,  # the level-1 skip x
            model.get_layer("attention_gate_1").output,  # alpha, 16x16
            model.get_layer("attention_gate_1_multiply").output,
        ],
    )
    images = np.random.default_rng(2).random((1, 32, 32, 1), dtype=np.float32)
    skip, alpha, gated = (keras.ops.convert_to_numpy(t) for t in probe(images, training=False))
    up = keras.ops.convert_to_numpy(keras.ops.image.resize(alpha, (32, 32), interpolation="bilinear"))
    assert gated.shape == skip.shape == (1, 32, 32, 4)
    np.testing.assert_allclose(gated, skip * up, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------- training, saving


@pytest.mark.parametrize("name", SEGMENTATION_MODELS)
def test_training_then_save_load_round_trip(name, tmp_path):
    # depth 1 (one gate): tracing the train step dominates this file's time and grows with the graph
    keras.utils.set_random_seed(0)
    model = _model(name, 32, depth=1, dropout=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=HybridLoss(lam=0.7))
    images, masks = _squares(8, 32)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(images, masks, batch_size=8, epochs=3, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # one full batch, three Adam steps
    changed = [not np.array_equal(b, w) for b, w in zip(before, model.trainable_weights, strict=True)]
    assert all(changed)

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the loss is registered
    np.testing.assert_array_equal(  # the trained weights and batch-norm statistics came back
        keras.ops.convert_to_numpy(loaded(images, training=False)),
        keras.ops.convert_to_numpy(model(images, training=False)),
    )
    assert attention_layer_names(loaded) == attention_layer_names(model)
    assert isinstance(loaded.loss, HybridLoss) and loaded.loss.lam == 0.7


# ------------------------------------------------------------------------------------------------ config


def test_indivisible_input():
    config = SegmentationModelConfig(name="unet")
    message = r"input_shape: 100x100 is not divisible by 2\*\*4 = 16 \(model\.depth 4\)"
    with pytest.raises(ConfigError, match=message):
        build_segmenter(config, (100, 100, 1))
    with pytest.raises(ConfigError, match=r"input_shape: 64x36 is not divisible by 2\*\*3 = 8"):
        build_segmenter(SegmentationModelConfig(name="unet", depth=3), (64, 36, 1))
    with pytest.raises(ConfigError, match="input_shape"):
        build_segmenter(config, (64, 64))
    with pytest.raises(ConfigError, match="'custom_cnn' is not a segmentation model"):
        build_segmenter(CustomCNNConfig(), (64, 64, 1))
    assert build_segmenter({"name": "unet", "depth": 2, "filters": 2}, (8, 8, 1)).output.shape == (
        None,
        8,
        8,
        1,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vnet"}, r"model\.name: 'vnet' is not a segmentation model"),
        ({"name": "unet", "depth": 0}, r"model\.depth: 0 must be an integer >= 1"),
        ({"name": "unet", "depth": 2.0}, r"model\.depth"),
        ({"name": "unet", "filters": 0}, r"model\.filters: 0"),
        ({"name": "unet", "dropout": 1.0}, r"model\.dropout: 1\.0 must be a number in \[0, 1\)"),
        ({"name": "unet", "dropout": -0.1}, r"model\.dropout"),
        ({"name": "unet", "batch_norm": "yes"}, r"model\.batch_norm"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SegmentationModelConfig(**kwargs)
