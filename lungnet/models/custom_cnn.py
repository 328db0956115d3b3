"""The study's custom CNN: four conv -> batch norm -> ReLU -> max-pool blocks, then a dense head.

::

    image [H, W, C] in [0, 1]
    block1..block4: Conv2D(f_i, 3x3, same, no bias) -> BatchNorm -> ReLU -> MaxPool 2x2   (H/16 x W/16 x f_4)
    head_flatten -> embedding: Dense(dense_units, ReLU) -> head_dropout -> probabilities

Trained from scratch: there are no pretrained weights, so ``weights: imagenet`` (the config default, meant for
pretrained families) and ``weights: null`` both mean random initialisation; a path to a ``.weights.h5`` file
saved from this same architecture starts from those weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.blocks import (
    EMBEDDING_NAME,
    INPUT_NAME,
    classification_head,
    conv_block,
    load_weights_file,
    weights_path,
)

if TYPE_CHECKING:
    from lungnet.models.registry import ModelConfig

POOLINGS = 4  # each block halves the image side


def build_custom_cnn(
    config: ModelConfig, input_shape: tuple[int, int, int] = (128, 128, 3), num_classes: int = 2
) -> keras.Model:
    """The custom CNN for `config` (``filters``, ``dense_units``, ``dropout``; see the module docstring)."""
    height, width = input_shape[:2]
    minimum = 2**POOLINGS
    if height < minimum or width < minimum:
        raise ConfigError(
            f"custom_cnn needs images of at least {minimum}x{minimum} px ({POOLINGS} poolings), got {height}x{width}"
        )
    if config.weights not in (None, "imagenet"):
        weights_path(config.weights, "a custom_cnn")
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    x = inputs
    for i, filters in enumerate(config.filters, start=1):
        x = conv_block(x, filters, name=f"block{i}")
    x = layers.Flatten(name="head_flatten")(x)
    embedding = layers.Dense(config.dense_units, activation="relu", name=EMBEDDING_NAME)(x)
    outputs = classification_head(embedding, num_classes, config.dropout)
    model = keras.Model(inputs, outputs, name="custom_cnn")
    if config.weights not in (None, "imagenet"):
        load_weights_file(
            model, config.weights, f"a custom_cnn built for input {tuple(input_shape)}, {num_classes} classes"
        )
    return model
