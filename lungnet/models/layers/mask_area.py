"""The area of a predicted mask as a feature: a classifier that segments can read the size it measured."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["MaskArea"]


@keras.saving.register_keras_serializable(package="lungnet")
class MaskArea(keras.layers.Layer):
    """``log(1 + sum of a [B, H, W, 1] probability map)`` per image, ``[B, 1]``, with no gradient back into the
    map: the map is trained by its own (mask) loss, and the classification loss reads its area as a
    measurement instead of bending the mask towards whatever helps the class."""

    def call(self, probabilities):
        area = ops.sum(ops.cast(probabilities, "float32"), axis=(1, 2, 3))
        return ops.expand_dims(ops.log1p(ops.stop_gradient(area)), -1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)
