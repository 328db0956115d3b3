"""The config of encoders that can start from pretrained weights, and the input-channel rule they share."""

from __future__ import annotations

from dataclasses import dataclass

from lungnet.errors import ConfigError
from lungnet.models.registry import EncoderConfig
from lungnet.models.weights import validate_weights_option


@dataclass(frozen=True)
class PretrainedEncoderConfig(EncoderConfig):
    """``weights``: ``"imagenet"`` (downloaded), a path to a weights file of the same base, or ``None``."""

    weights: str | None = "imagenet"

    def __post_init__(self) -> None:
        validate_weights_option(self.weights)


def check_rgb(weights: str | None, channels: int) -> None:
    if weights is not None and channels != 3:
        raise ConfigError(
            f"model.weights: {weights!r} are for 3-channel (RGB) images, but the input has {channels} "
            "channel(s); set data.preprocess.channels: 3 (grey replicated) or model.weights: null"
        )
