"""ImageNet input conventions for encoders fed lungnet's ``[0, 1]`` images.

Pretrained bases expect the pixels their weights were trained on, and the conventions differ:

- ``"torch"``: ``(x - mean) / std`` with the ImageNet RGB statistics below (keras-hub presets, PyTorch
  checkpoints such as Res2Net's): `imagenet_standardization`;
- ``"caffe"``: 0-255 pixels, RGB -> BGR, minus the BGR mean, no division (keras.applications ResNets,
  ``keras.applications.resnet.preprocess_input``): `CaffePreprocessing`.

Images without 3 channels (grey, or a self-supervised base's own channels) get the mean of the three
channels' statistics on every channel, and no channel reversal.
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CaffePreprocessing", "imagenet_standardization"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of [0, 1] pixels
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # BGR, of 0-255 pixels


def imagenet_standardization(channels: int, name: str) -> layers.Normalization:
    """``(x - mean) / std`` of ``[0, 1]`` pixels: a Normalization layer with fixed statistics (no weights)."""
    rgb = channels == 3
    return layers.Normalization(
        mean=IMAGENET_MEAN if rgb else sum(IMAGENET_MEAN) / 3,
        variance=[s**2 for s in IMAGENET_STD] if rgb else (sum(IMAGENET_STD) / 3) ** 2,
        name=name,
    )


@keras.saving.register_keras_serializable(package="lungnet")
class CaffePreprocessing(keras.layers.Layer):
    """``[0, 1]`` images -> keras.applications' ``"caffe"`` input: ``255 x``, RGB -> BGR, minus the BGR mean.

    The same numbers as ``keras.applications.resnet.preprocess_input(255 x)``, inside the graph (so an
    exported model takes the images lungnet's preprocessing gives, and any backend runs it). No weights.
    """

    def call(self, inputs):
        x = ops.multiply(inputs, ops.cast(255.0, inputs.dtype))
        if inputs.shape[-1] == 3:
            x = ops.flip(x, axis=-1)
            mean = ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=inputs.dtype)
        else:
            mean = ops.cast(sum(CAFFE_BGR_MEAN) / 3, inputs.dtype)
        return ops.subtract(x, mean)

    def compute_output_shape(self, input_shape):
        return input_shape
