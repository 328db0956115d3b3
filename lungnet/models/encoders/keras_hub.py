"""keras-hub backbones as feature-pyramid encoders (random weights offline; ImageNet presets online).

keras-hub's backbones build their own input, so the backbone is called as one nested model on the
caller's tensor; each pyramid level then passes through an identity layer ``encoder_P{k}`` so that the maps
(Grad-CAM's among them) are layers of the caller's graph. ``backbone_input`` standardises ``[0, 1]`` images
with the ImageNet mean and std, as keras-hub's own image converter does for these presets. A new backbone is
one row of `BACKBONES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
from keras import layers

from lungnet.models.contract import BACKBONE_INPUT_NAME, Pyramid, check_input_shape
from lungnet.models.encoders.applications import IMAGENET_MEAN, IMAGENET_STD
from lungnet.models.encoders.pretrained import PretrainedEncoderConfig, check_rgb
from lungnet.models.registry import ENCODERS
from lungnet.models.weights import (
    WeightsUnavailableError,
    check_encoder_weights_option,
    load_weights_file,
    weights_path,
)


@dataclass(frozen=True)
class Backbone:
    constructor: str  # a keras_hub.models class
    arguments: dict = field(default_factory=dict)
    preset: str = ""  # the ImageNet preset of the same architecture
    levels: tuple[str, ...] = ("P2", "P3", "P4", "P5")  # its pyramid_outputs
    min_size: int = 32


BACKBONES = {
    # ResNet34-D (He et al., "Bag of Tricks", 2019): deep 32-32-64 stem, stride on the 3x3, average-pool
    # shortcuts; UNAR's encoder.
    "resnet34_d": Backbone(
        "ResNetBackbone",
        {
            "input_conv_filters": [32, 32, 64],
            "input_conv_kernel_sizes": [3, 3, 3],
            "stackwise_num_filters": [64, 128, 256, 512],
            "stackwise_num_blocks": [3, 4, 6, 3],
            "stackwise_num_strides": [1, 2, 2, 2],
            "block_type": "basic_block_vd",
        },
        preset="resnet_vd_34_imagenet",
    ),
    # ResNet34 (He et al. 2016): 7x7 stem, basic blocks; Res34UNetV2's encoder. keras-hub has no ImageNet
    # preset of it, so it is built with random weights (or from a weights file).
    "resnet34": Backbone(
        "ResNetBackbone",
        {
            "input_conv_filters": [64],
            "input_conv_kernel_sizes": [7],
            "stackwise_num_filters": [64, 128, 256, 512],
            "stackwise_num_blocks": [3, 4, 6, 3],
            "stackwise_num_strides": [1, 2, 2, 2],
            "block_type": "basic_block",
        },
    ),
}


def _explanation_layer(config: PretrainedEncoderConfig) -> str:
    return "encoder_P5"


@ENCODERS.register(
    tuple(BACKBONES),
    PretrainedEncoderConfig,
    family="keras_hub",
    description="keras-hub backbone (ResNet34, ResNet34-D), nested; ImageNet preset where one exists and downloads",
    explanation_layer=_explanation_layer,
    input_scaling="[0, 1], 3 channels for ImageNet weights (ImageNet mean/std inside)",
    pyramid_keys=lambda c: BACKBONES[c.name].levels,
)
def build_keras_hub_encoder(config: PretrainedEncoderConfig, x) -> Pyramid:
    spec = BACKBONES[config.name]
    shape = check_input_shape(tuple(x.shape[1:]), minimum=spec.min_size, what=config.name)
    check_rgb(config.weights, shape[-1])
    check_encoder_weights_option(config.weights, config.name, shape)
    rgb = shape[-1] == 3  # grey or multi-channel inputs: the mean of the three channels' statistics
    x = layers.Normalization(
        mean=IMAGENET_MEAN if rgb else sum(IMAGENET_MEAN) / 3,
        variance=[s**2 for s in IMAGENET_STD] if rgb else (sum(IMAGENET_STD) / 3) ** 2,
        name=BACKBONE_INPUT_NAME,
    )(x)
    backbone = _backbone(config, spec, shape)
    features = keras.Model(backbone.inputs, backbone.pyramid_outputs, name=f"{config.name}_backbone")(x)
    return {key: layers.Identity(name=f"encoder_{key}")(features[key]) for key in sorted(features)}


def _backbone(config: PretrainedEncoderConfig, spec: Backbone, shape):
    import keras_hub  # noqa: PLC0415  (imported on use: it takes a second)

    constructor = getattr(keras_hub.models, spec.constructor)
    if config.weights == "imagenet":
        if not spec.preset:
            raise WeightsUnavailableError(
                f"{config.name}: keras-hub has no ImageNet preset of this backbone; set `model.weights: null` "
                "(random initialisation) or a path to a weights file of this backbone"
            )
        try:
            return constructor.from_preset(spec.preset, image_shape=shape)
        except Exception as exc:  # no network (kagglehub raises its own errors): the caller decides
            raise WeightsUnavailableError(
                f"{config.name}: the keras-hub preset {spec.preset!r} could not be loaded ({exc}); set "
                "`model.weights: null` (random initialisation) or a path to a weights file of this backbone"
            ) from exc
    what = f"a keras-hub {spec.constructor} ({config.name})"
    if config.weights is not None:
        weights_path(config.weights, what)
    backbone = constructor(**spec.arguments, image_shape=shape)
    if config.weights is not None:
        load_weights_file(backbone, config.weights, what)
    return backbone
