"""Channel attention blocks built from Keras layers: each rescales every channel of ``x`` by a factor in (0, 1).

- Squeeze-and-excitation (Hu, Shen and Sun, "Squeeze-and-Excitation Networks", CVPR 2018):
  ``s = sigmoid(W2 relu(W1 GAP(x)))``, ``W1: C -> max(1, C // ratio)``, ``W2: -> C``; output ``x * s``.
- Efficient channel attention (Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional
  Neural Networks", CVPR 2020): ``s = sigmoid(conv1d_k(GAP(x)))``, a bias-free 1-D convolution over the
  channel axis, so each channel's weight depends on its ``k`` neighbours; output ``x * s``. The kernel size
  adapts to the channel count: ``k = odd(|log2(C) / gamma + b / gamma|)`` (`eca_kernel_size`).

Layers are named ``{name}_...``, so models using these blocks stay flat functional graphs.
"""

from __future__ import annotations

import math

from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.layers.conv import positive_int, static_channels

__all__ = ["eca_kernel_size", "efficient_channel_attention", "squeeze_excitation"]


def squeeze_excitation(x, name: str, ratio: int = 16):
    """Squeeze-and-excitation on ``x`` ``[B, H, W, C]``; returns ``x`` scaled per channel, same shape.

    The hidden width is ``max(1, C // ratio)``. Layers: ``{name}_squeeze`` (global average pooling),
    ``{name}_reduce`` (Dense, ReLU), ``{name}_expand`` (Dense, sigmoid), ``{name}_reshape`` (to
    ``[B, 1, 1, C]``) and ``{name}_scale`` (Multiply). Parameters: ``C*h + h + h*C + C`` with ``h`` the
    hidden width (both Dense layers have biases, as in the paper's fully connected layers).
    """
    channels = static_channels(x, "squeeze_excitation", name)
    ratio = positive_int(ratio, "squeeze_excitation: ratio")
    hidden = max(1, channels // ratio)  # a ratio above C would otherwise leave no hidden unit
    s = layers.GlobalAveragePooling2D(name=f"{name}_squeeze")(x)
    s = layers.Dense(hidden, activation="relu", name=f"{name}_reduce")(s)
    s = layers.Dense(channels, activation="sigmoid", name=f"{name}_expand")(s)
    s = layers.Reshape((1, 1, channels), name=f"{name}_reshape")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size: ``t = int(|log2(C) / gamma + b / gamma|)``, then ``t`` if odd else ``t + 1``.

    Rounding down to an integer and up to the next odd number follows the authors' code; odd keeps the
    "same" padding symmetric. With the defaults: C = 64 -> 3, 256 -> 5, 512 -> 5, 1024 -> 5, 2048 -> 7.
    """
    channels = positive_int(channels, "eca_kernel_size: channels")
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
        raise ConfigError(f"eca_kernel_size: gamma {gamma!r} must be a number > 0")
    if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b):
        raise ConfigError(f"eca_kernel_size: b {b!r} must be a finite number")
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


def efficient_channel_attention(x, name: str, kernel_size: int | None = None, gamma: float = 2, b: float = 1):
    """Efficient channel attention on ``x`` ``[B, H, W, C]``; returns ``x`` scaled per channel, same shape.

    `kernel_size` ``None`` takes ``eca_kernel_size(C, gamma, b)``; an explicit one must be odd. Layers:
    ``{name}_squeeze`` (global average pooling), ``{name}_to_sequence`` (Reshape to ``[B, C, 1]``: the
    channels become the 1-D conv's spatial axis), ``{name}_conv`` (Conv1D, one filter, ``k`` taps, same
    padding, no bias: ``k`` parameters), ``{name}_sigmoid``, ``{name}_reshape`` (to ``[B, 1, 1, C]``) and
    ``{name}_scale`` (Multiply).
    """
    channels = static_channels(x, "efficient_channel_attention", name)
    if kernel_size is None:
        kernel_size = eca_kernel_size(channels, gamma, b)
    elif not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(
            f"efficient_channel_attention: kernel_size {kernel_size!r} must be an odd integer >= 1 or None"
        )
    s = layers.GlobalAveragePooling2D(name=f"{name}_squeeze")(x)
    s = layers.Reshape((channels, 1), name=f"{name}_to_sequence")(s)
    s = layers.Conv1D(1, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(s)
    s = layers.Activation("sigmoid", name=f"{name}_sigmoid")(s)
    s = layers.Reshape((1, 1, channels), name=f"{name}_reshape")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])
