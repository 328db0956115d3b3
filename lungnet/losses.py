"""Segmentation losses on sigmoid probabilities: Dice, binary focal, their weighted sum (hybrid), BCE + soft
Dice (the multi-dataset study's 0.52 / 0.48), and Inf-Net's boundary-weighted BCE + IoU (structure) with its
edge loss.

Each loss returns one value per sample (Dice over the whole mask, focal as a mean over pixels) and leaves the
reduction over the batch to Keras (``reduction``, default the batch mean). They compute in float32 whatever
the inputs' dtype, so they work under a mixed-precision policy, and are registered for Keras serialisation:
a ``.keras`` model compiled with one of them loads without ``custom_objects``.

``y_true`` is a mask in {0, 1} (soft labels in [0, 1] are accepted: the focal terms are then interpolated
between the two classes); ``y_pred`` a probability, e.g. the ``probabilities`` output of
`lungnet.models.build_segmenter`.

Inf-Net (Fan et al., IEEE TMI 2020) trains every map with ``L_seg = weighted BCE + weighted IoU``
(`StructureLoss`, `structure_per_sample`), the pixel weights rising near the mask's boundary
(`boundary_weights`), and its edge branch with a plain BCE against the mask's edges (`EdgeLoss`, `mask_edges`).
The reference code's weighted BCE is silently unweighted (``reduce='none'`` reads as a mean); here the
weights apply, as the paper's formula says. Only ``keras.ops`` is used, so these run on Keras' JAX backend too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
from keras import ops

from lungnet.config import is_int
from lungnet.errors import ConfigError, DataError

LossName = Literal["hybrid", "dice", "focal", "bce", "bce_dice", "structure"]
LOSS_NAMES = ("hybrid", "dice", "focal", "bce", "bce_dice", "structure")

__all__ = [
    "LOSS_NAMES",
    "DiceLoss",
    "EdgeLoss",
    "FocalLoss",
    "HybridLoss",
    "LossConfig",
    "StructureLoss",
    "boundary_weights",
    "build_loss",
    "mask_edges",
    "structure_per_sample",
]


def _check(field: str, value, low: float, high: float | None = None) -> None:
    """ConfigError ``loss.{field}: ...`` unless `value` is a number in [low, high] (no bound if None)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        where = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(f"loss.{field}: {value!r} must be a number {where}")


def _check_odd(field: str, value, low: int) -> None:
    """ConfigError ``loss.{field}: ...`` unless `value` is an odd integer >= low (a window centred on a pixel)."""
    if not (is_int(value) and value >= low and value % 2 == 1):
        raise ConfigError(f"loss.{field}: {value!r} must be an odd integer >= {low}")


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
class BCEDiceLoss(keras.losses.Loss):
    """``bce_weight * BCE + (1 - bce_weight) * soft Dice`` per sample (BCE: the mean over pixels); the
    multi-dataset study weights them 0.52 / 0.48."""

    def __init__(self, bce_weight: float = 0.52, smooth: float = 1.0, name: str = "bce_dice_loss", **kwargs):
        _check("bce_weight", bce_weight, 0.0, 1.0)
        _check("smooth", smooth, 0.0)
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        bce = ops.mean(_binary_crossentropy(y_true, y_pred, False), axis=tuple(range(1, len(y_pred.shape))))
        return self.bce_weight * bce + (1.0 - self.bce_weight) * dice_per_sample(y_true, y_pred, self.smooth)

    def get_config(self) -> dict:
        return {**super().get_config(), "bce_weight": self.bce_weight, "smooth": self.smooth}


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


# ------------------------------------------------------------------------------- Inf-Net: structure and edges


def _to_nhwc(x):
    """`x` as ``[B, H, W, C]`` (pooling needs both axes) and the function that restores its rank.

    Rank 2 is one ``[H, W]`` mask, rank 3 one ``[H, W, C]`` image (a tf.data element), rank 4 a batch.
    """
    rank = len(x.shape)
    if rank == 4:
        return x, lambda y: y
    if rank == 3:
        return ops.expand_dims(x, 0), lambda y: y[0]
    if rank == 2:
        return x[None, :, :, None], lambda y: y[0, :, :, 0]
    raise DataError(f"mask: expected [H, W], [H, W, C] or [B, H, W, C], got shape {tuple(x.shape)}")


def _binary_crossentropy(y_true, y_pred, from_logits: bool):
    """Per-pixel BCE; probabilities are clipped to [eps, 1 - eps] so log stays finite at p = 0 and 1."""
    if from_logits:  # max(x, 0) - x y + log(1 + exp(-|x|)): no overflow for large |x|
        return ops.relu(y_pred) - y_pred * y_true + ops.log1p(ops.exp(-ops.abs(y_pred)))
    eps = keras.backend.epsilon()
    p = ops.clip(y_pred, eps, 1.0 - eps)
    return -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))


def boundary_weights(mask, kernel_size: int = 31, weight: float = 5.0):
    """Inf-Net's pixel weights ``1 + weight * |avgpool_k(mask) - mask|`` (k x k mean, stride 1, same size).

    Pixels far from the boundary get 1; near it the local mean departs from the pixel's own label and the
    weight rises, to at most ``1 + weight``. Beyond the image border the mask counts as 0 and the padding is
    counted in the mean (PyTorch's zero padding with ``count_include_pad``, as in the reference): a plain
    window sum / k^2, so a mask touching the border is weighted as if background lay beyond it.
    """
    _check_odd("boundary_kernel", kernel_size, 1)
    _check("boundary_weight", weight, 0.0)
    mask, restore = _to_nhwc(ops.cast(mask, "float32"))
    pad = kernel_size // 2
    padded = ops.pad(mask, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    # the box mean is separable: k + k additions per pixel instead of k^2; 'valid' on the zero-padded map
    # divides every window by k^2, padding included
    local = ops.average_pool(padded, (kernel_size, 1), strides=1, padding="valid")
    local = ops.average_pool(local, (1, kernel_size), strides=1, padding="valid")
    return restore(1.0 + weight * ops.abs(local - mask))


def mask_edges(mask, size: int = 3):
    """The edges of a mask: its morphological gradient, dilation - erosion with a ``size`` x ``size`` square.

    For a binary mask and size 3 this is a 2 px band: the object's outermost pixels and the background
    pixels touching them (8-connectivity). Pixels beyond the image border are ignored (max-pooling's 'same'
    padding), so an object cut by the border has no edge along it. Shapes as `_to_nhwc`; float32 out. Only
    ``keras.ops``: it runs inside a tf.data map on the TensorFlow backend and in the losses on any backend.
    """
    _check_odd("edge_size", size, 3)
    mask, restore = _to_nhwc(ops.cast(mask, "float32"))
    dilation = ops.max_pool(mask, size, strides=1, padding="same")
    erosion = -ops.max_pool(-mask, size, strides=1, padding="same")
    return restore(dilation - erosion)


def _prepare_maps(y_true, y_pred):
    """`_prepare`, then both ``[B, H, W, C]``: the boundary weights pool over H and W."""
    y_true, y_pred = _prepare(y_true, y_pred)
    if len(y_pred.shape) == 3:
        y_true, y_pred = ops.expand_dims(y_true, -1), ops.expand_dims(y_pred, -1)
    known = zip(y_true.shape[1:], y_pred.shape[1:], strict=False)  # None: a size known only at run time
    if len(y_pred.shape) != 4 or any(a is not None and b is not None and a != b for a, b in known):
        raise DataError(
            f"loss: y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} must both be "
            "maps [B, H, W, 1] of one size (resize side outputs to the mask first)"
        )
    return y_true, y_pred


def structure_per_sample(
    y_true, y_pred, kernel_size: int = 31, weight: float = 5.0, from_logits: bool = False
):
    """Inf-Net's ``L_seg`` per sample: boundary-weighted BCE + boundary-weighted IoU.

    With w = `boundary_weights` of the mask m and p the probability (``sigmoid(y_pred)`` if `from_logits`):
    ``wbce = sum(w bce) / sum(w)`` and ``wiou = 1 - (sum(p m w) + 1) / (sum((p + m) w) - sum(p m w) + 1)``,
    sums over each sample's pixels. The IoU uses the unclipped p: its +1 terms keep it finite and a
    prediction of exactly 0 or 1 still gets its gradient.
    """
    y_true, y_pred = _prepare_maps(y_true, y_pred)
    w = boundary_weights(y_true, kernel_size, weight)
    p = ops.sigmoid(y_pred) if from_logits else y_pred
    axes = _non_batch_axes(y_pred)
    bce = _binary_crossentropy(y_true, y_pred, from_logits)
    wbce = ops.sum(w * bce, axis=axes) / ops.sum(w, axis=axes)
    inter = ops.sum(p * y_true * w, axis=axes)
    union = ops.sum((p + y_true) * w, axis=axes)
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return wbce + wiou


@keras.saving.register_keras_serializable(package="lungnet")
class StructureLoss(keras.losses.Loss):
    """Inf-Net's segmentation loss (`structure_per_sample`) per sample, then the Keras reduction (batch mean).

    Deep supervision applies it to each map (Inf-Net: its three reverse-attention outputs and the PPD's
    global map, each against the full-size mask) and sums; the edge branch takes `EdgeLoss`.
    """

    def __init__(
        self,
        kernel_size: int = 31,
        weight: float = 5.0,
        from_logits: bool = False,
        name: str = "structure_loss",
        **kwargs,
    ):
        _check_odd("boundary_kernel", kernel_size, 1)
        _check("boundary_weight", weight, 0.0)
        super().__init__(name=name, **kwargs)
        self.kernel_size = int(kernel_size)
        self.weight = float(weight)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        return structure_per_sample(y_true, y_pred, self.kernel_size, self.weight, self.from_logits)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "weight": self.weight,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="lungnet")
class EdgeLoss(keras.losses.Loss):
    """Inf-Net's ``L_edge``: BCE, the mean over pixels, between the predicted edge map and the true edges.

    With `from_mask` (default) ``y_true`` is the segmentation mask and its edges are `mask_edges` of it, so
    the edge output takes the same target as every other output; otherwise ``y_true`` is the edge map.
    """

    def __init__(
        self,
        size: int = 3,
        from_mask: bool = True,
        from_logits: bool = False,
        name: str = "edge_loss",
        **kwargs,
    ):
        _check_odd("edge_size", size, 3)
        super().__init__(name=name, **kwargs)
        self.size = int(size)
        self.from_mask = bool(from_mask)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare_maps(y_true, y_pred)
        edges = mask_edges(y_true, self.size) if self.from_mask else y_true
        bce = _binary_crossentropy(edges, y_pred, self.from_logits)
        return ops.mean(bce, axis=_non_batch_axes(bce))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "size": self.size,
            "from_mask": self.from_mask,
            "from_logits": self.from_logits,
        }


@dataclass(frozen=True)
class LossConfig:
    """The segmentation loss (YAML: the ``loss:`` mapping). ``lam`` weights Dice against focal (hybrid);
    ``alpha`` and ``gamma`` are the focal parameters, ``smooth`` Dice's smoothing term; ``boundary_kernel``
    and ``boundary_weight`` are the structure loss's pooling window and weight factor (`boundary_weights`).
    Keys a loss does not use are ignored (bce uses none)."""

    name: LossName = "hybrid"
    lam: float = 0.5
    alpha: float = 0.25
    gamma: float = 2.0
    smooth: float = 1.0
    boundary_kernel: int = 31
    boundary_weight: float = 5.0
    bce_weight: float = 0.52  # bce_dice: the BCE share (the multi-dataset study's)

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ConfigError(f"loss.name: {self.name!r} is not one of {list(LOSS_NAMES)}")
        _check("lam", self.lam, 0.0, 1.0)
        _check("alpha", self.alpha, 0.0, 1.0)
        _check("gamma", self.gamma, 0.0)
        _check("smooth", self.smooth, 0.0)
        _check_odd("boundary_kernel", self.boundary_kernel, 1)
        _check("boundary_weight", self.boundary_weight, 0.0)
        _check("bce_weight", self.bce_weight, 0.0, 1.0)


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
    if config.name == "structure":
        return StructureLoss(kernel_size=config.boundary_kernel, weight=config.boundary_weight)
    if config.name == "bce_dice":
        return BCEDiceLoss(bce_weight=config.bce_weight, smooth=config.smooth)
    return keras.losses.BinaryCrossentropy()
