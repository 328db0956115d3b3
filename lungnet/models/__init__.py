"""The model zoo: registries of encoders, classifiers and segmenters, and the families that fill them.

Importing this package registers every family. Build with ``build_classifier(config, input_shape,
num_classes)`` / ``build_segmenter(config, input_shape)``, where ``config`` is a family config or a mapping
with a ``name`` (``{"name": "custom_cnn", "filters": [32, 64, 128, 256]}``); `describe` says what an
architecture is without reading code. The naming contract is in `lungnet.models.contract`; the layout:

- ``registry.py``: the registries (no family imported there); ``contract.py``: names and helpers;
- ``weights.py``: weights files, ImageNet download errors, provenance;
- ``layers/``: blocks and layers shared by families; ``encoders/``, ``classifiers/``, ``segmenters/``.
"""

from __future__ import annotations

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models import classifiers, encoders, segmenters  # noqa: F401  (registers the families)
from lungnet.models.contract import (
    BACKBONE_INPUT_NAME,
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    inference_model,
)
from lungnet.models.describe import describe, list_models
from lungnet.models.encoders import build_encoder
from lungnet.models.registry import (
    CLASSIFIERS,
    ENCODERS,
    REGISTRIES,
    SEGMENTERS,
    ClassifierConfig,
    EncoderConfig,
    SegmenterConfig,
)
from lungnet.models.weights import WeightsError, WeightsUnavailableError


def build_classifier(config, input_shape: tuple[int, int, int] = (128, 128, 3), num_classes: int = 2):
    """A classifier: input ``image`` in [0, 1], output ``probabilities`` (see `lungnet.models.contract`)."""
    if not is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes: {num_classes!r} must be an integer >= 2")
    return CLASSIFIERS.build(config, input_shape, num_classes)


def build_segmenter(config, input_shape: tuple[int, int, int] = (256, 256, 1)):
    """A segmenter: output ``probabilities`` ``[B, H, W, 1]`` (and ``aux_*`` with deep supervision)."""
    return SEGMENTERS.build(config, input_shape)


__all__ = [
    "BACKBONE_INPUT_NAME",
    "CLASSIFIERS",
    "EMBEDDING_NAME",
    "ENCODERS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "REGISTRIES",
    "SEGMENTERS",
    "ClassifierConfig",
    "EncoderConfig",
    "SegmenterConfig",
    "WeightsError",
    "WeightsUnavailableError",
    "build_classifier",
    "build_encoder",
    "build_segmenter",
    "describe",
    "inference_model",
    "list_models",
]
