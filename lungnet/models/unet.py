"""Segmentation models of the attention-residual-U-Net study: a plain U-Net and an attention residual U-Net.

::

    image [H, W, C]
    encoder level l = 1..depth (F_l = filters * 2**(l-1), at H / 2**(l-1)):
        block -> skip_l -> 2x2 max-pool
    bottleneck: block with filters * 2**depth (H / 2**depth) -> spatial dropout (if > 0)
    decoder level l = depth..1:
        2x2 transposed conv, stride 2, F_l filters -> concat with skip_l (gated, attention U-Net) -> block
    logits: 1x1 conv, 1 channel -> probabilities: sigmoid in float32  [H, W, 1]

Blocks: ``unet`` uses two 3x3 conv + ReLU (``batch_norm: true`` adds a batch norm after each conv, as the
study's plain U-Net has none by default). ``attention_res_unet`` uses residual blocks, always with batch
norm: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus a 1x1 conv -> BN projection of the block input, added,
then ReLU. Both models up-sample with the same transposed convolution, so the comparison isolates the
residual blocks and the attention gates.

Attention gate (Oktay et al. 2018, additive, grid attention) on skip ``x`` (level l, ``F_l`` channels) with
gating signal ``g`` (the decoder output one level coarser, or the bottleneck; half the resolution of ``x``)::

    q     = ReLU(W_x * x + W_g * g + b)     W_x: 2x2 conv, stride 2, no bias   W_g: 1x1 conv with bias b
    alpha = sigmoid(psi * q + b_psi)        psi: 1x1 conv to 1 channel          (layer attention_gate_{l})
    x_hat = x * upsample_2x(alpha)          bilinear up-sampling back to x's resolution

``W_x`` down-samples ``x`` to ``g``'s grid (rather than up-sampling ``W_g * g`` to ``x``'s): the gate's
additions run at a quarter of the pixels, as in the paper's reference code. Its kernel is 2x2, not 1x1:
with stride 2 a 1x1 kernel would read one pixel of each 2x2 cell and ignore the other three (the reference
code also uses kernel = stride). The intermediate width is ``max(F_l // 2, 1)`` (the reference code's
``in_channels // 2``); the gated skip is ``x * alpha`` as in the paper's equations, without the reference
code's extra 1x1 conv + BN on it. So the coefficient map of level l, ``attention_gate_{l}``, is
``[B, H / 2**l, W / 2**l, 1]`` (float32, also under mixed precision); `attention_layer_names` lists these
layers for figures (``model.get_layer(name).output``).

All layers are built-in Keras layers, so ``model.save("x.keras")`` / ``keras.models.load_model`` need no
custom objects; batch norms use momentum 0.9, as `lungnet.models.blocks.conv_block` (short CPU runs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import keras
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.blocks import INPUT_NAME, OUTPUT_NAME

SEGMENTATION_MODELS = ("unet", "attention_res_unet")
SegmentationModelName = Literal["unet", "attention_res_unet"]
ATTENTION_PREFIX = "attention_gate_"
_ATTENTION_NAME = re.compile(rf"{ATTENTION_PREFIX}(\d+)")
_BN_MOMENTUM = 0.9  # see lungnet.models.blocks.conv_block

__all__ = [
    "SEGMENTATION_MODELS",
    "SegmentationModelConfig",
    "attention_layer_names",
    "build_segmentation_model",
]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SegmentationModelConfig:
    """One segmentation model (YAML: the ``model:`` mapping of a segmentation experiment).

    ``depth`` is the number of 2x down-samplings; ``filters`` the width of the top level, doubled per level
    down (the bottleneck has ``filters * 2**depth``). ``batch_norm`` applies to the plain U-Net only: the
    residual blocks of ``attention_res_unet`` always have batch norm. ``dropout`` is a spatial dropout rate
    at the bottleneck.
    """

    name: SegmentationModelName
    depth: int = 4
    filters: int = 32
    batch_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"model.{field}: {getattr(self, field)!r} {why}")

        if self.name not in SEGMENTATION_MODELS:
            raise bad("name", f"is not one of {list(SEGMENTATION_MODELS)}")
        if not _is_int(self.depth) or self.depth < 1:
            raise bad("depth", "must be an integer >= 1")
        if not _is_int(self.filters) or self.filters < 1:
            raise bad("filters", "must be an integer >= 1")
        if not isinstance(self.batch_norm, bool):
            raise bad("batch_norm", "must be true or false")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0 <= self.dropout < 1
        ):
            raise bad("dropout", "must be a number in [0, 1)")


def _conv_bn_relu(x, filters: int, name: str, batch_norm: bool, kernel_size: int = 3):
    # no bias before a batch norm: its offset replaces it
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _plain_block(x, filters: int, name: str, batch_norm: bool):
    """Two 3x3 conv (+ BN) + ReLU; layers ``{name}_1_conv``, ``{name}_1_relu``, ..."""
    x = _conv_bn_relu(x, filters, f"{name}_1", batch_norm)
    return _conv_bn_relu(x, filters, f"{name}_2", batch_norm)


def _residual_block(x, filters: int, name: str):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1 conv-BN projected shortcut, added, then ReLU."""
    shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_shortcut_conv")(x)
    shortcut = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_shortcut_bn")(shortcut)
    y = _conv_bn_relu(x, filters, f"{name}_1", batch_norm=True)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_relu")(y)


def _attention_gate(x, g, level: int):
    """``x * upsample(alpha)`` with alpha from the additive gate (see the module docstring)."""
    name = f"{ATTENTION_PREFIX}{level}"
    inter = max(x.shape[-1] // 2, 1)
    theta_x = layers.Conv2D(inter, 2, strides=2, use_bias=False, name=f"{name}_theta_x")(x)
    phi_g = layers.Conv2D(inter, 1, name=f"{name}_phi_g")(g)
    q = layers.Add(name=f"{name}_add")([theta_x, phi_g])
    q = layers.Activation("relu", name=f"{name}_relu")(q)
    psi = layers.Conv2D(1, 1, name=f"{name}_psi")(q)
    # alpha and its up-sampling in float32 under mixed precision: with XLA, the gradient of a float16 bilinear
    # resize comes out in float32 and compilation fails ("Seen floating point types of different precisions"
    # in SigmoidGrad; TF 2.21). Float32 maps are also exact for figures; the multiply casts back to float16.
    alpha = layers.Activation("sigmoid", dtype="float32", name=name)(psi)
    alpha = layers.UpSampling2D(2, interpolation="bilinear", dtype="float32", name=f"{name}_upsample")(alpha)
    # [B, h, w, F] * [B, h, w, 1]: the one coefficient per pixel broadcasts over the skip's channels
    return layers.Multiply(name=f"{name}_multiply")([x, alpha])


def _check_input_shape(input_shape, depth: int) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
        raise ConfigError(
            f"input_shape: {input_shape!r} must be three positive integers (height, width, channels)"
        )
    height, width = shape[:2]
    factor = 2**depth
    if height % factor or width % factor:
        raise ConfigError(
            f"input_shape: {height}x{width} is not divisible by 2**{depth} = {factor} (model.depth {depth})"
        )
    return shape


def build_segmentation_model(
    config: SegmentationModelConfig, input_shape: tuple[int, int, int] = (256, 256, 1)
) -> keras.Model:
    """A flat functional segmentation model for `config` (see the module docstring).

    Input ``image`` ``[B, H, W, C]`` (any C; H and W divisible by ``2**depth``); output ``probabilities``
    ``[B, H, W, 1]``, a sigmoid computed in float32 even under a mixed-precision policy.
    """
    if not isinstance(config, SegmentationModelConfig):
        raise ConfigError(f"model: expected a SegmentationModelConfig, got {type(config).__name__}")
    shape = _check_input_shape(input_shape, config.depth)
    attention = config.name == "attention_res_unet"

    def block(x, filters: int, name: str):
        if attention:
            return _residual_block(x, filters, name)
        return _plain_block(x, filters, name, config.batch_norm)

    inputs = keras.Input(shape=shape, name=INPUT_NAME)
    x = inputs
    skips = []
    for level in range(1, config.depth + 1):
        x = block(x, config.filters * 2 ** (level - 1), f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = block(x, config.filters * 2**config.depth, "bottleneck")
    if config.dropout > 0:
        x = layers.SpatialDropout2D(config.dropout, name="bottleneck_dropout")(x)
    for level in range(config.depth, 0, -1):
        filters = config.filters * 2 ** (level - 1)
        skip = skips[level - 1]
        if attention:
            skip = _attention_gate(skip, x, level)  # x: the coarser level's output, the gating signal
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = block(x, filters, f"dec{level}")
    logits = layers.Conv2D(1, 1, name="logits")(x)
    # float32 output: keeps the probabilities (and the loss) exact under a mixed-precision policy
    outputs = layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(logits)
    return keras.Model(inputs, outputs, name=config.name)


def attention_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers whose outputs are the attention coefficients, top level (level 1) first.

    Level l's map is ``[B, H / 2**l, W / 2**l, 1]``, float32 in (0, 1); empty for the plain U-Net. Read
    them with ``keras.Model(model.input, [model.get_layer(n).output for n in attention_layer_names(model)])``.
    """
    levels = []
    for layer in model.layers:
        match = _ATTENTION_NAME.fullmatch(layer.name)
        if match:
            levels.append((int(match.group(1)), layer.name))
    return [name for _, name in sorted(levels)]
