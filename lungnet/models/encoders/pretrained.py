"""The config of encoders that can start from pretrained weights, and the input-channel rule they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lungnet.errors import ConfigError
from lungnet.models.registry import EncoderConfig
from lungnet.models.weights import GENESIS, is_encoder_weights_file, validate_weights_option


@dataclass(frozen=True)
class PretrainedEncoderConfig(EncoderConfig):
    """``weights``: ``"imagenet"`` (downloaded), ``"genesis"`` (the Models Genesis base a study builds from
    its training patients, `lungnet.pretraining`), a path to a weights file of the same base, or ``None``."""

    weights: str | None = "imagenet"

    def __post_init__(self) -> None:
        validate_weights_option(self.weights, genesis=True)


def check_rgb(weights: str | None, channels: int) -> None:
    """ImageNet weights (downloaded or a Keras file) need 3 channels; a self-supervised base has the
    channels it was pretrained on (checked against its file)."""
    if weights is None or weights == GENESIS or is_encoder_weights_file(Path(weights).expanduser()):
        return
    if channels != 3:
        raise ConfigError(
            f"model.weights: {weights!r} are for 3-channel (RGB) images, but the input has {channels} "
            "channel(s); set data.preprocess.channels: 3 (grey replicated) or model.weights: null"
        )
