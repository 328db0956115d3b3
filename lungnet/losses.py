"""Segmentation losses on sigmoid probabilities: Dice, binary focal, and their weighted sum (hybrid).

Each loss returns one value per sample (Dice over the whole mask, focal as a mean over pixels) and leaves the
reduction over the batch to Keras (``reduction``, default the batch mean). They compute in float32 whatever
the inputs' dtype, so they work under a mixed-precision policy, and are registered for Keras serialisation:
a ``.keras`` model compiled with one of them loads without ``custom_objects``.

``y_true`` is a mask in {0, 1} (soft labels in [0, 1] are accepted: the focal terms are then interpolated
between the two classes); ``y_pred`` a probability, e.g. the ``probabilities`` output of
`lungnet.models.build_segmenter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
from keras import ops

from lungnet.errors import ConfigError

LossName = Literal["hybrid", "dice", "focal", "bce"]
LOSS_NAMES = ("hybrid", "dice", "focal", "bce")

__all__ = ["LOSS_NAMES", "DiceLoss", "FocalLoss", "HybridLoss", "LossConfig", "build_loss"]


def _check(field: str, value, low: float, high: float | None = None) -> None:
    """ConfigError ``loss.{field}: ...`` unless `value` is a number in [low, high] (no bound if None)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        where = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(f"loss.{field}: {value!r} must be a number {where}")


def _prepare(y_true, y_pred):
    """Both in float32, and a mask ``[B, H, W]`` given a channel axis to match ``y_pred`` ``[B, H, W, 1]``."""
    # float16 sums over a 256x256 mask overflow (max 65504) and log(p) loses precision near 0 and 1
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, -1)
    return y_true, y_pred


def _non_batch_axes(x) -> list[int]:
    return list(range(1, len(x.shape)))


def dice_per_sample(y_true, y_pred, smooth: float = 1.0):
    """``1 - (2 sum(y p) + smooth) / (sum(y) + sum(p) + smooth)`` per sample, summed over all non-batch axes.

    ``smooth > 0`` keeps an empty mask predicted empty at loss 0 (with 0 it is 0/0, NaN).
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    axes = _non_batch_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def focal_per_sample(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Binary focal loss ``-alpha_t (1 - p_t)**gamma log(p_t)``, the mean over pixels of each sample.

    ``p_t`` is p for y = 1 and 1 - p for y = 0, ``alpha_t`` alpha for y = 1 and 1 - alpha for y = 0; p is
    clipped to [eps, 1 - eps] (``keras.backend.epsilon()``) so that log(p_t) stays finite.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    eps = keras.backend.epsilon()
    p = ops.clip(y_pred, eps, 1.0 - eps)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    loss = -alpha_t * ops.power(1.0 - p_t, gamma) * ops.log(p_t)
    return ops.mean(loss, axis=_non_batch_axes(loss))


@keras.saving.register_keras_serializable(package="lungnet")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss per sample (`dice_per_sample`), then the Keras reduction over the batch."""

    def __init__(self, smooth: float = 1.0, name: str = "dice_loss", **kwargs):
        _check("smooth", smooth, 0.0)
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return dice_per_sample(y_true, y_pred, self.smooth)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="lungnet")
class FocalLoss(keras.losses.Loss):
    """Binary focal loss (Lin et al. 2017) per sample (`focal_per_sample`), then the Keras reduction."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name: str = "focal_loss", **kwargs):
        _check("alpha", alpha, 0.0, 1.0)
        _check("gamma", gamma, 0.0)
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return focal_per_sample(y_true, y_pred, self.alpha, self.gamma)

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="lungnet")
class HybridLoss(keras.losses.Loss):
    """``lam * Dice + (1 - lam) * focal`` per sample: Dice for the overlap, focal for the per-pixel errors."""

    def __init__(
        self,
        lam: float = 0.5,
        alpha: float = 0.25,
        gamma: float = 2.0,
        smooth: float = 1.0,
        name: str = "hybrid_loss",
        **kwargs,
    ):
        _check("lam", lam, 0.0, 1.0)
        _check("alpha", alpha, 0.0, 1.0)
        _check("gamma", gamma, 0.0)
        _check("smooth", smooth, 0.0)
        super().__init__(name=name, **kwargs)
        self.lam = float(lam)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        dice = dice_per_sample(y_true, y_pred, self.smooth)
        focal = focal_per_sample(y_true, y_pred, self.alpha, self.gamma)
        return self.lam * dice + (1.0 - self.lam) * focal

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "lam": self.lam,
            "alpha": self.alpha,
            "gamma": self.gamma,
            "smooth": self.smooth,
        }


@dataclass(frozen=True)
class LossConfig:
    """The segmentation loss (YAML: the ``loss:`` mapping). ``lam`` weights Dice against focal (hybrid);
    ``alpha`` and ``gamma`` are the focal parameters, ``smooth`` Dice's smoothing term. Keys a loss does not
    use are ignored (bce uses none)."""

    name: LossName = "hybrid"
    lam: float = 0.5
    alpha: float = 0.25
    gamma: float = 2.0
    smooth: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ConfigError(f"loss.name: {self.name!r} is not one of {list(LOSS_NAMES)}")
        _check("lam", self.lam, 0.0, 1.0)
        _check("alpha", self.alpha, 0.0, 1.0)
        _check("gamma", self.gamma, 0.0)
        _check("smooth", self.smooth, 0.0)


def build_loss(config: LossConfig) -> keras.losses.Loss:
    """The Keras loss for `config`; ``bce`` is ``keras.losses.BinaryCrossentropy`` on probabilities."""
    if not isinstance(config, LossConfig):
        raise ConfigError(f"loss: expected a LossConfig, got {type(config).__name__}")
    if config.name == "hybrid":
        return HybridLoss(lam=config.lam, alpha=config.alpha, gamma=config.gamma, smooth=config.smooth)
    if config.name == "dice":
        return DiceLoss(smooth=config.smooth)
    if config.name == "focal":
        return FocalLoss(alpha=config.alpha, gamma=config.gamma)
    return keras.losses.BinaryCrossentropy()
