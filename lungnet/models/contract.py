"""The naming contract every lungnet model follows; evaluation, explanation and serving rely on it.

- the input layer is ``image``: ``[B, H, W, C]`` floats (classifiers: in ``[0, 1]``; segmenters: the study's
  standardised intensities); a second stream, where a family has one, is a further named input;
- the output layer is ``probabilities``, computed in float32 even under mixed precision: one sigmoid unit
  ``[B, 1]`` for two classes, a softmax ``[B, K]`` otherwise, or a sigmoid map ``[B, H, W, 1]``;
- side outputs (deep supervision) are named ``aux_*``; the model's outputs are then a dict, and the losses
  read them (``aux_edge`` against the mask's boundary, the others against the mask); evaluation and serving
  use `inference_model`, which keeps ``probabilities`` only;
- classifiers name their penultimate feature vector ``embedding`` (retrieval);
- an encoder's trainable part starts at a layer named ``backbone_input``;
- encoders return a `Pyramid`: feature maps keyed ``P{k}`` at stride ``2**k`` of the input (``P0`` is full
  resolution), shallowest first. Decoders and heads read these keys, never layer names.
"""

from __future__ import annotations

import keras

from lungnet.config import is_int
from lungnet.errors import ConfigError

INPUT_NAME = "image"
GENOMICS_INPUT_NAME = "genomics"  # the fusion classifiers' second stream: a patient's genomic vector
MASK_INPUT_NAME = "mask"  # NoduleHyperFusionNet's second stream: the nodule's outline [B, H, W, 1]
OUTPUT_NAME = "probabilities"
EMBEDDING_NAME = "embedding"
BACKBONE_INPUT_NAME = "backbone_input"
AUX_PREFIX = "aux_"
# a classifier's regression of the readers' other ratings, each in [0, 1] (`lungnet.data.attributes`)
ATTRIBUTE_OUTPUT = "aux_attributes"
EDGE_OUTPUT = "aux_edge"  # a side output supervised by the mask's boundary, not the mask (Inf-Net)

Pyramid = dict  # {"P0" | "P1" | ...: KerasTensor [B, H / 2**k, W / 2**k, C_k]}, shallowest first


def level_key(stride_exponent: int) -> str:
    return f"P{stride_exponent}"


def level_stride(key: str) -> int:
    """``"P3"`` -> 8."""
    return 2 ** int(key[1:])


def pyramid_channels(pyramid: Pyramid) -> dict[str, int]:
    return {key: int(tensor.shape[-1]) for key, tensor in pyramid.items()}


def layer_name_of(tensor) -> str:
    """The name of the layer that produced a symbolic tensor (for declarations such as Grad-CAM's map)."""
    return tensor._keras_history.operation.name


def check_input_shape(
    input_shape, multiple: int = 1, minimum: int = 1, what: str = ""
) -> tuple[int, int, int]:
    """``(H, W, C)`` of positive integers, H and W at least `minimum` and divisible by `multiple`."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(is_int(d) and d >= 1 for d in shape):
        raise ConfigError(
            f"input_shape: {input_shape!r} must be three positive integers (height, width, channels)"
        )
    height, width = shape[:2]
    if height < minimum or width < minimum:
        raise ConfigError(f"{what} needs images of at least {minimum}x{minimum} px, got {height}x{width}")
    if height % multiple or width % multiple:
        raise ConfigError(f"input_shape: {height}x{width} is not divisible by {multiple} ({what})")
    return shape


def output_names(model: keras.Model) -> list[str]:
    output = model.output
    return list(output) if isinstance(output, dict) else [OUTPUT_NAME]


def layers_up_to(model: keras.Model, tensor) -> list[keras.layers.Layer]:
    """The layers (no input layers) that `tensor` depends on, in graph order, found through Keras's own graph."""
    sub = keras.Model(model.inputs, tensor)
    return [layer for layer in sub.layers if not isinstance(layer, keras.layers.InputLayer)]


def inference_model(model: keras.Model) -> keras.Model:
    """`model` with ``probabilities`` as its only output (side outputs dropped; the same layers and weights)."""
    if not isinstance(model.output, dict):
        return model
    return keras.Model(model.inputs, model.output[OUTPUT_NAME], name=model.name)
