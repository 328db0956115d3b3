"""The additive attention gate (Oktay et al., "Attention U-Net", MIDL 2018), grid attention.

On skip ``x`` (``F`` channels) with gating signal ``g`` at half of ``x``'s resolution::

    q     = ReLU(W_x * x + W_g * g + b)     W_x: 2x2 conv, stride 2, no bias   W_g: 1x1 conv with bias b
    alpha = sigmoid(psi * q + b_psi)        psi: 1x1 conv to 1 channel          (layer ``{name}``)
    x_hat = x * upsample_2x(alpha)          bilinear up-sampling back to x's resolution

``W_x`` down-samples ``x`` to ``g``'s grid (rather than up-sampling ``W_g * g`` to ``x``'s): the additions run
at a quarter of the pixels, as in the paper's reference code. Its kernel is 2x2, not 1x1: with stride 2 a
1x1 kernel would read one pixel of each 2x2 cell (the reference code also uses kernel = stride). The
intermediate width is ``max(F // 2, 1)`` (the reference code's ``in_channels // 2``); the gated skip is
``x * alpha`` as in the paper's equations, without the reference code's extra 1x1 conv + BN on it.
"""

from __future__ import annotations

from keras import layers


def attention_gate(x, g, name: str):
    """``x * upsample(alpha)``; the coefficient map ``alpha`` ``[B, h/2, w/2, 1]`` is layer ``name``."""
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
