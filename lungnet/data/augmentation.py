"""Random augmentation as Keras 3 preprocessing layers, for batches inside ``tf.data``.

Keras' random layers draw a different transform for every image of a batch, so the pipelines augment
after batching (one call per batch is much cheaper than one per image). Each layer keeps its own seeded
state, so a pipeline built with the same seed and run in the same order repeats its augmentations.

Images are expected in [0, 1] (what `lungnet.data.preprocessing` produces for the study chains). For
segmentation the same geometric transform must move image and mask together: `build_joint_augmenter`
stacks the mask as an extra channel, transforms the stack once and re-binarises the mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import keras
import tensorflow as tf

from lungnet.errors import ConfigError

FillMode = Literal["reflect", "constant", "nearest", "wrap"]
FILL_MODES = ("reflect", "constant", "nearest", "wrap")


@dataclasses.dataclass
class AugmentConfig:
    """Which random transforms to apply, and how strongly. Zero / False turns a transform off."""

    rotation: float = 0.1  # fraction of a full turn: 0.1 = up to +-36 degrees
    horizontal_flip: bool = True
    vertical_flip: bool = True
    translation: float = 0.1  # fraction of the image side, both axes
    zoom: float = 0.0  # fraction: 0.1 = zoom in or out by up to 10 %
    fill_mode: FillMode = "reflect"  # how pixels moved in from outside the image are filled
    randaugment: bool = False
    randaugment_ops: int = 2
    randaugment_factor: float = 0.5  # magnitude, 0-1
    augmix: bool = False
    augmix_factor: float = 0.3  # severity, 0-1
    seed: int | None = None  # None: the dataset's seed

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"augment.{field}: {getattr(self, field)!r} {why}")

        if not 0 <= self.rotation <= 0.5:
            raise bad("rotation", "must be a fraction of a turn in [0, 0.5]")
        if not 0 <= self.translation < 1:
            raise bad("translation", "must be in [0, 1)")
        if not 0 <= self.zoom < 1:
            raise bad("zoom", "must be in [0, 1)")
        if self.fill_mode not in FILL_MODES:
            raise bad("fill_mode", f"is not one of {list(FILL_MODES)}")
        if not self.randaugment_ops >= 1:
            raise bad("randaugment_ops", "must be >= 1")
        if not 0 < self.randaugment_factor <= 1:
            raise bad("randaugment_factor", "must be in (0, 1]")
        if not 0 < self.augmix_factor <= 1:
            raise bad("augmix_factor", "must be in (0, 1]")

    @property
    def geometric_only(self) -> bool:
        return not (self.randaugment or self.augmix)


def _geometric_layers(cfg: AugmentConfig, seed: int) -> list[keras.layers.Layer]:
    # Distinct seeds per layer: equal seeds would correlate e.g. rotation angle with translation.
    layers: list[keras.layers.Layer] = []
    flip = {
        (True, True): "horizontal_and_vertical",
        (True, False): "horizontal",
        (False, True): "vertical",
    }.get((cfg.horizontal_flip, cfg.vertical_flip))
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=seed))
    if cfg.rotation > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode=cfg.fill_mode, seed=seed + 1))
    if cfg.translation > 0:
        layers.append(
            keras.layers.RandomTranslation(
                cfg.translation, cfg.translation, fill_mode=cfg.fill_mode, seed=seed + 2
            )
        )
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode=cfg.fill_mode, seed=seed + 3))
    return layers


def build_augmenter(
    cfg: AugmentConfig, seed: int | None = None, value_range: tuple[float, float] = (0.0, 1.0)
) -> keras.layers.Pipeline:
    """Geometric layers (flip, rotation, translation, zoom), then RandAugment, then AugMix, as one layer.

    Call it on a batch ``[B, H, W, C]`` with ``training=True``. `seed` overrides ``cfg.seed``; with
    both None the seed is 0, so runs repeat by default.
    """
    seed = seed if seed is not None else (cfg.seed if cfg.seed is not None else 0)
    layers = _geometric_layers(cfg, seed)
    # RandAugment and AugMix assume 0-255 unless told otherwise; `value_range` tells them our images are in
    # [0, 1], which their photometric ops (posterize, solarize, equalise) rescale to and from internally.
    # RandAugment respects it exactly (checked: same output as on x*255, divided by 255).
    if cfg.randaugment:
        layers.append(
            keras.layers.RandAugment(
                value_range=value_range,
                num_ops=cfg.randaugment_ops,
                factor=cfg.randaugment_factor,
                seed=seed + 4,
            )
        )
    if cfg.augmix:
        # Keras 3.15's AugMix picks each chain's operations with Python's `random` when it is traced, so
        # inside tf.data every batch uses the same operation sequence (magnitudes and mixing weights still
        # vary per batch). The pipelines seed `random` around the trace so that this is repeatable.
        layers.append(keras.layers.AugMix(value_range=value_range, factor=cfg.augmix_factor, seed=seed + 5))
    if not layers:  # keras.layers.Pipeline fails on an empty list
        layers.append(keras.layers.Identity())
    return keras.layers.Pipeline(layers, name="augment")


def build_joint_augmenter(
    cfg: AugmentConfig, seed: int | None = None
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``(images [B,H,W,C], masks [B,H,W,1]) -> (images, masks)`` with the same geometric transform for both.

    The mask rides along as an extra channel, so it is resampled with exactly the image's transform
    (bilinear), then thresholded at 0.5 back to 0/1. Photometric augmentation (RandAugment, AugMix) mixes
    geometric and intensity operations that cannot be split apart, so it is refused here.
    """
    if not cfg.geometric_only:
        raise ConfigError(
            "augment: randaugment/augmix cannot be used for segmentation (their geometric operations would "
            "move the image but not the mask); use rotation/flips/translation/zoom"
        )
    augmenter = build_augmenter(cfg, seed)

    def augment(images: tf.Tensor, masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.convert_to_tensor(images, tf.float32)
        masks = tf.cast(masks, images.dtype)
        channels = images.shape[-1]
        if channels is None:
            raise ValueError("build_joint_augmenter: the image channel count must be static")
        stacked = augmenter(tf.concat([images, masks], axis=-1), training=True)
        out_images = stacked[..., :channels]
        out_masks = tf.cast(stacked[..., channels:] > 0.5, images.dtype)
        return out_images, out_masks

    return augment
