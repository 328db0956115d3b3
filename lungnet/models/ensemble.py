"""Seed ensembles: several copies of one model, trained from different random initialisations, averaged.

The ensemble is one Keras model (input ``image``, output ``probabilities``, the mean of its members'
probabilities), so run folders, evaluation, calibration and the serving export treat it as any model. Its
members are nested models named ``member_1 .. member_N``; explanations that need a layer of one network
(Grad-CAM, the embedding for retrieval) use `first_member`.
"""

from __future__ import annotations

import keras
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.contract import INPUT_NAME, OUTPUT_NAME

MEMBER_PREFIX = "member_"


def average_ensemble(members: list[keras.Model], name: str) -> keras.Model:
    """One model whose probabilities are the mean of `members`' (all with the same input shape)."""
    if not members:
        raise ConfigError("an ensemble needs at least one member")
    shape = tuple(members[0].inputs[0].shape[1:])
    for member in members[1:]:
        if tuple(member.inputs[0].shape[1:]) != shape:
            raise ConfigError(f"ensemble members take different inputs: {shape} and {member.inputs[0].shape}")
    inputs = keras.Input(shape=shape, name=INPUT_NAME)
    outputs = [
        keras.Model(m.inputs, m.outputs[0], name=f"{MEMBER_PREFIX}{i}")(inputs)
        for i, m in enumerate(members, start=1)
    ]
    mean = outputs[0] if len(outputs) == 1 else layers.Average(dtype="float32", name=OUTPUT_NAME)(outputs)
    return keras.Model(inputs, mean, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The members of an `average_ensemble` model, in order; [] for any other model."""
    return [layer for layer in model.layers if layer.name.startswith(MEMBER_PREFIX)]


def first_member(model: keras.Model) -> keras.Model:
    """The network to explain: an ensemble's first member, or the model itself."""
    members = ensemble_members(model)
    return members[0] if members else model
