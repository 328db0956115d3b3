"""The classification study's custom CNN: four conv -> batch norm -> ReLU -> max-pool blocks, a dense head.

::

    image [H, W, C] in [0, 1]
    block1..block4: Conv2D(f_i, 3x3, same, no bias) -> BatchNorm -> ReLU -> MaxPool 2x2   (H/16 x W/16 x f_4)
    head_flatten -> embedding: Dense(dense_units, ReLU) -> head_dropout -> probabilities

Trained from scratch: ``weights: null`` (and, as in run folders made before the model registry,
``weights: imagenet``) means random initialisation; a path to a ``.weights.h5`` file saved from this same
architecture starts from those weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.config import check_rate, is_int
from lungnet.errors import ConfigError
from lungnet.models.classifiers.head import classification_head
from lungnet.models.contract import EMBEDDING_NAME, INPUT_NAME, check_input_shape
from lungnet.models.layers.conv import conv_bn_act
from lungnet.models.registry import CLASSIFIERS, ClassifierConfig
from lungnet.models.weights import load_weights_file, validate_weights_option, weights_path

POOLINGS = 4  # each block halves the image side


@dataclass(frozen=True)
class CustomCNNConfig(ClassifierConfig):
    """``filters`` per conv block; ``dense_units`` is the embedding width; ``dropout`` before the output."""

    name: str = "custom_cnn"
    weights: str | None = None
    dropout: float = 0.3
    filters: tuple[int, int, int, int] = (32, 64, 128, 256)
    dense_units: int = 128

    def __post_init__(self) -> None:
        validate_weights_option(self.weights)
        check_rate(self.dropout, "model.dropout")
        filters = self.filters
        if (
            not isinstance(filters, list | tuple)
            or len(filters) != POOLINGS
            or not all(is_int(f) and f >= 1 for f in filters)
        ):
            raise ConfigError(f"model.filters: {filters!r} must be four integers >= 1 (one per conv block)")
        object.__setattr__(self, "filters", tuple(filters))
        if not is_int(self.dense_units) or self.dense_units < 1:
            raise ConfigError(f"model.dense_units: {self.dense_units!r} must be an integer >= 1")


@CLASSIFIERS.register(
    "custom_cnn",
    CustomCNNConfig,
    family="custom_cnn",
    description="the study's CNN: 4 x (conv3x3-BN-ReLU-maxpool), dense embedding, trained from scratch",
    explanation_layer=lambda config: f"block{POOLINGS}_act",
    input_scaling="[0, 1], any channels; at least 16x16 px",
)
def build_custom_cnn(config: CustomCNNConfig, input_shape=(128, 128, 3), num_classes: int = 2) -> keras.Model:
    input_shape = check_input_shape(input_shape, minimum=2**POOLINGS, what="custom_cnn")
    custom_weights = config.weights not in (None, "imagenet")
    if custom_weights:
        weights_path(config.weights, "a custom_cnn")
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    x = inputs
    for i, filters in enumerate(config.filters, start=1):
        x = conv_bn_act(x, filters, f"block{i}")
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Flatten(name="head_flatten")(x)
    embedding = layers.Dense(config.dense_units, activation="relu", name=EMBEDDING_NAME)(x)
    outputs = classification_head(embedding, num_classes, config.dropout)
    model = keras.Model(inputs, outputs, name="custom_cnn")
    if custom_weights:
        load_weights_file(
            model, config.weights, f"a custom_cnn built for input {tuple(input_shape)}, {num_classes} classes"
        )
    return model
