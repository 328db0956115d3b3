"""Classifiers as flat Keras functional graphs, built from a `ModelConfig` through a registry.

Families: ``custom_cnn`` (four conv-BN-ReLU-pool blocks and a dense head, trained from scratch) and
``efficientnet_b2`` (keras.applications EfficientNetB2 base, global average pooling, dropout; transfer learning
then fine-tuning). Every model takes ``image`` ``[B, H, W, C]`` in ``[0, 1]``, outputs ``probabilities``
(``[B, 1]`` sigmoid for two classes, ``[B, K]`` softmax otherwise) and exposes an ``embedding`` layer and its
last conv feature map (`last_conv_layer_name`) for Grad-CAM and retrieval.
"""

from lungnet.models.blocks import (
    BACKBONE_INPUT_NAME,
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    WeightsError,
    WeightsUnavailableError,
    backbone_layers,
    has_pretrained_backbone,
    last_conv_layer_name,
)
from lungnet.models.custom_cnn import build_custom_cnn
from lungnet.models.efficientnet import build_efficientnet_b2
from lungnet.models.registry import (
    MODEL_BUILDERS,
    ModelConfig,
    build_model,
    set_fine_tuning,
    set_transfer_learning,
)

__all__ = [
    "BACKBONE_INPUT_NAME",
    "EMBEDDING_NAME",
    "INPUT_NAME",
    "MODEL_BUILDERS",
    "OUTPUT_NAME",
    "ModelConfig",
    "WeightsError",
    "WeightsUnavailableError",
    "backbone_layers",
    "build_custom_cnn",
    "build_efficientnet_b2",
    "build_model",
    "has_pretrained_backbone",
    "last_conv_layer_name",
    "set_fine_tuning",
    "set_transfer_learning",
]
