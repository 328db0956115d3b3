"""Res2Net-50 v1b 26w x 4s (Gao et al., TPAMI 2019), Inf-Net's encoder, as a feature-pyramid encoder.

::

    backbone_input: ImageNet mean / std of [0, 1] pixels (the reference's input; harmless from scratch)
    stem: 3x3 conv 32 (stride 2) -> 3x3 conv 32 -> 3x3 conv 64, each BN-ReLU       -> P1 (stride 2, 64)
    3x3 max-pool, stride 2
    stage k = 1..4: layers[k] Res2Net bottlenecks (`res2net_bottleneck_block`), planes 64 * 2**(k-1),
        width 26 * 2**(k-1) x 4 groups, stride 2 from stage 2 on              -> P2..P5 (256 .. 2048 ch)

v1b is the deep stem plus ResNet-D shortcuts (2x2 average pool, then a 1x1 conv + BN). At the default
``layers: [3, 4, 6, 3]`` the encoder has 23,669,352 trainable parameters (Keras's count, 23,728,972, adds
the batch norms' moving statistics, which PyTorch keeps as buffers). With the reference's 1000-class fc
(2,049,000) that is 25,718,352 (25.72 M); the 25.70 M quoted for Res2Net-50 26w x 4s is v1, whose single
7x7 stem conv has 19,232 fewer weights than v1b's three 3x3 convs. `tests/test_backbones.py` derives the
count by hand from the reference's layer sizes.

No ImageNet weights are available offline (the reference's are a PyTorch checkpoint), so ``weights:
imagenet`` raises `WeightsUnavailableError`, and a study's ``if_weights_unavailable`` decides. A Keras
weights file of this graph (``build_encoder(...).save_weights``, or one converted from the reference: the
padding matches it, see `lungnet.models.layers.res2net`) or a Models Genesis base loads like the others'.
Layers are named ``res2net_stem_*`` and ``res2net_stage{k}_block{j}_*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import BACKBONE_INPUT_NAME, Pyramid, check_input_shape, level_key
from lungnet.models.encoders.pretrained import PretrainedEncoderConfig, check_rgb
from lungnet.models.layers.conv import batch_norm
from lungnet.models.layers.imagenet_input import imagenet_standardization
from lungnet.models.layers.res2net import res2net_bottleneck_block, symmetric_conv
from lungnet.models.registry import ENCODERS
from lungnet.models.weights import (
    WeightsUnavailableError,
    check_encoder_weights_option,
    load_weights_file,
    weights_path,
)

PLANES = (64, 128, 256, 512)
BASE_WIDTH = 26
SCALE = 4
STEM_FILTERS = (32, 32, 64)
PREFIX = "res2net"
ARCHITECTURE = "a Res2Net-50 v1b 26w x 4s encoder"


@dataclass(frozen=True)
class Res2NetConfig(PretrainedEncoderConfig):
    """``layers``: bottleneck blocks per stage; ``[3, 4, 6, 3]`` is Res2Net-50 (fewer make a shallower
    Res2Net of the same widths, e.g. for tests); ``weights`` as for every pretrained encoder."""

    name: str = "res2net50"
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)

    def __post_init__(self) -> None:
        super().__post_init__()
        blocks = self.layers
        if (
            not isinstance(blocks, list | tuple)
            or len(blocks) != len(PLANES)
            or not all(is_int(n) and n >= 1 for n in blocks)
        ):
            raise ConfigError(f"model.layers: {blocks!r} must be four integers >= 1 (blocks per stage)")
        object.__setattr__(self, "layers", tuple(blocks))


def _last_block(config: Res2NetConfig) -> str:
    return f"{PREFIX}_stage4_block{config.layers[-1]}_out"


@ENCODERS.register(
    "res2net50",
    Res2NetConfig,
    family="res2net",
    description="Res2Net-50 v1b 26w x 4s (Inf-Net's encoder): deep stem, multi-scale bottlenecks; no ImageNet "
    "weights offline",
    explanation_layer=_last_block,
    input_scaling="[0, 1] (ImageNet mean/std inside)",
    pyramid_keys=lambda c: tuple(level_key(k) for k in range(1, 6)),
)
def build_res2net_encoder(config: Res2NetConfig, x) -> Pyramid:
    shape = check_input_shape(tuple(x.shape[1:]), minimum=32, what=config.name)
    if config.weights == "imagenet":  # before the channel check: no channel count would make it work
        raise WeightsUnavailableError(_unavailable_message(config.name))
    check_rgb(config.weights, shape[-1])
    check_encoder_weights_option(config.weights, config.name, shape)
    if config.weights is not None:
        weights_path(config.weights, ARCHITECTURE)  # fail before the build if the file is missing
    inputs = x
    x = imagenet_standardization(shape[-1], BACKBONE_INPUT_NAME)(x)
    pyramid = _res2net(x, config.layers)
    if config.weights is not None:
        # the layers joined the caller's graph; a model over them (from its inputs) is what loads the file
        sources = keras.utils.get_source_inputs(inputs)
        load_weights_file(keras.Model(sources, list(pyramid.values())), config.weights, ARCHITECTURE)
    return pyramid


def _res2net(x, blocks: tuple[int, ...]) -> Pyramid:
    for i, filters in enumerate(STEM_FILTERS, start=1):
        name = f"{PREFIX}_stem_{i}"
        x = symmetric_conv(x, filters, 3, 2 if i == 1 else 1, f"{name}_conv")
        x = batch_norm(f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    pyramid: Pyramid = {level_key(1): x}
    # zero padding is the reference's -inf padding here: the inputs are ReLU outputs, >= 0
    x = layers.ZeroPadding2D(1, name=f"{PREFIX}_stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name=f"{PREFIX}_stem_pool")(x)
    for stage, (planes, count) in enumerate(zip(PLANES, blocks, strict=True), start=1):
        for block in range(1, count + 1):
            x = res2net_bottleneck_block(
                x,
                planes,
                2 if stage > 1 and block == 1 else 1,
                f"{PREFIX}_stage{stage}_block{block}",
                first=block == 1,
                base_width=BASE_WIDTH,
                scale=SCALE,
            )
        pyramid[level_key(stage + 1)] = x
    return pyramid


def _unavailable_message(name: str) -> str:
    return (
        f"{name}: lungnet has no ImageNet weights for Res2Net-50 v1b 26w x 4s (the reference's are a PyTorch "
        "checkpoint; nothing can be downloaded through Keras). Set `model.weights: null` (random "
        "initialisation), `genesis` (a Models Genesis base self-supervised on the study's own CT), or a path to "
        "a weights file of this encoder (e.g. saved with `build_encoder(...).save_weights(path)`)"
    )
