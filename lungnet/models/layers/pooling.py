"""Generalized-mean (GeM) global pooling.

Per channel ``c`` of a ``[B, H, W, C]`` feature map, GeM computes

    f_c = ( mean_{h,w} max(x_{h,w,c}, eps) ** p ) ** (1 / p)

so ``p = 1`` is global average pooling and ``p -> inf`` tends to global max pooling; ``p`` may be learned.
Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", IEEE TPAMI 2018.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from lungnet.errors import ConfigError

__all__ = ["GeneralizedMeanPooling2D"]


@keras.saving.register_keras_serializable(package="lungnet")
class GeneralizedMeanPooling2D(keras.layers.Layer):
    """GeM pooling of a channels-last ``[B, H, W, C]`` map to ``[B, C]``.

    Args:
        p: the exponent, > 0 (3.0 is the paper's initial value). With `trainable_p` it initialises a learned
            scalar weight ``p`` (the layer's only weight), else it stays fixed.
        trainable_p: learn ``p`` by gradient descent.
        epsilon: lower clip of the inputs, > 0: ``x ** p`` needs ``x > 0`` (ReLU outputs contain zeros, and
            the gradient of ``x ** p`` with respect to ``p`` is ``x ** p * log(x)``).

    The arithmetic runs in float32 whatever the compute dtype, and the result is cast back to the input's
    dtype: under ``mixed_float16`` both ``eps = 1e-6`` (below float16's smallest normal number) and
    ``x ** p`` for activations above ~40 at ``p = 3`` (float16 tops out at 65504) would be lost in float16.
    """

    def __init__(self, p: float = 3.0, trainable_p: bool = True, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p <= 0:
            raise ConfigError(f"GeneralizedMeanPooling2D: p {p!r} must be a finite number > 0")
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, int | float)
            or not math.isfinite(epsilon)
            or epsilon <= 0
        ):
            raise ConfigError(f"GeneralizedMeanPooling2D: epsilon {epsilon!r} must be a finite number > 0")
        self.p = float(p)
        self.trainable_p = bool(trainable_p)
        self.epsilon = float(epsilon)
        self.p_weight = None

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ConfigError(
                f"GeneralizedMeanPooling2D {self.name!r}: input shape {tuple(input_shape)} must be "
                "[B, H, W, C] (rank 4, channels last)"
            )
        if self.trainable_p:
            # autocast=False: under mixed precision Keras would otherwise hand call() a float16 copy of p.
            self.p_weight = self.add_weight(
                name="p",
                shape=(),
                initializer=keras.initializers.Constant(self.p),
                trainable=True,
                dtype="float32",
                autocast=False,
            )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        p = ops.cast(self.p_weight, "float32") if self.p_weight is not None else self.p
        x = ops.maximum(x, self.epsilon)
        pooled = ops.mean(ops.power(x, p), axis=(1, 2))
        return ops.cast(ops.power(pooled, 1.0 / p), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "p": self.p,
            "trainable_p": self.trainable_p,
            "epsilon": self.epsilon,
        }
