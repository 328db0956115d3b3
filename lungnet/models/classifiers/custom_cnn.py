"""The classification study's custom CNN: four conv -> batch norm -> ReLU -> max-pool blocks, a dense head.

::

    image [H, W, C] in [0, 1]
    block1..block4: Conv2D(f_i, 3x3, same, no bias) -> BatchNorm -> ReLU -> MaxPool 2x2   (H/16 x W/16 x f_4)
    head_flatten -> embedding: Dense(dense_units, ReLU) -> head_dropout -> probabilities

With ``mask_head: true`` (lungnet's addition, not the study's) the network also segments the nodule: a 1x1
sigmoid conv on block 2 gives ``aux_mask`` at half resolution, trained on the source's masks (side output,
dropped at inference), and ``log(1 + its area)`` joins the embedding before the output. At a fixed physical
scale (``preprocess.pixel_spacing_mm``) that area is the nodule's size in mm^2, which is the strongest
malignancy cue; the model measures it from the image instead of being told it.

With ``attributes: N`` (lungnet's addition) a sigmoid layer on the embedding rates N of the readers' other
characteristics (``data.attribute_targets``: calcification, spiculation, texture, ...; side output
``aux_attributes``, mean squared error against the ratings scaled to [0, 1]), and those ratings join the
embedding before the output, as in Shen et al.'s hierarchical semantic CNN (HSCNN, 2019): the network is
taught what radiologists look at, and the class reads it.

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
from lungnet.models.contract import (
    ATTRIBUTE_OUTPUT,
    AUX_PREFIX,
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    check_input_shape,
)
from lungnet.models.layers.conv import conv_bn_act
from lungnet.models.layers.mask_area import MaskArea
from lungnet.models.registry import CLASSIFIERS, ClassifierConfig
from lungnet.models.weights import load_weights_file, validate_weights_option, weights_path

POOLINGS = 4  # each block halves the image side
MASK_BLOCK = 2  # the mask head reads block 2 (half resolution: fine enough for a 3 mm nodule at 0.75 mm/px)
MASK_OUTPUT = f"{AUX_PREFIX}mask"


@dataclass(frozen=True)
class CustomCNNConfig(ClassifierConfig):
    """``filters`` per conv block; ``dense_units`` is the embedding width; ``dropout`` before the output."""

    name: str = "custom_cnn"
    weights: str | None = None
    dropout: float = 0.3
    filters: tuple[int, int, int, int] = (32, 64, 128, 256)
    dense_units: int = 128
    mask_head: bool = False  # also segment the nodule (side output aux_mask) and read its area
    attributes: int = 0  # also rate this many of the readers' characteristics (data.attribute_targets)

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
        if not isinstance(self.mask_head, bool):
            raise ConfigError(f"model.mask_head: {self.mask_head!r} must be true or false")
        if not is_int(self.attributes) or self.attributes < 0:
            raise ConfigError(
                f"model.attributes: {self.attributes!r} must be an integer >= 0 (how many ratings of "
                "data.attribute_targets the network learns; 0 for none)"
            )


@CLASSIFIERS.register(
    "custom_cnn",
    CustomCNNConfig,
    family="custom_cnn",
    description="the study's CNN: 4 x (conv3x3-BN-ReLU-maxpool), dense embedding, trained from scratch",
    explanation_layer=lambda config: f"block{POOLINGS}_act",
    input_scaling="[0, 1], any channels; at least 16x16 px",
    side_outputs=lambda config: (
        (MASK_OUTPUT,) * config.mask_head + (ATTRIBUTE_OUTPUT,) * bool(config.attributes)
    ),
)
def build_custom_cnn(config: CustomCNNConfig, input_shape=(128, 128, 3), num_classes: int = 2) -> keras.Model:
    input_shape = check_input_shape(input_shape, minimum=2**POOLINGS, what="custom_cnn")
    custom_weights = config.weights not in (None, "imagenet")
    if custom_weights:
        weights_path(config.weights, "a custom_cnn")
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    x = inputs
    mask = None
    for i, filters in enumerate(config.filters, start=1):
        x = conv_bn_act(x, filters, f"block{i}")
        if i == MASK_BLOCK and config.mask_head:
            mask = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=MASK_OUTPUT)(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Flatten(name="head_flatten")(x)
    embedding = layers.Dense(config.dense_units, activation="relu", name=EMBEDDING_NAME)(x)
    features, side = [embedding], {}
    if mask is not None:
        area = MaskArea(name="mask_area")(mask)
        features.append(layers.Activation("linear", dtype=embedding.dtype)(area))
        side[MASK_OUTPUT] = mask
    if config.attributes:
        ratings = layers.Dense(
            config.attributes, activation="sigmoid", dtype="float32", name=ATTRIBUTE_OUTPUT
        )(embedding)
        features.append(layers.Activation("linear", dtype=embedding.dtype)(ratings))
        side[ATTRIBUTE_OUTPUT] = ratings
    if len(features) > 1:  # (the mask head's name as before, so earlier run folders still load)
        name = "embedding_and_measures" if config.attributes else "embedding_and_area"
        features = layers.Concatenate(name=name)(features)
    else:
        features = embedding
    outputs = classification_head(features, num_classes, config.dropout)
    if side:
        outputs = {OUTPUT_NAME: outputs, **side}
    model = keras.Model(inputs, outputs, name="custom_cnn")
    if custom_weights:
        load_weights_file(
            model, config.weights, f"a custom_cnn built for input {tuple(input_shape)}, {num_classes} classes"
        )
    return model
