"""The classification output shared by every classifier family."""

from __future__ import annotations

from keras import layers

from lungnet.models.contract import OUTPUT_NAME


def output_units(num_classes: int) -> tuple[int, str]:
    """(units, activation) of the output layer: one sigmoid unit for 2 classes, else a K-way softmax."""
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def classification_head(features, num_classes: int, dropout: float):
    """Dropout (``head_dropout``, if > 0) then the output layer ``probabilities`` on an embedding tensor."""
    x = layers.Dropout(dropout, name="head_dropout")(features) if dropout > 0 else features
    units, activation = output_units(num_classes)
    # float32 output: keeps the probabilities (and the loss) exact under a mixed-precision policy
    return layers.Dense(units, activation=activation, dtype="float32", name=OUTPUT_NAME)(x)
