"""CT + genomic intermediate fusion (the Inf-Net paper's conceptual head): image features and a patient's
genomic vector, each projected, then joined before the malignancy output.

::

    image    -> encoder (any registered one; Inf-Net's backbone) -> deepest level -> global average pool
             -> Dense(image_units, ReLU)                                      layer image_projection
    genomics -> Dense(genomic_units, ReLU)                                    layer genomic_projection
    concat -> Dense(fusion_units, ReLU) = embedding -> dropout -> probabilities

``genomics`` is the vector `lungnet.data.genomics.GenomicEncoder` makes (``genomic_features`` wide, its last
entry ``has_genomics``), so a patient without genomic data is a valid input of zeros with that flag off.
No public paired CT + genomic data exists here: the head is tested for its wiring and for learning a
genomic signal, not evaluated on real pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
from keras import layers

from lungnet.config import check_rate, is_int
from lungnet.errors import ConfigError
from lungnet.models.classifiers.head import classification_head
from lungnet.models.classifiers.pretrained import encoder_explanation_layer
from lungnet.models.contract import (
    EMBEDDING_NAME,
    GENOMICS_INPUT_NAME,
    INPUT_NAME,
    check_input_shape,
    layer_name_of,
)
from lungnet.models.registry import CLASSIFIERS, ENCODERS, ClassifierConfig
from lungnet.models.weights import EncoderRecord, provenance, record_encoder


@dataclass(frozen=True)
class GenomicFusionConfig(ClassifierConfig):
    """``encoder`` and its options (``encoder_options``: ``weights``, or ``depth`` / ``filters`` for the
    conv encoder, ``layers`` for Res2Net, ...); ``genomic_features``: the genomic vector's width."""

    name: str = "genomic_fusion"
    encoder: str = "resnet50"
    encoder_options: dict = field(default_factory=lambda: {"weights": None})
    genomic_features: int = 4
    image_units: int = 64
    genomic_units: int = 16
    fusion_units: int = 64
    dropout: float = 0.3
    fine_tune_layers: int = 20

    def __post_init__(self) -> None:
        for key in ("genomic_features", "image_units", "genomic_units", "fusion_units", "fine_tune_layers"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise ConfigError(f"model.{key}: {value!r} must be an integer >= 1")
        check_rate(self.dropout, "model.dropout")
        if not isinstance(self.encoder_options, dict) or "name" in self.encoder_options:
            raise ConfigError(
                f"model.encoder_options: {self.encoder_options!r} must be a mapping of the encoder's own keys "
                "(its name is model.encoder)"
            )
        self.encoder_config()  # validates the encoder and its options now, naming bad keys

    def encoder_config(self):
        return ENCODERS.parse({"name": self.encoder, **self.encoder_options}, "model.encoder_options")

    @property
    def weights(self) -> str | None:
        return getattr(self.encoder_config(), "weights", None)


@CLASSIFIERS.register(
    "genomic_fusion",
    GenomicFusionConfig,
    family="genomic_fusion",
    description="CT + genomic intermediate fusion: encoder features and a genomic vector joined before the output",
    explanation_layer=encoder_explanation_layer,
    extra_inputs=(GENOMICS_INPUT_NAME,),
    input_scaling="image as its encoder expects ([0, 1]); genomics: GenomicEncoder's standardised vector",
)
def build_genomic_fusion(
    config: GenomicFusionConfig, input_shape=(128, 128, 3), num_classes: int = 2
) -> keras.Model:
    image = keras.Input(shape=check_input_shape(input_shape), name=INPUT_NAME)
    genomics = keras.Input(shape=(config.genomic_features,), name=GENOMICS_INPUT_NAME)
    deepest = list(ENCODERS.build(config.encoder_config(), image).values())[-1]
    pooled = layers.GlobalAveragePooling2D(name="image_features")(deepest)
    image_part = layers.Dense(config.image_units, activation="relu", name="image_projection")(pooled)
    genomic_part = layers.Dense(config.genomic_units, activation="relu", name="genomic_projection")(genomics)
    joined = layers.Concatenate(name="fusion_concat")([image_part, genomic_part])
    embedding = layers.Dense(config.fusion_units, activation="relu", name=EMBEDDING_NAME)(joined)
    outputs = classification_head(embedding, num_classes, config.dropout)
    model = keras.Model([image, genomics], outputs, name=config.name)  # called with a dict by input names
    weights = config.weights
    record_encoder(
        model,
        EncoderRecord(
            end_layer=layer_name_of(deepest), pretrained=weights is not None, provenance=provenance(weights)
        ),
    )
    return model
