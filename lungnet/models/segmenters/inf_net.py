"""Inf-Net (Fan et al., IEEE TMI 2020): parallel partial decoder, reverse attention and edge attention.

On an encoder's pyramid (the paper's f2..f5 are lungnet's P2..P5, strides 4..32)::

    r_k     = RFB(P_k) to 32 channels, k = 3, 4, 5
    S_g     = PPD(r_5, r_4, r_3)                          the global map, stride 8       -> aux_global
    e       = three convs on P2 (1x1 then 3x3, 3x3; 64)     the edge features, stride 4
    S_edge  = conv(e)                                                                    -> aux_edge
    S_5     = RA(P5, down(S_g), down(e))                  256 wide, three 5x5 convs       -> aux_ra5
    S_4     = RA(P4, up(S_5),   down(e))                   64 wide, two 3x3 convs         -> aux_ra4
    S_3     = RA(P3, up(S_4),   down(e))                   64 wide, two 3x3 convs         -> probabilities

each RA adding its residual to the map it was given (`lungnet.models.layers.inf_net`). Every map is
bilinearly resized to the input size and passed through a float32 sigmoid; the loss supervises all five
(the edge against the mask's boundary), and evaluation and serving read ``probabilities`` (S_3) only.

Reference facts kept: RFB and PPD widths, RA widths 256 / 64 / 64 and kernels 5 / 3 / 3, the edge branch on
the shallowest stage, conv + BN without activation wherever the reference does that. One difference: the
PPD's 2x up-sampling uses half-pixel centres (Keras' bilinear) where the reference aligns corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import AUX_PREFIX, EDGE_OUTPUT, INPUT_NAME, OUTPUT_NAME, check_input_shape
from lungnet.models.layers.inf_net import (
    ResizeTo,
    basic_conv,
    parallel_partial_decoder,
    receptive_field_block,
    reverse_attention,
)
from lungnet.models.registry import SEGMENTERS
from lungnet.models.segmenters.common import EncoderDecoderConfig, build_pyramid

GLOBAL_OUTPUT = f"{AUX_PREFIX}global"
LEVELS = ("P2", "P3", "P4", "P5")  # the stages Inf-Net reads: edge on P2, decoders on P3..P5
# (stage, its RA output's name, convs, kernel size, kernel of the 1-channel conv), deepest first
RA_STAGES = (
    ("P5", f"{AUX_PREFIX}ra5", 3, 5, 1),
    ("P4", f"{AUX_PREFIX}ra4", 2, 3, 3),
    ("P3", OUTPUT_NAME, 2, 3, 3),
)
SIDE_OUTPUTS = (GLOBAL_OUTPUT, RA_STAGES[0][1], RA_STAGES[1][1], EDGE_OUTPUT)


def _positive_ints(value, field: str, length: int | None = None) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, list | tuple) else (value,)
    if (length and len(values) != length) or not all(is_int(v) and v >= 1 for v in values):
        count = f"{length} " if length else ""
        raise ConfigError(f"model.{field}: {value!r} must be {count}integer(s) >= 1")
    return values


@dataclass(frozen=True)
class InfNetConfig(EncoderDecoderConfig):
    """``encoder``: any registered encoder with levels P2..P5 (``resnet50``, the paper's choice;
    ``res2net50``, the reference code's; ``resnet101``; ``conv`` with ``depth >= 5`` for tiny models).
    ``rfb_channels``: the reduced width of P3..P5; ``edge_channels``: the edge branch's width;
    ``ra_channels``: the widths of the RA modules on P5, P4, P3."""

    name: str = "inf_net"
    encoder: str = "resnet50"
    depth: int = 5  # of the conv encoder only
    batch_norm: bool = True  # of the conv encoder only
    rfb_channels: int = 32
    edge_channels: int = 64
    ra_channels: tuple[int, int, int] = (256, 64, 64)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_ints(self.rfb_channels, "rfb_channels", 1)
        _positive_ints(self.edge_channels, "edge_channels", 1)
        object.__setattr__(self, "ra_channels", _positive_ints(self.ra_channels, "ra_channels", 3))
        if self.encoder == "conv" and self.depth < 5:
            raise ConfigError(f"model.depth: {self.depth} must be >= 5 for Inf-Net (it reads levels P2..P5)")


def _map_output(logits, size_of, name: str):
    """A logit map resized to the input's size and turned into float32 probabilities (layer `name`)."""
    full = ResizeTo(dtype="float32", name=f"{name}_resize")([logits, size_of])
    return layers.Activation("sigmoid", dtype="float32", name=name)(full)


@SEGMENTERS.register(
    "inf_net",
    InfNetConfig,
    family="inf_net",
    description="Inf-Net (Fan et al. 2020): RFB + parallel partial decoder, reverse and edge attention; "
    "deep supervision as aux_* side outputs",
    side_outputs=lambda config: SIDE_OUTPUTS,
    input_scaling="what its encoder expects ([0, 1] for the pretrained ones), any channels without ImageNet",
)
def build_inf_net(config: InfNetConfig, input_shape=(352, 352, 3)) -> keras.Model:
    inputs = keras.Input(shape=check_input_shape(input_shape, 32, what="Inf-Net"), name=INPUT_NAME)
    pyramid = build_pyramid(config, inputs, "plain", config.batch_norm)
    missing = [k for k in LEVELS if k not in pyramid]
    if missing:
        raise ConfigError(
            f"model.encoder: {config.encoder!r} has levels {list(pyramid)}; Inf-Net needs {list(LEVELS)}"
        )
    reduced = {k: receptive_field_block(pyramid[k], config.rfb_channels, f"rfb{k[1:]}") for k in LEVELS[1:]}
    global_logits = parallel_partial_decoder(reduced["P5"], reduced["P4"], reduced["P3"], "ppd")

    width = config.edge_channels
    edge = basic_conv(pyramid["P2"], width, 1, "edge_1")
    edge = basic_conv(edge, width, 3, "edge_2")
    edge = basic_conv(edge, width, 3, "edge_3")  # the edge guidance the RA modules read
    edge_logits = basic_conv(edge, 1, 3, "edge_logits")

    outputs = {
        GLOBAL_OUTPUT: _map_output(global_logits, inputs, GLOBAL_OUTPUT),
        EDGE_OUTPUT: _map_output(edge_logits, inputs, EDGE_OUTPUT),
    }
    logits = global_logits
    for (level, output, convs, kernel, final_kernel), ra_width in zip(
        RA_STAGES, config.ra_channels, strict=True
    ):
        features = pyramid[level]
        previous = ResizeTo(dtype="float32", name=f"ra{level[1:]}_previous")([logits, features])
        edge_here = ResizeTo(dtype="float32", name=f"ra{level[1:]}_edge")([edge, features])
        logits = reverse_attention(
            features,
            previous,
            edge_here,
            width=ra_width,
            convs=convs,
            kernel_size=kernel,
            final_kernel=final_kernel,
            name=f"ra{level[1:]}",
        )
        outputs[output] = _map_output(logits, inputs, output)
    # probabilities first: the segmentation study compiles its IoU metric on the first output
    ordered = {name: outputs[name] for name in (OUTPUT_NAME, *SIDE_OUTPUTS)}
    return keras.Model(inputs, ordered, name=config.name)
