"""A pretrained encoder + global average pooling + dropout + ``probabilities``: transfer learning.

::

    image [H, W, 3] in [0, 1] -> encoder (by name: efficientnet_b2, resnet34_d, ...) -> its deepest level
    embedding: GlobalAveragePooling2D -> head_dropout -> probabilities (1 sigmoid unit, or softmax)

The classifier's name is the encoder's (each pretrained encoder is a variant of this family). The schedule
in `lungnet.training.schedules` freezes the encoder (transfer learning), then unfreezes its top
``fine_tune_layers`` layers (fine-tuning); it finds the encoder's layers from the `EncoderRecord` the
builder leaves, which also says where the weights came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.config import check_rate, is_int
from lungnet.errors import ConfigError
from lungnet.models.classifiers.head import classification_head
from lungnet.models.contract import EMBEDDING_NAME, INPUT_NAME, check_input_shape, layer_name_of
from lungnet.models.encoders import pretrained_encoder_names
from lungnet.models.registry import CLASSIFIERS, ENCODERS, ClassifierConfig
from lungnet.models.weights import EncoderRecord, provenance, record_encoder, validate_weights_option


@dataclass(frozen=True)
class PretrainedClassifierConfig(ClassifierConfig):
    """``weights`` of the encoder (see `PretrainedEncoderConfig`); ``fine_tune_layers`` for fine-tuning."""

    name: str = "efficientnet_b2"
    weights: str | None = "imagenet"
    dropout: float = 0.3
    fine_tune_layers: int = 20

    def __post_init__(self) -> None:
        validate_weights_option(self.weights, genesis=True)
        check_rate(self.dropout, "model.dropout")
        if not is_int(self.fine_tune_layers) or self.fine_tune_layers < 1:
            raise ConfigError(f"model.fine_tune_layers: {self.fine_tune_layers!r} must be an integer >= 1")

    def encoder_config(self):
        return ENCODERS.parse({"name": self.name, "weights": self.weights}, "model")


def encoder_explanation_layer(config) -> str | None:
    """Grad-CAM's map of a classifier built on a registered encoder: the encoder's own declaration."""
    encoder = config.encoder_config()
    return ENCODERS.get(encoder.name).explanation_layer(encoder)


@CLASSIFIERS.register(
    tuple(pretrained_encoder_names()),
    PretrainedClassifierConfig,
    family="pretrained_encoder_head",
    description="pretrained encoder + global average pooling + dropout; transfer learning, then fine-tuning",
    explanation_layer=encoder_explanation_layer,
    input_scaling="[0, 1]; 3 channels for ImageNet weights",
)
def build_pretrained_classifier(
    config: PretrainedClassifierConfig, input_shape=(128, 128, 3), num_classes: int = 2
) -> keras.Model:
    inputs = keras.Input(shape=check_input_shape(input_shape), name=INPUT_NAME)
    pyramid = ENCODERS.build(config.encoder_config(), inputs)
    deepest = list(pyramid.values())[-1]
    embedding = layers.GlobalAveragePooling2D(name=EMBEDDING_NAME)(deepest)
    outputs = classification_head(embedding, num_classes, config.dropout)
    model = keras.Model(inputs, outputs, name=config.name)
    record_encoder(
        model,
        EncoderRecord(
            end_layer=layer_name_of(deepest),
            pretrained=config.weights is not None,
            provenance=provenance(config.weights),
        ),
    )
    return model
