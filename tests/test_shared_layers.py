"""Shared layers: GeM pooling (numerics against average/max pooling, gradient to p, mixed precision, config
and .keras round trips), SE and ECA channel attention (per-channel scaling against NumPy references,
parameter counts, ECA's kernel size) and ResNet-D blocks (shapes, shortcuts, names, parameter counts), and
one training step of each. Tiny tensors so the file runs in seconds on a CPU."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.layers.channel_attention import (
    eca_kernel_size,
    efficient_channel_attention,
    squeeze_excitation,
)
from lungnet.models.layers.pooling import GeneralizedMeanPooling2D
from lungnet.models.layers.resnet import (
    resnet_d_basic_block,
    resnet_d_bottleneck_block,
    resnet_d_stem,
)


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends under the float32 policy (the mixed-precision test sets its own)."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _positive(shape, seed: int = 0, low: float = 0.1, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype("float32")


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _block_model(build, shape, **kwargs) -> keras.Model:
    inputs = keras.Input(shape, name="image")
    return keras.Model(inputs, build(inputs, **kwargs))


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------------------------------------ GeM


def test_gem_p1_equals_global_average_pooling():
    x = _positive((2, 5, 4, 3))
    gem = GeneralizedMeanPooling2D(p=1.0)(x)
    gap = layers.GlobalAveragePooling2D()(x)
    assert gem.shape == (2, 3)
    np.testing.assert_allclose(_np(gem), _np(gap), rtol=1e-5, atol=1e-7)


def test_gem_matches_formula_with_fixed_p_and_clips_at_epsilon():
    x = _positive((2, 4, 4, 3), seed=1)
    x[0, 0, 0, 0] = -5.0  # clipped to epsilon: contributes ~0 to the mean, not a negative power
    layer = GeneralizedMeanPooling2D(p=3.0, trainable_p=False, epsilon=1e-6)
    out = _np(layer(x))
    assert layer.weights == []
    expected = np.mean(np.maximum(x, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_gem_approaches_global_max_pooling_as_p_grows():
    x = _positive((2, 4, 4, 3), seed=2)  # in [0.1, 1]: x**64 stays a normal float32
    n = 4 * 4
    gap, gmp = x.mean(axis=(1, 2)), x.max(axis=(1, 2))
    previous = gap
    for p in (1.0, 4.0, 16.0, 64.0):
        gem = _np(GeneralizedMeanPooling2D(p=p, trainable_p=False)(x))
        # power-mean inequalities: mean <= M_p <= max, M_p grows with p, and M_p >= max * n**(-1/p)
        assert np.all(gem >= previous * (1 - 1e-5))
        assert np.all(gem <= gmp * (1 + 1e-5))
        assert np.all(gem >= gmp * n ** (-1 / p) * (1 - 1e-5))
        previous = gem
    np.testing.assert_allclose(previous, gmp, rtol=1 - n ** (-1 / 64))  # within 4.2 % at p = 64
    assert not np.allclose(_np(GeneralizedMeanPooling2D(p=1.0)(x)), gmp, rtol=0.05)


def test_gem_gradient_flows_to_p_and_matches_finite_differences():
    x = tf.constant(_positive((2, 3, 3, 4), seed=3))
    layer = GeneralizedMeanPooling2D(p=3.0)
    layer.build(x.shape)
    assert [w.name for w in layer.trainable_weights] == ["p"]
    with tf.GradientTape() as tape:
        total = keras.ops.sum(layer(x))
    grad = float(tape.gradient(total, layer.p_weight))
    h = 1e-2
    layer.p_weight.assign(3.0 + h)
    up = float(keras.ops.sum(layer(x)))
    layer.p_weight.assign(3.0 - h)
    down = float(keras.ops.sum(layer(x)))
    assert grad > 0  # M_p grows with p for non-constant inputs
    np.testing.assert_allclose(grad, (up - down) / (2 * h), rtol=1e-2)


def test_gem_not_trainable_p_has_no_weights():
    model = _block_model(lambda t: GeneralizedMeanPooling2D(trainable_p=False)(t), (4, 4, 2))
    assert model.trainable_weights == [] and model.non_trainable_weights == []


@pytest.mark.parametrize("trainable_p", [True, False])
def test_gem_mixed_float16_computes_in_float32(trainable_p):
    keras.mixed_precision.set_global_policy("mixed_float16")
    # 100**3 = 1e6 overflows float16 (max 65504): a float16 computation would give inf
    x = 100.0 * _positive((2, 4, 4, 3), seed=4, low=0.5)
    layer = GeneralizedMeanPooling2D(p=3.0, trainable_p=trainable_p)
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    if trainable_p:
        assert keras.backend.standardize_dtype(layer.p_weight.dtype) == "float32"
    x16 = x.astype("float16").astype("float32")  # what the layer receives after autocasting
    expected = np.mean(x16**3, axis=(1, 2)) ** (1 / 3)
    assert np.all(np.isfinite(_np(out)))
    np.testing.assert_allclose(_np(out).astype("float32"), expected, rtol=2e-3)
    if not trainable_p:
        return
    # a functional model's output under the policy is float16 too, and p gets a float32 gradient
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, GeneralizedMeanPooling2D(name="gem")(inputs))
    with tf.GradientTape() as tape:
        y = model(x)
        total = keras.ops.sum(keras.ops.cast(y, "float32"))
    grad = tape.gradient(total, model.get_layer("gem").p_weight)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert grad.dtype == tf.float32 and np.isfinite(float(grad))


def test_gem_get_config_round_trip():
    layer = GeneralizedMeanPooling2D(p=2.5, trainable_p=False, epsilon=1e-5, name="gem")
    config = layer.get_config()
    assert (config["p"], config["trainable_p"], config["epsilon"]) == (2.5, False, 1e-5)
    again = GeneralizedMeanPooling2D.from_config(config)
    assert again.get_config() == config
    # registered under "lungnet": generic deserialisation finds the class without custom_objects
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is GeneralizedMeanPooling2D and restored.get_config() == config


def test_gem_keras_file_round_trip_gives_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = GeneralizedMeanPooling2D(name="gem")(x)
    model = keras.Model(inputs, layers.Dense(2, name="head")(x))
    model.get_layer("gem").p_weight.assign(2.25)  # a "learned" p, not the initial value
    images = _positive((3, 8, 8, 3), seed=5)
    path = tmp_path / "gem.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    gem = loaded.get_layer("gem")
    assert type(gem) is GeneralizedMeanPooling2D
    assert float(gem.p_weight.numpy()) == 2.25
    np.testing.assert_array_equal(
        _np(loaded.predict(images, verbose=0)), _np(model.predict(images, verbose=0))
    )


@pytest.mark.parametrize("p", [0, 0.0, -1.0, float("nan"), float("inf"), "3", True])
def test_gem_bad_p_raises_config_error(p):
    with pytest.raises(ConfigError, match=r"p .* must be a finite number > 0"):
        GeneralizedMeanPooling2D(p=p)


@pytest.mark.parametrize("epsilon", [0.0, -1e-6])
def test_gem_bad_epsilon_raises_config_error(epsilon):
    with pytest.raises(ConfigError, match=f"epsilon {epsilon!r}"):
        GeneralizedMeanPooling2D(epsilon=epsilon)


def test_gem_rejects_non_4d_input():
    with pytest.raises(ConfigError, match=r"\[B, H, W, C\]"):
        GeneralizedMeanPooling2D()(np.ones((2, 4, 3), "float32"))


# ------------------------------------------------------------------------------- channel attention


def _check_per_channel_scaling(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Asserts ``model(x) == x * s`` with ``s`` ``[B, 1, 1, C]`` in (0, 1); returns ``s``."""
    out = _np(model(x))
    assert out.shape == x.shape
    ratio = out / x
    scale = ratio[:, :1, :1, :]
    np.testing.assert_allclose(ratio, np.broadcast_to(scale, ratio.shape), rtol=1e-5)
    assert np.all(scale > 0) and np.all(scale < 1)
    return scale


def test_squeeze_excitation_scales_channels_as_the_reference():
    keras.utils.set_random_seed(0)
    x = _positive((2, 5, 6, 32), seed=6, low=0.5, high=1.5)
    model = _block_model(squeeze_excitation, (5, 6, 32), name="se", ratio=8)
    scale = _check_per_channel_scaling(model, x)
    w1, b1 = model.get_layer("se_reduce").get_weights()
    w2, b2 = model.get_layer("se_expand").get_weights()
    expected = _sigmoid(np.maximum(x.mean(axis=(1, 2)) @ w1 + b1, 0) @ w2 + b2)
    np.testing.assert_allclose(scale[:, 0, 0, :], expected, rtol=1e-5)
    assert scale.std(axis=-1).min() > 0  # the factors really differ between channels


@pytest.mark.parametrize(("channels", "ratio", "hidden"), [(32, 8, 4), (64, 16, 4), (8, 16, 1), (3, 1, 3)])
def test_squeeze_excitation_parameter_count(channels, ratio, hidden):
    model = _block_model(squeeze_excitation, (4, 4, channels), name="se", ratio=ratio)
    assert model.get_layer("se_reduce").units == hidden
    assert model.count_params() == channels * hidden + hidden + hidden * channels + channels
    assert model.non_trainable_weights == []


def test_eca_scales_channels_as_the_reference():
    keras.utils.set_random_seed(0)
    x = _positive((2, 4, 5, 64), seed=7, low=0.5, high=1.5)
    model = _block_model(efficient_channel_attention, (4, 5, 64), name="eca")
    conv = model.get_layer("eca_conv")
    kernel = np.array([0.9, -0.6, 1.4], "float32")  # asymmetric: catches a flipped or shifted kernel
    conv.set_weights([kernel.reshape(3, 1, 1)])
    scale = _check_per_channel_scaling(model, x)
    g = np.pad(x.mean(axis=(1, 2)), ((0, 0), (1, 1)))  # zero "same" padding over the channel axis
    expected = _sigmoid(sum(kernel[j] * g[:, j : j + 64] for j in range(3)))
    np.testing.assert_allclose(scale[:, 0, 0, :], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("channels", "kernel_size", "k"), [(64, None, 3), (256, None, 5), (16, 7, 7), (8, 1, 1)]
)
def test_eca_parameter_count_is_k(channels, kernel_size, k):
    model = _block_model(efficient_channel_attention, (2, 2, channels), name="eca", kernel_size=kernel_size)
    conv = model.get_layer("eca_conv")
    assert conv.kernel_size == (k,) and conv.use_bias is False and conv.padding == "same"
    assert model.count_params() == k


@pytest.mark.parametrize(
    # k = t if t is odd else t + 1, t = int(|log2(C) / gamma + b / gamma|):
    # C=64: (6+1)/2 = 3.5 -> 3; 256: 4.5 -> 4 -> 5; 512: 5.0 -> 5; 1024: 5.5 -> 5; 2048: 6 -> 7; 1: 0 -> 1
    ("channels", "gamma", "b", "k"),
    [
        (64, 2, 1, 3),
        (256, 2, 1, 5),
        (512, 2, 1, 5),
        (1024, 2, 1, 5),
        (2048, 2, 1, 7),
        (1, 2, 1, 1),
        (64, 1, 1, 7),
    ],
)
def test_eca_kernel_size_known_values(channels, gamma, b, k):
    assert eca_kernel_size(channels, gamma, b) == k
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    assert k == (t if t % 2 else t + 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: eca_kernel_size(0), "channels 0"),
        (lambda: eca_kernel_size(64, gamma=0), "gamma 0"),
        (lambda: efficient_channel_attention(keras.Input((4, 4, 8)), "eca", kernel_size=4), "kernel_size 4"),
        (lambda: efficient_channel_attention(keras.Input((4, 4, 8)), "eca", kernel_size=0), "kernel_size 0"),
        (lambda: squeeze_excitation(keras.Input((4, 4, 8)), "se", ratio=0), "ratio 0"),
        (lambda: squeeze_excitation(keras.Input((4, 8)), "se"), r"\[B, H, W, C\]"),
    ],
)
def test_channel_attention_bad_arguments_raise_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# ------------------------------------------------------------------------------------------- ResNet-D


@pytest.mark.parametrize(
    ("shape", "filters", "stride", "out"),
    [
        ((8, 8, 16), 16, 1, (8, 8, 16)),  # identity shortcut
        ((8, 8, 8), 16, 1, (8, 8, 16)),  # channel change: 1x1 conv shortcut
        ((8, 8, 16), 16, 2, (4, 4, 16)),  # stride 2, same channels: pool + 1x1 conv shortcut
        ((9, 9, 8), 16, 2, (5, 5, 16)),  # odd side: both branches give ceil(9 / 2)
    ],
)
def test_basic_block_shapes(shape, filters, stride, out):
    model = _block_model(resnet_d_basic_block, shape, filters=filters, stride=stride, name="b")
    assert model.output.shape == (None, *out)
    names = {layer.name for layer in model.layers}
    assert ("b_shortcut_conv" in names) == (shape[-1] != filters or stride == 2)
    assert ("b_shortcut_pool" in names) == (stride == 2)


@pytest.mark.parametrize(
    ("shape", "filters", "stride", "expansion", "out"),
    [
        ((8, 8, 32), 8, 1, 4, (8, 8, 32)),  # identity shortcut
        ((8, 8, 16), 8, 1, 4, (8, 8, 32)),
        ((8, 8, 16), 8, 2, 4, (4, 4, 32)),
        ((9, 9, 16), 8, 2, 2, (5, 5, 16)),
    ],
)
def test_bottleneck_block_shapes(shape, filters, stride, expansion, out):
    model = _block_model(
        resnet_d_bottleneck_block, shape, filters=filters, stride=stride, name="b", expansion=expansion
    )
    assert model.output.shape == (None, *out)
    names = {layer.name for layer in model.layers}
    assert ("b_shortcut_conv" in names) == (shape[-1] != filters * expansion or stride == 2)
    # ResNet-B: the stride sits in the 3x3 conv, the 1x1 convs never stride
    assert model.get_layer("b_conv1").strides == (1, 1)
    assert model.get_layer("b_conv2").strides == (stride, stride)
    assert model.get_layer("b_conv2").kernel_size == (3, 3)
    assert model.get_layer("b_conv3").strides == (1, 1)


@pytest.mark.parametrize("block", [resnet_d_basic_block, resnet_d_bottleneck_block])
def test_stride2_shortcut_is_average_pool_then_1x1_conv(block):
    model = _block_model(block, (8, 8, 8), filters=8, stride=2, name="down")
    pool = model.get_layer("down_shortcut_pool")
    assert isinstance(pool, layers.AveragePooling2D)
    assert (pool.pool_size, pool.strides, pool.padding) == ((2, 2), (2, 2), "same")
    conv = model.get_layer("down_shortcut_conv")
    assert (conv.kernel_size, conv.strides, conv.use_bias) == ((1, 1), (1, 1), False)
    assert isinstance(model.get_layer("down_shortcut_bn"), layers.BatchNormalization)
    # the pool feeds the conv directly (ResNet-D), not a strided conv on the block input
    assert conv.input is pool.output


def test_blocks_use_bias_free_convs_and_bn_momentum_0_9():
    inputs = keras.Input((16, 16, 3))
    x = resnet_d_stem(inputs, "stem", filters=(4, 4, 8))
    x = resnet_d_basic_block(x, 16, 2, "basic")
    x = resnet_d_bottleneck_block(x, 4, 1, "neck")
    model = keras.Model(inputs, x)
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    assert len(convs) == len(bns) == 3 + 3 + 3  # stem, basic (with shortcut conv), bottleneck (identity)
    assert all(not layer.use_bias for layer in convs)
    assert all(layer.momentum == 0.9 for layer in bns)


def test_stem_divides_the_side_by_four():
    model = _block_model(resnet_d_stem, (32, 32, 1), name="stem")
    assert model.output.shape == (None, 8, 8, 64)
    assert [model.get_layer(f"stem_conv{i}").filters for i in (1, 2, 3)] == [32, 32, 64]
    assert [model.get_layer(f"stem_conv{i}").strides for i in (1, 2, 3)] == [(2, 2), (1, 1), (1, 1)]
    pool = model.get_layer("stem_pool")
    assert isinstance(pool, layers.MaxPooling2D)
    assert (pool.pool_size, pool.strides, pool.padding) == ((3, 3), (2, 2), "same")
    odd = _block_model(resnet_d_stem, (33, 33, 3), name="stem", filters=(4, 4, 8))
    assert odd.output.shape == (None, 9, 9, 8)  # ceil(ceil(33 / 2) / 2)


@pytest.mark.parametrize("channels", [8, 16])
def test_basic_block_identity_parameter_count(channels):
    """Trainable: two 3x3 convs (9*C*C each, no bias) and two BNs (gamma, beta: 2*C each); the BNs' moving
    mean and variance (2*C each) are the non-trainable weights."""
    c = channels
    model = _block_model(resnet_d_basic_block, (6, 6, c), filters=c, stride=1, name="b")
    assert _count(model.trainable_weights) == 2 * (9 * c * c) + 2 * (2 * c)
    assert _count(model.non_trainable_weights) == 2 * (2 * c)
    assert model.count_params() == 2 * (9 * c * c) + 4 * (2 * c)


def test_blocks_make_a_flat_graph_with_prefixed_names():
    inputs = keras.Input((32, 32, 3), name="image")
    x = resnet_d_stem(inputs, "stem", filters=(4, 4, 8))
    x = resnet_d_basic_block(x, 8, 1, "res1")
    x = squeeze_excitation(x, "se1", ratio=4)
    x = resnet_d_bottleneck_block(x, 4, 2, "res2")
    x = efficient_channel_attention(x, "eca2")
    x = GeneralizedMeanPooling2D(name="gem")(x)
    model = keras.Model(inputs, x)
    prefixes = ("stem_", "res1_", "se1_", "res2_", "eca2_")
    inner = [layer for layer in model.layers if layer.name not in ("image", "gem")]
    assert all(layer.name.startswith(prefixes) for layer in inner)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.output.shape == (None, 16)
    assert isinstance(model.get_layer("res1_out"), layers.Activation)  # last_conv_layer_name can find it


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: resnet_d_basic_block(x, 8, 3, "b"), "stride 3"),
        (lambda x: resnet_d_basic_block(x, 0, 1, "b"), "filters 0"),
        (lambda x: resnet_d_bottleneck_block(x, 8, 2, "b", expansion=0), "expansion 0"),
        (lambda x: resnet_d_bottleneck_block(x, 8, True, "b"), "stride True"),
        (lambda x: resnet_d_stem(x, "s", filters=(8, 8)), r"filters \(8, 8\)"),
        (lambda x: resnet_d_stem(x, "s", filters=(8, 0, 8)), r"filters \(8, 0, 8\)"),
    ],
)
def test_resnet_bad_arguments_raise_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call(keras.Input((8, 8, 4)))


# ------------------------------------------------------------------------------------------- training

_HEADS = {
    "gem": lambda x: GeneralizedMeanPooling2D(name="gem")(layers.Conv2D(4, 3, name="pre_conv")(x)),
    "squeeze_excitation": lambda x: squeeze_excitation(x, "se", ratio=2),
    "efficient_channel_attention": lambda x: efficient_channel_attention(x, "eca"),
    "basic_block": lambda x: resnet_d_basic_block(x, 8, 2, "basic"),
    "bottleneck_block": lambda x: resnet_d_bottleneck_block(x, 4, 2, "neck"),
    "stem": lambda x: resnet_d_stem(x, "stem", filters=(4, 4, 8)),
}


@pytest.mark.parametrize("block", list(_HEADS))
def test_each_block_trains_one_step(block):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 4), name="image")
    x = _HEADS[block](inputs)
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="probabilities")(x))
    assert keras.mixed_precision.global_policy().name == "float32"
    # eager (tracing a tf.function costs more than one step of these tiny models), except for the custom
    # GeM layer, which must also work inside the compiled train step
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", run_eagerly=block != "gem"
    )
    before = {w.path: np.array(w.numpy()) for w in model.weights}
    images = _positive((4, 16, 16, 4), seed=8, low=0.0)
    labels = np.array([0, 1, 0, 1], "float32")
    history = model.fit(images, labels, batch_size=4, epochs=1, steps_per_epoch=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    unchanged = [w.path for w in model.trainable_weights if np.array_equal(before[w.path], w.numpy())]
    assert unchanged == []
    moved_stats = [w for w in model.non_trainable_weights if not np.array_equal(before[w.path], w.numpy())]
    assert len(moved_stats) == len(model.non_trainable_weights)  # BN moving statistics updated
