"""Encoders: feature pyramids ``{"P0".."P5"}`` for classifier heads and segmentation decoders to read.

Importing this package registers every encoder family: lungnet's own conv encoder (`conv`) and Res2Net
(`res2net`), keras.applications bases (`applications`), keras-hub backbones (`keras_hub`).
"""

from __future__ import annotations

import keras

from lungnet.models.contract import INPUT_NAME, check_input_shape
from lungnet.models.encoders import applications, conv, keras_hub, res2net  # noqa: F401  (registers them)
from lungnet.models.encoders.pretrained import PretrainedEncoderConfig
from lungnet.models.registry import ENCODERS


def pretrained_encoder_names() -> list[str]:
    """Encoders that can start from pretrained weights (the ones a classifier head or pretraining can use)."""
    return [n for n in ENCODERS.names() if issubclass(ENCODERS.get(n).config_class, PretrainedEncoderConfig)]


def build_encoder(config, input_shape: tuple[int, int, int]) -> keras.Model:
    """An encoder alone: input ``image``, outputs its pyramid as a dict (for pretraining and inspection)."""
    config = ENCODERS.parse(config)
    inputs = keras.Input(shape=check_input_shape(input_shape), name=INPUT_NAME)
    return keras.Model(inputs, ENCODERS.build(config, inputs), name=f"{config.name}_encoder")


__all__ = ["PretrainedEncoderConfig", "build_encoder", "pretrained_encoder_names"]
