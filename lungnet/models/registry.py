"""Model configs, the registry of builders, and the transfer-learning / fine-tuning switches.

``build_model(ModelConfig(name=...), input_shape, num_classes)`` looks the family up in `MODEL_BUILDERS`;
a new family is one module with a builder ``(config, input_shape, num_classes) -> keras.Model`` that follows
the conventions of `lungnet.models.blocks`, one entry in `MODEL_BUILDERS`, and its name in `ModelName`.

Training schedule (the Keras transfer-learning guide): `set_transfer_learning` freezes a pretrained backbone
and trains the head; `set_fine_tuning` then unfreezes the backbone's top layers, batch norms excepted, for
training at a lower learning rate. Both change ``layer.trainable``: compile the model again afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import keras
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.blocks import (
    WEIGHTS_SUFFIXES,
    backbone_layers,
    has_pretrained_backbone,
    last_conv_layer_name,
)
from lungnet.models.custom_cnn import build_custom_cnn
from lungnet.models.efficientnet import build_efficientnet_b2

ModelName = Literal["custom_cnn", "efficientnet_b2"]
ModelBuilder = Callable[["ModelConfig", tuple[int, int, int], int], keras.Model]

MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "custom_cnn": build_custom_cnn,
    "efficientnet_b2": build_efficientnet_b2,
}

__all__ = [
    "MODEL_BUILDERS",
    "ModelConfig",
    "build_model",
    "last_conv_layer_name",
    "set_fine_tuning",
    "set_transfer_learning",
]


@dataclass(frozen=True)
class ModelConfig:
    """One classifier: its family and hyper-parameters (YAML: the ``model:`` mapping of an experiment).

    ``weights`` is for pretrained families (efficientnet_b2): ``"imagenet"`` (downloaded by Keras), a path to a
    local ``.h5`` / ``.weights.h5`` file of the same base (e.g. ``efficientnetb2_notop.h5``), or ``None``
    (random initialisation). The custom CNN is trained from scratch: for it ``"imagenet"`` and ``None`` both
    mean random weights, and a path loads a ``.weights.h5`` file saved from the same custom CNN.
    ``filters`` and ``dense_units`` shape the custom CNN (``dense_units`` is its embedding width);
    ``fine_tune_layers`` is how many of the base's top layers `set_fine_tuning` unfreezes.
    """

    name: ModelName
    weights: str | None = "imagenet"
    dropout: float = 0.3
    filters: tuple[int, int, int, int] = (32, 64, 128, 256)
    dense_units: int = 128
    fine_tune_layers: int = 20

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"model.{field}: {getattr(self, field)!r} {why}")

        if self.name not in MODEL_BUILDERS:
            raise bad("name", f"is not one of {sorted(MODEL_BUILDERS)}")
        if self.weights is not None:
            if not isinstance(self.weights, str):
                raise bad("weights", "must be 'imagenet', a path to a weights file, or null")
            if self.weights != "imagenet" and not self.weights.lower().endswith(WEIGHTS_SUFFIXES):
                raise bad(
                    "weights",
                    f"must be 'imagenet', null, or a path to a weights file ending in {list(WEIGHTS_SUFFIXES)}",
                )
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0 <= self.dropout < 1
        ):
            raise bad("dropout", "must be a number in [0, 1)")
        filters = self.filters
        if (
            not isinstance(filters, list | tuple)
            or len(filters) != 4
            or not all(_is_int(f) and f >= 1 for f in filters)
        ):
            raise bad("filters", "must be four integers >= 1 (one per conv block)")
        object.__setattr__(self, "filters", tuple(filters))
        if not _is_int(self.dense_units) or self.dense_units < 1:
            raise bad("dense_units", "must be an integer >= 1")
        if not _is_int(self.fine_tune_layers) or self.fine_tune_layers < 1:
            raise bad("fine_tune_layers", "must be an integer >= 1")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_model(
    config: ModelConfig, input_shape: tuple[int, int, int] = (128, 128, 3), num_classes: int = 2
) -> keras.Model:
    """A flat functional classifier for `config`.

    Input ``image`` ``[B, H, W, C]`` in ``[0, 1]``; output ``probabilities``: ``[B, 1]`` sigmoid for
    ``num_classes == 2``, ``[B, K]`` softmax for more; layer ``embedding`` is the penultimate feature vector;
    `last_conv_layer_name` finds the last conv feature map. All layers come back trainable.
    """
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"model: expected a ModelConfig, got {type(config).__name__}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
        raise ConfigError(
            f"input_shape: {input_shape!r} must be three positive integers (height, width, channels)"
        )
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes: {num_classes!r} must be an integer >= 2")
    return MODEL_BUILDERS[config.name](config, shape, num_classes)


def set_transfer_learning(model: keras.Model) -> bool:
    """Transfer-learning phase: freeze a pretrained backbone, keep the head trainable.

    Returns True if a backbone was frozen. A model without a pretrained backbone (the custom CNN, or
    efficientnet_b2 with ``weights: null``, whose random base must be trained) is left fully trainable and
    False comes back. Compile the model after calling this.
    """
    for layer in model.layers:
        layer.trainable = True
    if not has_pretrained_backbone(model):
        return False
    for layer in backbone_layers(model):
        layer.trainable = False
    return True


def set_fine_tuning(model: keras.Model, n_layers: int) -> int:
    """Fine-tuning phase: the top `n_layers` layers of the backbone become trainable, except batch norms.

    As in the Keras fine-tuning guide, `n_layers` counts the backbone's last layers in graph order (batch norms
    and weightless layers included); of those, every layer but the ``BatchNormalization`` ones is unfrozen.
    Batch norms stay frozen, which in Keras 3 also keeps them in inference mode, so their ImageNet statistics
    are not overwritten by small batches. Everything below is frozen; the head is trainable. ``n_layers`` at
    least the backbone's size unfreezes the whole backbone (batch norms excepted).

    Returns the number of backbone layers made trainable. Compile the model (lower learning rate) afterwards.
    """
    if not _is_int(n_layers) or n_layers < 0:
        raise ConfigError(f"model.fine_tune_layers: {n_layers!r} must be an integer >= 0")
    backbone = backbone_layers(model)
    if not backbone:
        raise ConfigError(
            f"model {model.name!r} has no backbone to fine-tune; fine-tuning applies to pretrained families "
            f"such as efficientnet_b2"
        )
    for layer in model.layers:
        layer.trainable = True
    for layer in backbone:
        layer.trainable = False
    unfrozen = 0
    for layer in backbone[len(backbone) - min(n_layers, len(backbone)) :]:
        if not isinstance(layer, layers.BatchNormalization):
            layer.trainable = True
            unfrozen += 1
    return unfrozen
