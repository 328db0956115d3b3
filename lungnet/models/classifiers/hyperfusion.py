"""NoduleHyperFusionNet: malignancy from a slice and its nodule mask, read as seven channels.

The multi-dataset paper names the network and its inputs (seven nodule channels from the image and a mask,
trained on ground-truth masks, then on a segmenter's) but no public description of its layers was found, so
this is lungnet's design from that description, said as such wherever it is used:

::

    image [H, W, C] in [0, 1], mask [H, W, 1] in [0, 1]
    NoduleChannels -> [H, W, 7]   (ct, mask, nodule, surround, edges, texture, proximity; float32)
    stage1..stageN: 2 x (Conv3x3-BN-ReLU) -> MaxPool 2x2              (early fusion of the seven channels)
    per stage: global average + average inside the mask               (hyper-column: every scale, twice)
    + log(1 + mask area in pixels)                                     (the size the outline measures)
    concat -> embedding: Dense(embedding_units, ReLU) -> head_dropout -> probabilities

"Hyper" fusion: every stage's features are pooled and joined, so fine margin texture (early stages) and
the nodule's overall shape (late stages) reach the output side by side, each pooled over the whole crop
and inside the outline. Random initialisation (the seven channels have no ImageNet counterpart).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from lungnet.config import check_rate, is_int
from lungnet.errors import ConfigError
from lungnet.models.classifiers.head import classification_head
from lungnet.models.contract import EMBEDDING_NAME, INPUT_NAME, MASK_INPUT_NAME, check_input_shape
from lungnet.models.layers.conv import conv_bn_act
from lungnet.models.layers.mask_area import MaskArea
from lungnet.models.layers.nodule_channels import MaskedAveragePool, NoduleChannels
from lungnet.models.registry import CLASSIFIERS, ClassifierConfig

CHANNELS_LAYER = "nodule_channels"


@dataclass(frozen=True)
class NoduleHyperFusionConfig(ClassifierConfig):
    """``filters`` per stage (each stage halves the side); ``ring_px`` / ``proximity_px``: the surround's
    width and the proximity map's reach, in pixels of the model's input."""

    name: str = "nodule_hyperfusion"
    filters: tuple[int, ...] = (32, 64, 128, 256)
    embedding_units: int = 128
    dropout: float = 0.3
    ring_px: int = 4
    proximity_px: int = 16
    weights: None = None  # random initialisation only

    def __post_init__(self) -> None:
        filters = self.filters
        if (
            not isinstance(filters, list | tuple)
            or not filters
            or not all(is_int(f) and f >= 1 for f in filters)
        ):
            raise ConfigError(f"model.filters: {filters!r} must be a list of integers >= 1 (one per stage)")
        object.__setattr__(self, "filters", tuple(filters))
        for key in ("embedding_units", "ring_px", "proximity_px"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise ConfigError(f"model.{key}: {value!r} must be an integer >= 1")
        check_rate(self.dropout, "model.dropout")
        if self.weights is not None:
            raise ConfigError(
                f"model.weights: {self.weights!r}: nodule_hyperfusion trains from random initialisation "
                "(its seven input channels have no pretrained counterpart); leave weights out"
            )


def _last_stage(config: NoduleHyperFusionConfig) -> str:
    return f"stage{len(config.filters)}_2_act"


@CLASSIFIERS.register(
    "nodule_hyperfusion",
    NoduleHyperFusionConfig,
    family="nodule_hyperfusion",
    description="NoduleHyperFusionNet (lungnet's design): seven nodule channels from image + mask, every "
    "stage pooled globally and inside the mask, plus the mask's area",
    explanation_layer=_last_stage,
    extra_inputs=(MASK_INPUT_NAME,),
    input_scaling="image in [0, 1], any channels; mask [H, W, 1] in [0, 1] (0/1 outline)",
)
def build_nodule_hyperfusion(
    config: NoduleHyperFusionConfig, input_shape=(128, 128, 3), num_classes: int = 2
) -> keras.Model:
    stages = len(config.filters)
    shape = check_input_shape(input_shape, multiple=2**stages, minimum=2**stages, what="nodule_hyperfusion")
    image = keras.Input(shape=shape, name=INPUT_NAME)
    mask = keras.Input(shape=(*shape[:2], 1), name=MASK_INPUT_NAME)
    x = NoduleChannels(config.ring_px, config.proximity_px, dtype="float32", name=CHANNELS_LAYER)(
        [image, mask]
    )
    pooled = []
    for i, filters in enumerate(config.filters, start=1):
        x = conv_bn_act(x, filters, f"stage{i}_1")
        x = conv_bn_act(x, filters, f"stage{i}_2")
        pooled.append(layers.GlobalAveragePooling2D(name=f"stage{i}_global")(x))
        pooled.append(MaskedAveragePool(name=f"stage{i}_in_mask")([x, mask]))
        x = layers.MaxPooling2D(2, name=f"stage{i}_pool")(x)
    area = MaskArea(name="mask_area")(mask)
    pooled.append(layers.Activation("linear", dtype=pooled[0].dtype, name="mask_area_cast")(area))
    joined = layers.Concatenate(name="hyper_fusion")(pooled)
    embedding = layers.Dense(config.embedding_units, activation="relu", name=EMBEDDING_NAME)(joined)
    outputs = classification_head(embedding, num_classes, config.dropout)
    return keras.Model([image, mask], outputs, name="nodule_hyperfusion")
