"""Inf-Net's blocks (Fan et al., "Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT Images",
IEEE TMI 2020), from Keras layers: RFB-style channel reduction, the parallel partial decoder, reverse
attention, and a resize layer for the maps.

Sizes follow the paper's public reference code: every conv of these blocks is conv (no bias) + BN, without an
activation unless one is named; the RFB has four branches (1x1; then 1xk, kx1 and a 3x3 conv of dilation k
for k = 3, 5, 7) whose concatenation is fused by a 3x3 conv and added to a 1x1 projection of the input before
a ReLU. Maps (one channel) are resized in float32: a float16 bilinear gradient breaks XLA compilation under
mixed precision (see `lungnet.models.layers.attention`).
"""

from __future__ import annotations

import keras
from keras import layers

from lungnet.models.layers.conv import batch_norm

RFB_DILATIONS = (3, 5, 7)


def basic_conv(x, filters: int, kernel_size, name: str, dilation: int = 1, activation: str | None = None):
    """Conv2D (same padding, no bias) -> BN (-> `activation`); layers ``{name}_conv``, ``{name}_bn``."""
    x = layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv"
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def receptive_field_block(x, filters: int, name: str):
    """The RFB-style reduction of a backbone stage to `filters` channels (layer ``{name}_relu``)."""
    branches = [basic_conv(x, filters, 1, f"{name}_b0")]
    for i, k in enumerate(RFB_DILATIONS, start=1):
        b = basic_conv(x, filters, 1, f"{name}_b{i}_1")
        b = basic_conv(b, filters, (1, k), f"{name}_b{i}_2")
        b = basic_conv(b, filters, (k, 1), f"{name}_b{i}_3")
        branches.append(basic_conv(b, filters, 3, f"{name}_b{i}_4", dilation=k))
    fused = basic_conv(layers.Concatenate(name=f"{name}_concat")(branches), filters, 3, f"{name}_fuse")
    shortcut = basic_conv(x, filters, 1, f"{name}_shortcut")
    return layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([fused, shortcut]))


def _up_to(x, reference, name: str):
    """2x bilinear up-sampling, as the size of `reference`: unlike UpSampling2D, it also runs on batches whose
    size is only known at run time (multi-scale training)."""
    return ResizeTo(name=name)([x, reference])


def parallel_partial_decoder(deep, middle, shallow, name: str):
    """The PPD: the three reduced stages (strides 32, 16, 8; ``c`` channels each) combined into one logit map
    at the shallowest one's stride (layer ``{name}_logits``, float32).

    ``middle' = conv(up(deep)) * middle``, ``shallow' = conv(up(up(deep))) * conv(up(middle)) * shallow``;
    then ``m = conv(concat(middle', conv(up(deep))))`` and ``conv(concat(shallow', conv(up(m))))``, two
    3x3 convs, a 1x1 conv to one channel (with a bias: it is a logit).
    """
    c = int(deep.shape[-1])
    deep_up = _up_to(deep, middle, f"{name}_deep_up")
    deep_up2 = _up_to(deep_up, shallow, f"{name}_deep_up2")
    middle_gated = layers.Multiply(name=f"{name}_middle_gate")(
        [basic_conv(deep_up, c, 3, f"{name}_up1"), middle]
    )
    shallow_gated = layers.Multiply(name=f"{name}_shallow_gate")(
        [
            basic_conv(deep_up2, c, 3, f"{name}_up2"),
            basic_conv(_up_to(middle, shallow, f"{name}_middle_up"), c, 3, f"{name}_up3"),
            shallow,
        ]
    )
    m = layers.Concatenate(name=f"{name}_concat2")([middle_gated, basic_conv(deep_up, c, 3, f"{name}_up4")])
    m = basic_conv(m, 2 * c, 3, f"{name}_concat2_fuse")
    s = basic_conv(_up_to(m, shallow, f"{name}_concat2_up"), 2 * c, 3, f"{name}_up5")
    s = basic_conv(
        layers.Concatenate(name=f"{name}_concat3")([shallow_gated, s]), 3 * c, 3, f"{name}_concat3_fuse"
    )
    s = basic_conv(s, 3 * c, 3, f"{name}_conv4")
    return layers.Conv2D(1, 1, dtype="float32", name=f"{name}_logits")(s)


def reverse_attention(
    features, previous_logits, edge, *, width: int, convs: int, kernel_size: int, final_kernel: int, name: str
):
    """One RA module: weight the stage's `features` by ``1 - sigmoid(previous map)`` (layer
    ``{name}_weights``), reduce them by a 1x1 conv to `width`, concatenate the edge features (already at this
    stride), refine with `convs` convs of `kernel_size` (ReLU), map to one channel (conv + BN, as the
    reference does) and add that to the previous map: a residual (layer ``{name}_logits``, float32)."""
    reverse = layers.Activation("sigmoid", dtype="float32", name=f"{name}_sigmoid")(previous_logits)
    reverse = layers.Rescaling(-1.0, offset=1.0, dtype="float32", name=f"{name}_weights")(reverse)
    x = layers.Multiply(name=f"{name}_reverse")([features, reverse])  # [B,h,w,C] * [B,h,w,1]
    x = basic_conv(x, width, 1, f"{name}_reduce")
    x = layers.Concatenate(name=f"{name}_with_edge")([x, edge])
    for i in range(1, convs + 1):
        x = basic_conv(x, width, kernel_size, f"{name}_conv{i}", activation="relu")
    residual = basic_conv(x, 1, final_kernel, f"{name}_residual")
    return layers.Add(dtype="float32", name=f"{name}_logits")([residual, previous_logits])


@keras.saving.register_keras_serializable(package="lungnet")
class ResizeTo(layers.Layer):
    """Bilinear resize of ``[B, H, W, C]`` to the spatial size of a reference tensor (half-pixel centres, no
    antialiasing: what the reference code's ``F.interpolate(..., mode='bilinear')`` does when it shrinks)."""

    def call(self, inputs):
        x, reference = inputs
        size = keras.ops.shape(reference)[1:3]
        if all(isinstance(s, int) for s in size):
            return keras.ops.image.resize(x, size, interpolation="bilinear", antialias=False)
        # a size known only at run time (a TensorFlow graph of multi-scale training): keras.ops.image.resize
        # compares it with 0 in Python, so go to the backend's own resize, which that op calls after the check
        # (JAX always has static sizes and never reaches this line)
        from keras.src.backend import image as backend_image

        return keras.ops.cast(
            backend_image.resize(x, size, interpolation="bilinear", antialias=False), x.dtype
        )

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])
