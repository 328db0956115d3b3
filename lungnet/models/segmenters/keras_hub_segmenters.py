"""keras-hub's segmenters in the zoo: DeepLabV3+ and SegFormer, built offline with random weights.

Each keras-hub task model is nested in a lungnet model whose output is the one-channel ``probabilities``
(its logits through a float32 sigmoid), so training, evaluation and export treat them like every other
segmenter. Both return maps at the input's size.

- ``deeplab_v3_plus``: keras-hub's DeepLabV3 with a low-level branch on P2 (which makes it V3+), atrous
  spatial pyramid pooling on P5 (rates 6, 12, 18), on a ResNet34 encoder (`BACKBONES` of
  `lungnet.models.encoders.keras_hub`, random initialisation: keras-hub has no ImageNet ResNet34).
- ``segformer``: keras-hub's SegFormer (Xie et al. 2021) on a Mix Transformer encoder; ``variant`` b0 (3.7 M
  parameters at one class) or b1, with the published layer sizes.

keras-hub's ``Resizing`` layers default to ``training=True`` when called without it, so a following batch norm
would use batch statistics in a plain ``model.export``; lungnet's export calls ``model(x, training=False)``
and its test checks the exported maps against Keras numerically.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import INPUT_NAME, OUTPUT_NAME, check_input_shape
from lungnet.models.encoders.keras_hub import BACKBONES
from lungnet.models.registry import SEGMENTERS, SegmenterConfig

# Mix Transformer sizes (Xie et al. 2021, Table 6), as keras-hub's presets have them.
MIT_VARIANTS = {
    "b0": {"hidden_dims": [32, 64, 160, 256], "layerwise_depths": [2, 2, 2, 2], "projection_filters": 256},
    "b1": {"hidden_dims": [64, 128, 320, 512], "layerwise_depths": [2, 2, 2, 2], "projection_filters": 256},
}


@dataclass(frozen=True)
class DeepLabV3PlusConfig(SegmenterConfig):
    name: str = "deeplab_v3_plus"
    encoder: str = "resnet34"
    dilation_rates: tuple[int, ...] = (6, 12, 18)
    projection_filters: int = 48  # the low-level (P2) branch's 1x1 projection

    def __post_init__(self) -> None:
        if self.encoder not in BACKBONES or BACKBONES[self.encoder].constructor != "ResNetBackbone":
            resnets = [k for k, v in BACKBONES.items() if v.constructor == "ResNetBackbone"]
            raise ConfigError(f"model.encoder: {self.encoder!r} is not one of {resnets}")
        rates = tuple(self.dilation_rates)
        if not rates or not all(is_int(r) and r >= 1 for r in rates):
            raise ConfigError(f"model.dilation_rates: {self.dilation_rates!r} must be integers >= 1")
        if not is_int(self.projection_filters) or self.projection_filters < 1:
            raise ConfigError(
                f"model.projection_filters: {self.projection_filters!r} must be an integer >= 1"
            )


@dataclass(frozen=True)
class SegFormerConfig(SegmenterConfig):
    name: str = "segformer"
    variant: str = "b0"
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.variant not in MIT_VARIANTS:
            raise ConfigError(f"model.variant: {self.variant!r} is not one of {sorted(MIT_VARIANTS)}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"model.drop_path_rate: {self.drop_path_rate!r} must be in [0, 1)")


def _wrap(task, input_shape, name: str) -> keras.Model:
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    logits = task(inputs)
    # float32 output: exact probabilities (and loss) under a mixed-precision policy
    return keras.Model(
        inputs, layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(logits), name=name
    )


@SEGMENTERS.register(
    "deeplab_v3_plus",
    DeepLabV3PlusConfig,
    family="keras_hub_segmenter",
    description="DeepLabV3+ (keras-hub): ASPP on P5, low-level branch on P2, ResNet34 encoder, random init",
    input_scaling="standardised intensities (the segmentation study's z-score), any channels",
)
def build_deeplab_v3_plus(config: DeepLabV3PlusConfig, input_shape=(256, 256, 1)) -> keras.Model:
    import keras_hub  # noqa: PLC0415  (imported on use: it takes a second)

    shape = check_input_shape(input_shape, 32, what="deeplab_v3_plus")
    spec = BACKBONES[config.encoder]
    encoder = keras_hub.models.ResNetBackbone(**spec.arguments, image_shape=shape)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,  # P5 (stride 32) to P2 (stride 4)
        dilation_rates=list(config.dilation_rates),
        low_level_feature_key="P2",
        projection_filters=config.projection_filters,
        image_shape=shape,
    )
    return _wrap(keras_hub.models.DeepLabV3ImageSegmenter(backbone, num_classes=1), shape, config.name)


@SEGMENTERS.register(
    "segformer",
    SegFormerConfig,
    family="keras_hub_segmenter",
    description="SegFormer (keras-hub): Mix Transformer encoder (b0 / b1) + all-MLP decoder, random init",
    input_scaling="standardised intensities (the segmentation study's z-score), any channels",
)
def build_segformer(config: SegFormerConfig, input_shape=(256, 256, 1)) -> keras.Model:
    import keras_hub  # noqa: PLC0415

    # keras-hub's Mix Transformer fails to build its attention below 64 px
    shape = check_input_shape(input_shape, 32, minimum=64, what="segformer")
    sizes = MIT_VARIANTS[config.variant]
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=sizes["layerwise_depths"],
        num_layers=4,
        layerwise_num_heads=[1, 2, 5, 8],
        layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=config.drop_path_rate,
        layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2],
        hidden_dims=sizes["hidden_dims"],
        image_shape=shape,
    )
    backbone = keras_hub.models.SegFormerBackbone(
        image_encoder=encoder, projection_filters=sizes["projection_filters"]
    )
    return _wrap(keras_hub.models.SegFormerImageSegmenter(backbone, num_classes=1), shape, config.name)
