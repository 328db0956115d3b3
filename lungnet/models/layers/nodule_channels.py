"""The seven-channel view of a nodule that NoduleHyperFusionNet reads, and its mask-weighted pooling.

Both are plain `keras.ops` (backend-neutral: the same layer runs under TensorFlow in tf.data-fed training
and serving, and under JAX on the GPU machine). From a grey slice ``g`` in [0, 1] and a nodule mask ``m``
in [0, 1] (a reader's outline in phase 1, a segmenter's in phase 2), all channels in [0, 1]:

====  ===========  =========================================================================================
 0    ct           ``g`` (the mean of the image's channels)
 1    mask         ``m``
 2    nodule       ``g * m``: the nodule's own intensities, the background zeroed
 3    surround     ``g * (dilate_r(m) - m)``: a ring ``ring_px`` wide around the outline (the tissue a
                   spiculated or pleural-attached nodule reaches into)
 4    edges        the Sobel gradient magnitude of ``g`` / 4, clipped at 1 (margin sharpness)
 5    texture      2 x the standard deviation of ``g`` over 5 x 5 pixels (heterogeneity, cavitation)
 6    proximity    ``mean_k dilate_k(m)`` for k = 0 .. K-1: 1 inside the outline, falling by 1/K per pixel
                   (chessboard distance) outside it, 0 beyond ``proximity_px`` = K pixels
====  ===========  =========================================================================================

Dilation is a 3 x 3 max-pool (stride 1) repeated; borders are padded by mirroring, so no channel sees a
false edge at the image's border.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["CHANNEL_NAMES", "MaskedAveragePool", "NoduleChannels"]

CHANNEL_NAMES = ("ct", "mask", "nodule", "surround", "edges", "texture", "proximity")
TEXTURE_WINDOW = 5
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype="float32")


def _dilate(mask, times: int):
    for _ in range(times):
        mask = ops.max_pool(mask, pool_size=3, strides=1, padding="same")
    return mask


def _filtered(grey, kernel: np.ndarray):
    """`grey` [B, H, W, 1] convolved with a fixed k x k `kernel`, its borders mirrored (same size out)."""
    pad = kernel.shape[0] // 2
    padded = ops.pad(grey, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="symmetric")
    weights = ops.convert_to_tensor(kernel[:, :, None, None], dtype=grey.dtype)
    return ops.conv(padded, weights, strides=1, padding="valid")


@keras.saving.register_keras_serializable(package="lungnet")
class NoduleChannels(keras.layers.Layer):
    """``[image [B, H, W, C], mask [B, H, W, 1]] -> [B, H, W, 7]`` (the channels of the module docstring).
    No weights; the mask gets no gradient (it is an input, or a segmenter's output trained by its own loss)."""

    def __init__(self, ring_px: int = 4, proximity_px: int = 16, **kwargs):
        super().__init__(**kwargs)
        if int(ring_px) < 1 or int(proximity_px) < 1:
            raise ValueError(f"ring_px {ring_px!r} and proximity_px {proximity_px!r} must be >= 1")
        self.ring_px, self.proximity_px = int(ring_px), int(proximity_px)

    def build(self, input_shape):
        image, mask = input_shape
        if len(image) != 4 or len(mask) != 4 or mask[-1] != 1 or tuple(image[1:3]) != tuple(mask[1:3]):
            raise ValueError(
                f"NoduleChannels takes [image [B, H, W, C], mask [B, H, W, 1]] of one size; got image "
                f"{tuple(image)} and mask {tuple(mask)}"
            )
        super().build(input_shape)

    def call(self, inputs):
        image, mask = inputs
        grey = ops.mean(ops.cast(image, self.compute_dtype), axis=-1, keepdims=True)
        mask = ops.clip(ops.stop_gradient(ops.cast(mask, self.compute_dtype)), 0.0, 1.0)
        ring = ops.relu(_dilate(mask, self.ring_px) - mask)
        grad_x, grad_y = _filtered(grey, _SOBEL_X), _filtered(grey, _SOBEL_X.T.copy())
        edges = ops.minimum(ops.sqrt(grad_x * grad_x + grad_y * grad_y + 1e-12) / 4.0, 1.0)
        window = np.full((TEXTURE_WINDOW, TEXTURE_WINDOW), 1.0 / TEXTURE_WINDOW**2, dtype="float32")
        mean, mean_sq = _filtered(grey, window), _filtered(grey * grey, window)
        texture = ops.minimum(2.0 * ops.sqrt(ops.relu(mean_sq - mean * mean) + 1e-12), 1.0)
        proximity, dilated = mask, mask
        for _ in range(self.proximity_px - 1):
            dilated = _dilate(dilated, 1)
            proximity = proximity + dilated
        proximity = proximity / float(self.proximity_px)
        channels = [grey, mask, grey * mask, grey * ring, edges, texture, proximity]
        return ops.concatenate(channels, axis=-1)

    def compute_output_shape(self, input_shape):
        image_shape = input_shape[0]
        return (*image_shape[:-1], len(CHANNEL_NAMES))

    def get_config(self):
        return {**super().get_config(), "ring_px": self.ring_px, "proximity_px": self.proximity_px}


@keras.saving.register_keras_serializable(package="lungnet")
class MaskedAveragePool(keras.layers.Layer):
    """``[features [B, h, w, C], mask [B, H, W, 1]] -> [B, C]``: the features averaged inside the mask
    (the mask average-pooled down to ``h x w``; H / h must be an integer). An empty mask gives zeros."""

    def call(self, inputs):
        features, mask = inputs
        factor = int(mask.shape[1]) // int(features.shape[1])
        values = ops.cast(features, "float32")  # sums over a map: float32 even under mixed precision
        mask = ops.stop_gradient(ops.cast(mask, "float32"))
        if factor > 1:
            mask = ops.average_pool(mask, pool_size=factor, strides=factor, padding="valid")
        total = ops.sum(values * mask, axis=(1, 2))
        return ops.cast(total / (ops.sum(mask, axis=(1, 2)) + 1e-6), features.dtype)

    def compute_output_shape(self, input_shape):
        features_shape = input_shape[0]
        return (features_shape[0], features_shape[-1])
