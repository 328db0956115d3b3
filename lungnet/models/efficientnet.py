"""EfficientNetB2 transfer learning (Tan & Le 2019), as one flat functional graph.

::

    image [H, W, 3] in [0, 1]
    backbone_input: Rescaling(255)            -> keras.applications.EfficientNetB2(include_top=False) layers,
                                                 applied directly to this tensor (flat, not a nested model)
    ... top_activation [H/32, W/32, 1408]     (the last conv feature map, for Grad-CAM)
    embedding: GlobalAveragePooling2D [1408] -> head_dropout -> probabilities (1 sigmoid unit, or softmax)

Weights of the base (``ModelConfig.weights``): ``"imagenet"`` downloads the keras-applications file (a
`WeightsUnavailableError` says what to do when there is no network), a path loads a local ``.h5`` /
``.weights.h5`` file of the same base, ``None`` starts from random weights.
"""

from __future__ import annotations

import urllib.error
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import layers

from lungnet.errors import ConfigError
from lungnet.models.blocks import (
    BACKBONE_INPUT_NAME,
    EMBEDDING_NAME,
    INPUT_NAME,
    WeightsUnavailableError,
    classification_head,
    load_weights_file,
    mark_pretrained,
    weights_path,
)

if TYPE_CHECKING:
    from lungnet.models.registry import ModelConfig

WEIGHTS_FILE = "efficientnetb2_notop.h5"
WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/" + WEIGHTS_FILE
ARCHITECTURE = "an EfficientNetB2 base (keras.applications.EfficientNetB2, include_top=False)"
EMBEDDING_WIDTH = 1408
MIN_SIZE = 32  # keras.applications' minimum input side for EfficientNet
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_efficientnet_b2(
    config: ModelConfig, input_shape: tuple[int, int, int] = (128, 128, 3), num_classes: int = 2
) -> keras.Model:
    """EfficientNetB2 base + global average pooling (``embedding``) + dropout + ``probabilities``.

    All layers come back trainable; `lungnet.models.set_transfer_learning` freezes a pretrained base and
    `lungnet.models.set_fine_tuning` unfreezes its top layers.
    """
    height, width, channels = input_shape
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ConfigError(
            f"efficientnet_b2 needs images of at least {MIN_SIZE}x{MIN_SIZE} px, got {height}x{width}"
        )
    if config.weights is not None and channels != 3:
        raise ConfigError(
            f"model.weights: {config.weights!r} are for 3-channel (RGB) images, but the input has {channels} "
            "channel(s); set data.preprocess.channels: 3 (grey replicated) or model.weights: null"
        )
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    # Keras's EfficientNet starts with Rescaling(1/255) and an ImageNet mean/std Normalization: it expects
    # pixels in 0-255. Our images are in [0, 1], so scale them back up here; the ImageNet weights then see
    # the inputs they were trained on. (With weights=None the normalisation is the identity: no harm.)
    x = layers.Rescaling(255.0, name=BACKBONE_INPUT_NAME)(inputs)
    # With input_tensor=x Keras applies the base's layers to our tensor: they join our graph directly.
    base = _base(x, config.weights)
    embedding = layers.GlobalAveragePooling2D(name=EMBEDDING_NAME)(base.output)
    outputs = classification_head(embedding, num_classes, config.dropout)
    model = keras.Model(inputs, outputs, name="efficientnet_b2")
    mark_pretrained(model, config.weights is not None)
    return model


def _base(x, weights: str | None) -> keras.Model:
    if weights == "imagenet":
        try:
            return keras.applications.EfficientNetB2(include_top=False, weights="imagenet", input_tensor=x)
        except Exception as exc:
            if _download_failed(exc):
                raise WeightsUnavailableError(_unavailable_message(exc)) from exc
            raise
    if weights is not None:
        weights_path(weights, ARCHITECTURE)  # fail before the 2 s build if the file is missing
    base = keras.applications.EfficientNetB2(include_top=False, weights=None, input_tensor=x)
    if weights is not None:
        load_weights_file(base, weights, ARCHITECTURE)
        _match_imagenet_normalization(base)
    return base


def _download_failed(exc: BaseException) -> bool:
    """Keras's get_file raises a plain Exception chained (implicitly or with `from`) to a URLError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib.error.URLError | TimeoutError | ConnectionError):
            return True
        current = current.__cause__ or current.__context__
    return "URL fetch failure" in str(exc)


def _unavailable_message(exc: BaseException) -> str:
    return (
        f"EfficientNetB2 ImageNet weights could not be downloaded ({exc}). Two ways out:\n"
        f"  1. use a local copy: on a machine with internet access download {WEIGHTS_URL}\n"
        f"     (Keras keeps it as ~/.keras/models/{WEIGHTS_FILE} after one "
        "`keras.applications.EfficientNetB2(include_top=False)`), copy it here and set\n"
        f"     `model.weights: /path/to/{WEIGHTS_FILE}` (placing it in ~/.keras/models/ also makes "
        "`model.weights: imagenet` work offline);\n"
        "  2. train without pretrained weights: set `model.weights: null` (random initialisation; the base is "
        "then trained rather than frozen, and small data sets give lower accuracy)."
    )


def _match_imagenet_normalization(base: keras.Model) -> None:
    """Give a base loaded from a local ImageNet file the input normalisation of ``weights="imagenet"``.

    The keras-applications files store the ImageNet standard deviations as the Normalization layer's
    *variance*, so that layer alone divides by sqrt(std); with ``weights="imagenet"`` Keras adds a second
    Rescaling(1/sqrt(std)) to complete the division (keras issue 16392, tensorflow issue 49930). A file loaded
    from a path gets no such layer, so the variance is set to std**2 here: the same (x - mean) / std.
    Other files (stats that are not ImageNet's) are left alone.
    """
    norms = [layer for layer in base.layers if isinstance(layer, layers.Normalization)]
    if len(norms) != 1:
        return
    norm = norms[0]
    mean, variance, *rest = norm.get_weights()
    if np.allclose(mean, IMAGENET_MEAN, atol=1e-6) and np.allclose(variance, IMAGENET_STD, atol=1e-6):
        norm.set_weights([mean, np.square(np.asarray(IMAGENET_STD, dtype=variance.dtype)), *rest])
        norm.finalize_state()  # the layer computes with tensors derived from its variables; refresh them
