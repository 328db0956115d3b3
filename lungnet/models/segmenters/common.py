"""What the U-Net-shaped segmenters share: their config fields, the encoder they name, the output head."""

from __future__ import annotations

from dataclasses import dataclass

from keras import layers

from lungnet.config import check_rate, is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import OUTPUT_NAME, Pyramid, check_input_shape, level_stride
from lungnet.models.encoders.conv import ConvEncoderConfig
from lungnet.models.registry import ENCODERS, SegmenterConfig
from lungnet.models.weights import validate_weights_option

DEEPEST_STRIDE = 32  # of the pretrained encoders (P5)


@dataclass(frozen=True)
class EncoderDecoderConfig(SegmenterConfig):
    """``encoder``: ``conv`` (lungnet's own, shaped by ``depth`` and ``filters``: the width of the top level,
    doubled per level down) or any registered encoder (then ``encoder_weights`` applies and ``depth`` /
    ``filters`` do not). ``dropout``: a spatial dropout rate on the deepest level."""

    depth: int = 4
    filters: int = 32
    dropout: float = 0.0
    encoder: str = "conv"
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        if not is_int(self.depth) or self.depth < 1:
            raise ConfigError(f"model.depth: {self.depth!r} must be an integer >= 1")
        if not is_int(self.filters) or self.filters < 1:
            raise ConfigError(f"model.filters: {self.filters!r} must be an integer >= 1")
        check_rate(self.dropout, "model.dropout")
        ENCODERS.get(self.encoder, "model.encoder")
        validate_weights_option(self.encoder_weights, "model.encoder_weights")
        if not isinstance(getattr(self, "batch_norm", False), bool):
            raise ConfigError(f"model.batch_norm: {self.batch_norm!r} must be true or false")

    def encoder_config(self, block: str, batch_norm: bool):
        if self.encoder == "conv":
            return ConvEncoderConfig(
                depth=self.depth, filters=self.filters, block=block, batch_norm=batch_norm
            )
        return ENCODERS.parse({"name": self.encoder, "weights": self.encoder_weights}, "model.encoder")


def build_pyramid(config: EncoderDecoderConfig, inputs, block: str, batch_norm: bool) -> Pyramid:
    """The named encoder's pyramid on `inputs`, its deepest level after the configured spatial dropout."""
    if config.encoder != "conv":  # the conv encoder checks its own 2**depth
        check_input_shape(tuple(inputs.shape[1:]), DEEPEST_STRIDE, what=f"encoder {config.encoder}")
    pyramid = dict(ENCODERS.build(config.encoder_config(block, batch_norm), inputs))
    keys = list(pyramid)
    strides = [level_stride(k) for k in keys]
    if any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
        raise ConfigError(f"encoder {config.encoder}: pyramid levels {keys} are not consecutive halvings")
    if config.dropout > 0:
        pyramid[keys[-1]] = layers.SpatialDropout2D(config.dropout, name="bottleneck_dropout")(
            pyramid[keys[-1]]
        )
    return pyramid


def sigmoid_head(x, name: str = OUTPUT_NAME, upsample: int = 1):
    """1x1 conv to one logit (bilinearly up-sampled to full size if needed) -> sigmoid in float32."""
    prefix = "" if name == OUTPUT_NAME else f"{name}_"
    logits = layers.Conv2D(1, 1, name=f"{prefix}logits")(x)
    if upsample > 1:
        logits = layers.UpSampling2D(upsample, interpolation="bilinear", name=f"{prefix}logits_upsample")(
            logits
        )
    # float32 output: keeps the probabilities (and the loss) exact under a mixed-precision policy
    return layers.Activation("sigmoid", dtype="float32", name=name)(logits)
