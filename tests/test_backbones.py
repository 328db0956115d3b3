"""The Inf-Net study's backbones: keras.applications ResNet50 / ResNet101 (caffe-style ImageNet input inside
the graph) and lungnet's Res2Net-50 v1b 26w x 4s. Pyramids at 64 px, the full Res2Net's parameter count
against the reference's, the input preprocessing against Keras's own, padding that matches the reference,
cheap round trips of the new layers (the full models' round trips are slow tests of the zoo harness), and the
weights option. No test touches the network."""

from __future__ import annotations

import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from keras.src.utils import file_utils

from lungnet.errors import ConfigError
from lungnet.models import (
    BACKBONE_INPUT_NAME,
    CLASSIFIERS,
    ENCODERS,
    WeightsError,
    WeightsUnavailableError,
    build_classifier,
    build_encoder,
)
from lungnet.models.encoders import pretrained_encoder_names
from lungnet.models.encoders.applications import BASES
from lungnet.models.layers.imagenet_input import CaffePreprocessing
from lungnet.models.layers.res2net import ChannelSplit, res2net_bottleneck_block, symmetric_conv
from lungnet.models.layers.resnet import resnet_d_shortcut
from lungnet.models.weights import save_encoder_weights

SIZE = 64
CHANNELS = {"P1": 64, "P2": 256, "P3": 512, "P4": 1024, "P5": 2048}  # all three backbones
TINY_RES2NET = {"name": "res2net50", "weights": None, "layers": [1, 1, 1, 1]}

# Res2Net-50 v1b 26w x 4s by hand, as the reference counts (conv weights, BN gamma and beta; no biases).
STEM_V1B = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)  # 28,768
STEM_7X7 = 3 * 64 * 49 + 2 * 64  # Res2Net v1's single 7x7 conv: 9,536
FC = 2048 * 1000 + 1000


def _reference_body() -> int:
    total, inplanes = 0, 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        width = planes * 26 // 64
        for block in range(blocks):
            total += inplanes * 4 * width + 2 * 4 * width  # 1x1 reduce + BN
            total += 3 * (9 * width * width + 2 * width)  # three 3x3 group convs + BN
            total += 4 * width * 4 * planes + 2 * 4 * planes  # 1x1 expand + BN
            if block == 0:  # ResNet-D shortcut: (pool) 1x1 conv + BN
                total += inplanes * 4 * planes + 2 * 4 * planes
            inplanes = 4 * planes
    return total


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def _numpy(value) -> np.ndarray:
    return keras.ops.convert_to_numpy(value)


@pytest.fixture(scope="module")
def encoders() -> dict[str, keras.Model]:
    return {
        name: build_encoder({"name": name, "weights": None}, (SIZE, SIZE, 3))
        for name in ("resnet50", "resnet101", "res2net50")
    }


# ------------------------------------------------------------------------------------------- pyramids


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "res2net50"])
def test_pyramid_keys_strides_and_channels(encoders, name):
    encoder = encoders[name]
    config = ENCODERS.parse({"name": name, "weights": None})
    assert ENCODERS.get(name).pyramid_keys(config) == tuple(CHANNELS)
    pyramid = encoder(_images(1, SIZE))
    assert list(pyramid) == list(CHANNELS)
    for level, (key, channels) in enumerate(CHANNELS.items(), start=1):
        assert tuple(pyramid[key].shape) == (1, SIZE // 2**level, SIZE // 2**level, channels)
    assert encoder.layers[1].name == BACKBONE_INPUT_NAME
    explained = encoder.get_layer(ENCODERS.get(name).explanation_layer(config))
    assert explained.output.shape[1:] == (SIZE // 32, SIZE // 32, 2048)
    assert name in pretrained_encoder_names() and name in CLASSIFIERS  # hence classifiers and pretraining


def test_resnet_stage_layers_and_parameter_counts(encoders):
    assert encoders["resnet50"].count_params() == 23_587_712  # DESIGN.md: 23.59 M
    assert encoders["resnet101"].count_params() == 42_658_176  # 42.66 M
    assert encoders["resnet101"].get_layer("conv4_block23_out") is not None


def test_res2net50_parameter_count_matches_the_reference(encoders):
    encoder = encoders["res2net50"]
    trainable = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    assert trainable == STEM_V1B + _reference_body() == 23_669_352
    # + the BN moving statistics, which Keras counts as (non-trainable) weights
    assert encoder.count_params() == 23_728_972
    # The published 25.70 M (Res2Net-50 26w x 4s with its fc) has v1's 7x7 stem; v1b's deep stem adds 19,232.
    assert round((STEM_7X7 + _reference_body() + FC) / 1e6, 2) == 25.70
    assert trainable + FC == 25_718_352


def test_res2net_block_structure():
    encoder = build_encoder({**TINY_RES2NET, "layers": [1, 2, 1, 1]}, (32, 32, 3))
    names = {layer.name for layer in encoder.layers}
    # a stage's first block: no hierarchy, the last group average-pooled; later blocks: group g adds g - 1
    assert "res2net_stage2_block1_pass_pool" in names and "res2net_stage2_block2_pass_pool" not in names
    assert "res2net_stage2_block1_group2_add" not in names
    assert {"res2net_stage2_block2_group2_add", "res2net_stage2_block2_group3_add"} <= names
    assert "res2net_stage2_block2_group4_conv" not in names  # scale 4: three convs, one group passes
    assert encoder.get_layer("res2net_stage2_block1_group1_conv").kernel.shape == (3, 3, 52, 52)
    assert encoder.get_layer("res2net_stage3_block1_reduce_conv").kernel.shape == (1, 1, 512, 4 * 104)
    # ResNet-D shortcut: 1x1 conv (+ pool from stage 2 on), identity within a stage
    assert (
        "res2net_stage1_block1_shortcut_conv" in names and "res2net_stage1_block1_shortcut_pool" not in names
    )
    assert (
        "res2net_stage2_block1_shortcut_pool" in names and "res2net_stage2_block2_shortcut_conv" not in names
    )


@pytest.mark.parametrize("side", [33, 50])
def test_res2net_odd_and_uneven_sides_give_ceil_sizes(side):
    pyramid = build_encoder(TINY_RES2NET, (side, side, 1))(_images(1, side, 1))
    expected = side
    for key in CHANNELS:
        expected = -(-expected // 2)
        assert pyramid[key].shape[1:3] == (expected, expected)


# ------------------------------------------------------------------------------------------- input scaling


def test_resnet_backbone_input_is_keras_caffe_preprocessing(encoders):
    assert {name: base.preprocessing for name, base in BASES.items()} == {
        "efficientnet_b2": "builtin",
        "efficientnet_b3": "builtin",
        "resnet50": "caffe",
        "resnet101": "caffe",
    }
    encoder = encoders["resnet50"]
    scale = keras.Model(encoder.input, encoder.get_layer(BACKBONE_INPUT_NAME).output)
    x = _images(2, SIZE)
    expected = keras.applications.resnet.preprocess_input(255.0 * x.copy())
    np.testing.assert_allclose(_numpy(scale(x)), expected, rtol=1e-6, atol=1e-4)


def test_efficientnet_backbone_input_is_still_a_rescaling():
    layer = BASES["efficientnet_b2"].input_layer()  # the base normalises 0-255 pixels itself
    assert isinstance(layer, layers.Rescaling) and layer.scale == 255.0 and layer.name == BACKBONE_INPUT_NAME


def test_caffe_preprocessing_of_grey_images_and_its_round_trips(tmp_path):
    x = _images(2, 8, 1)
    grey = CaffePreprocessing()(x)
    np.testing.assert_allclose(_numpy(grey), 255.0 * x - (103.939 + 116.779 + 123.68) / 3, atol=1e-4)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, layers.Conv2D(2, 1)(CaffePreprocessing(name="caffe")(inputs)))
    _assert_round_trips(model, _images(2, 8), tmp_path)


def test_res2net_input_is_imagenet_standardised():
    encoder = build_encoder(TINY_RES2NET, (32, 32, 3))
    standardise = keras.Model(encoder.input, encoder.get_layer(BACKBONE_INPUT_NAME).output)
    x = _images(1, 32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(_numpy(standardise(x)), (x - mean) / std, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- the reference's padding


def _one_layer(fn, shape) -> keras.Model:
    inputs = keras.Input(shape)
    return keras.Model(inputs, fn(inputs))


def test_strided_convs_pad_every_side_as_the_reference():
    model = _one_layer(lambda x: symmetric_conv(x, 1, 3, 2, "c"), (4, 4, 1))
    model.get_layer("c").set_weights([np.ones((3, 3, 1, 1), "float32")])
    x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    # PyTorch padding=1, stride 2: windows centred on rows/columns 0 and 2 (Keras "same" would use 1 and 3)
    expected = [[x[0, 0:2, 0:2].sum(), x[0, 0:2, 1:4].sum()], [x[0, 1:4, 0:2].sum(), x[0, 1:4, 1:4].sum()]]
    np.testing.assert_allclose(_numpy(model(x))[0, :, :, 0], expected)


def test_stage_pool_counts_padding_and_shortcut_pool_does_not():
    block = _one_layer(
        lambda x: res2net_bottleneck_block(x, 8, 2, "b", first=True, base_width=64, scale=2), (4, 4, 4)
    )
    pooled = keras.Model(block.input, block.get_layer("b_pass_pool").output)
    split = keras.Model(block.input, block.get_layer("b_split").output[-1])
    x = _images(1, 4, 4)
    last = _numpy(split(x))[0]  # the pass-through group, [4, 4, 8]
    # top-left output: the 2x2 corner of the image over the 3x3 window (the reference's count_include_pad)
    np.testing.assert_allclose(_numpy(pooled(x))[0, 0, 0], last[0:2, 0:2].sum(axis=(0, 1)) / 9, rtol=1e-5)
    odd = _one_layer(lambda x: resnet_d_shortcut(x, 2, 2, "s"), (3, 3, 1))
    pool = keras.Model(odd.input, odd.get_layer("s_shortcut_pool").output)
    np.testing.assert_allclose(_numpy(pool(np.ones((1, 3, 3, 1), "float32"))), np.ones((1, 2, 2, 1)))


def test_channel_split():
    x = _images(1, 2, 6)
    parts = ChannelSplit(3)(x)
    assert len(parts) == 3
    np.testing.assert_array_equal(np.concatenate([_numpy(p) for p in parts], axis=-1), x)
    with pytest.raises(ConfigError, match="groups"):
        ChannelSplit(0)


def test_res2net_blocks_round_trip(tmp_path):
    """Every layer kind of the encoder, small (its full round trip is a slow test of the zoo harness)."""
    inputs = keras.Input((16, 16, 4))
    x = symmetric_conv(inputs, 8, 3, 2, "stem")
    x = layers.ZeroPadding2D(1)(x)
    x = res2net_bottleneck_block(x, 8, 2, "first", first=True)  # width 3 x 4 groups
    x = res2net_bottleneck_block(x, 8, 1, "next", first=False)
    _assert_round_trips(keras.Model(inputs, x), _images(2, 16, 4), tmp_path)


def _assert_round_trips(model: keras.Model, x: np.ndarray, tmp_path) -> None:
    """A .keras round trip and a SavedModel export (as lungnet.serving does) give the model's outputs."""
    expected = _numpy(model(x, training=False))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(_numpy(loaded(x, training=False)), expected, atol=1e-5)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda images: model(images, training=False),
        [tf.TensorSpec([None, *x.shape[1:]], tf.float32)],
    )
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------- weights


def test_res2net_imagenet_weights_are_unavailable_as_a_download_failure_is():
    with pytest.raises(
        WeightsUnavailableError, match=r"res2net50: .*no ImageNet weights.*model.weights: null"
    ):
        build_encoder({"name": "res2net50", "weights": "imagenet"}, (32, 32, 1))
    with pytest.raises(WeightsUnavailableError):  # the default, as a study builds it (its fallback applies)
        build_classifier({"name": "res2net50"}, (32, 32, 3), 2)


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"weights": "genesis"}, ConfigError, "lungnet pretrain --backbone res2net50"),
        ({"weights": "imagenett"}, ConfigError, r"'imagenett' must be 'imagenet' or 'genesis', null"),
        ({"weights": "/nowhere/r2n.weights.h5"}, WeightsError, r"/nowhere/r2n\.weights\.h5 does not exist"),
        ({"layers": [3, 4, 6]}, ConfigError, r"model\.layers: expected 4 values, got 3"),
        ({"layers": [1, 0, 1, 1]}, ConfigError, r"model\.layers: \(1, 0, 1, 1\) must be four integers >= 1"),
        ({"width": 26}, ConfigError, r"unknown key\(s\) \['width'\]"),
    ],
)
def test_res2net_config_and_weights_errors(config, error, message):
    with pytest.raises(error, match=message):
        build_encoder({**TINY_RES2NET, **config}, (32, 32, 3))


def test_res2net_loads_a_keras_weights_file(tmp_path):
    keras.utils.set_random_seed(1)
    source = build_encoder(TINY_RES2NET, (32, 32, 3))
    path = tmp_path / "r2n.weights.h5"
    source.save_weights(path)
    loaded = build_encoder({**TINY_RES2NET, "weights": str(path)}, (32, 32, 3))
    x = _images(1, 32, seed=2)
    np.testing.assert_allclose(_numpy(loaded(x)["P5"]), _numpy(source(x)["P5"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(WeightsError, match="does not hold weights of a Res2Net-50"):
        build_encoder({**TINY_RES2NET, "layers": [1, 1, 2, 1], "weights": str(path)}, (32, 32, 3))


def test_res2net_loads_a_self_supervised_encoder_file(tmp_path):
    keras.utils.set_random_seed(3)
    source = build_encoder(TINY_RES2NET, (32, 32, 1))
    path = save_encoder_weights(
        source,
        tmp_path / "genesis.h5",
        {"backbone": "res2net50", "input_shape": [32, 32, 1], "provenance": "x"},
    )
    loaded = build_encoder({**TINY_RES2NET, "weights": str(path)}, (32, 32, 1))  # grey: not ImageNet's
    x = _images(1, 32, 1)
    np.testing.assert_allclose(_numpy(loaded(x)["P4"]), _numpy(source(x)["P4"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(WeightsError, match="for input \\[32, 32, 1\\].*input \\[64, 64, 1\\]"):
        build_encoder({**TINY_RES2NET, "weights": str(path)}, (64, 64, 1))


def test_resnet_imagenet_download_is_the_keras_file_and_fails_clearly_offline(monkeypatch):
    requested = {}

    def offline_get_file(fname=None, origin=None, **kwargs):
        requested.update(fname=fname, origin=origin)
        try:
            raise urllib.error.URLError("no network")
        except urllib.error.URLError as exc:
            raise Exception(f"URL fetch failure on {origin}: None -- no network") from exc

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_encoder({"name": "resnet50", "weights": "imagenet"}, (32, 32, 3))
    base = BASES["resnet50"]
    assert requested == {"fname": base.weights_file, "origin": base.weights_url}
    message = str(caught.value)
    assert base.weights_url in message and "model.weights: null" in message
    # ResNet101's row follows the same keras-applications naming (not built here: 2-3 s)
    for name in ("resnet50", "resnet101"):
        assert BASES[name].weights_file == f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        assert BASES[name].weights_root == base.weights_root
