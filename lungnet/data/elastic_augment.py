"""The segmentation zoo's extra augmentations (the multi-dataset paper's table), on batches in tf.data.

Geometric ones move image and mask together (the mask rides along as a channel, as in
`lungnet.data.augmentation.build_joint_augmenter`); photometric ones touch the image only. Each transform is
applied to a random half of the batch, drawn from the batch's stateless seed, so batches still repeat
exactly. The images are the segmentation study's z-scores, not [0, 1] intensities, so:

- ``elastic`` / ``grid_distortion``: a random displacement field, uniform in [-m, m] x the image side at the
  nodes of a coarse grid (8 x 8 cells for elastic, smoothed bicubically; 5 x 5 for grid distortion,
  bilinear), up-sampled to every pixel; each output pixel reads the input there, bilinearly, with the
  borders clamped (the mask re-thresholded at 0.5 afterwards);
- ``brightness``: adds a uniform offset in [-b, b] (in the image's std units); ``contrast``: scales about
  the image's mean by a factor in [1 - c, 1 + c];
- ``gamma``: on the image's own min-max range, ``x' = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` with
  ``g`` in [1 - gamma, 1 + gamma] (the paper's 80-120 gamma limit is ``gamma: 0.2``);
- ``coarse_dropout``: up to N rectangles of up to ``coarse_dropout_size`` x the side set to the image's
  mean; the mask is left as it is (the nodule is still there, only hidden).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lungnet.data.opencv_batch import aligned_empty, opencv_single_threaded

ELASTIC_GRID = 8
DISTORTION_GRID = 5


def _half(seed, batch_size, k: int) -> tf.Tensor:
    """A [B] float 0/1 coin per image from sub-seed `k` of the batch seed."""
    sub = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), k)
    return tf.cast(tf.random.stateless_uniform([batch_size], sub) < 0.5, tf.float32)


def _uniform(seed, shape, k: int, low: float, high: float) -> tf.Tensor:
    sub = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), k)
    return tf.random.stateless_uniform(shape, sub, minval=low, maxval=high)


def displacement_field(batch_size, height, width, seed, magnitude: float, grid: int, method: str, k: int):
    """[B, H, W, 2] (dy, dx) pixels: uniform nodes on a grid x grid lattice, resized to every pixel."""
    side = tf.cast(tf.minimum(height, width), tf.float32)
    nodes = _uniform(seed, [batch_size, grid + 1, grid + 1, 2], k, -magnitude, magnitude) * side
    return tf.image.resize(nodes, [height, width], method=method)


def dense_warp(images, flow, resampler: str = "tensorflow") -> tf.Tensor:
    """out[b, y, x] = bilinear images[b, y + dy, x + dx], coordinates clamped to the image.

    `resampler` "tensorflow": four gathers per output pixel, pure TensorFlow ops. "opencv": ``cv2.remap``
    per image through ``tf.numpy_function`` (for tf.data), the same values to ~1e-5 (tested) at a fraction
    of the CPU time.
    """
    if resampler == "opencv":
        out = tf.numpy_function(
            _remap_opencv,
            [tf.cast(images, tf.float32), tf.cast(flow, tf.float32)],
            tf.float32,
            stateful=False,
        )
        out.set_shape(images.shape)
        return tf.cast(out, images.dtype)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    gy, gx = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    y = tf.clip_by_value(gy[None] + flow[..., 0], 0.0, tf.cast(height - 1, tf.float32))
    x = tf.clip_by_value(gx[None] + flow[..., 1], 0.0, tf.cast(width - 1, tf.float32))
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0i, x0i = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1i, x1i = tf.minimum(y0i + 1, height - 1), tf.minimum(x0i + 1, width - 1)
    b = tf.broadcast_to(tf.range(batch)[:, None, None], tf.shape(y0i))

    def at(yy, xx):
        return tf.gather_nd(images, tf.stack([b, yy, xx], axis=-1))

    top = at(y0i, x0i) * (1 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1 - wx) + at(y1i, x1i) * wx
    return top * (1 - wy) + bottom * wy


def _remap_opencv(images: np.ndarray, flow: np.ndarray) -> np.ndarray:
    import cv2

    batch, height, width, channels = images.shape
    grid_y, grid_x = np.mgrid[:height, :width].astype(np.float32)
    out = aligned_empty(images.shape, np.float32)
    map_y = np.empty((height, width), np.float32)
    map_x = np.empty((height, width), np.float32)
    remap = cv2.remap  # positional arguments: the loop runs once per image and channel
    with opencv_single_threaded(cv2):
        for i in range(batch):
            np.clip(np.add(grid_y, flow[i, ..., 0], out=map_y), 0, height - 1, out=map_y)
            np.clip(np.add(grid_x, flow[i, ..., 1], out=map_x), 0, width - 1, out=map_x)
            # one channel at a time: OpenCV interpolates single-channel float images exactly
            for c in range(channels):
                src = np.ascontiguousarray(images[i, ..., c])
                out[i, ..., c] = remap(src, map_x, map_y, cv2.INTER_LINEAR, None, cv2.BORDER_REPLICATE)
    return out


def warp_jointly(
    stacked, seed, elastic: float, grid_distortion: float, resampler: str = "tensorflow"
) -> tf.Tensor:
    """Elastic and grid distortion (each on a random half of the batch) of an image+mask stack."""
    shape = tf.shape(stacked)
    batch, height, width = shape[0], shape[1], shape[2]
    flow = tf.zeros([batch, height, width, 2])
    if elastic:
        field = displacement_field(batch, height, width, seed, elastic, ELASTIC_GRID, "bicubic", 11)
        flow += field * _half(seed, batch, 12)[:, None, None, None]
    if grid_distortion:
        field = displacement_field(
            batch, height, width, seed, grid_distortion, DISTORTION_GRID, "bilinear", 13
        )
        flow += field * _half(seed, batch, 14)[:, None, None, None]
    return dense_warp(stacked, flow, resampler)


def photometric(images, seed, brightness: float, contrast: float, gamma: float) -> tf.Tensor:
    """Brightness, contrast and gamma (each on a random half of the batch) of z-scored images."""
    batch = tf.shape(images)[0]

    def per_image(k: int, low: float, high: float) -> tf.Tensor:
        return _uniform(seed, [batch], k, low, high)[:, None, None, None]

    if gamma:
        g = per_image(21, 1.0 - gamma, 1.0 + gamma)
        # only the chosen half is raised to its power (tf.pow is the costly step), then written back
        chosen = tf.where(_half(seed, batch, 22) > 0)
        picked = tf.gather_nd(images, chosen)
        lo = tf.reduce_min(picked, axis=[1, 2, 3], keepdims=True)
        hi = tf.reduce_max(picked, axis=[1, 2, 3], keepdims=True)
        span = tf.maximum(hi - lo, 1e-6)
        gammaed = lo + span * tf.pow((picked - lo) / span, tf.gather_nd(g, chosen))
        images = tf.tensor_scatter_nd_update(images, chosen, gammaed)
    if contrast:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        factor = 1.0 + (per_image(23, -contrast, contrast)) * _half(seed, batch, 24)[:, None, None, None]
        images = mean + (images - mean) * factor
    if brightness:
        images = images + per_image(25, -brightness, brightness) * _half(seed, batch, 26)[:, None, None, None]
    return images


def coarse_dropout(images, seed, holes: int, size: float) -> tf.Tensor:
    """Up to `holes` rectangles per image (a random half of the batch) filled with the image's mean."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ys, xs = tf.range(h)[None], tf.range(w)[None]
    hidden = tf.zeros([batch, height, width], tf.bool)
    for i in range(holes):
        cy = _uniform(seed, [batch], 31 + 4 * i, 0.0, 1.0)[:, None] * h
        cx = _uniform(seed, [batch], 32 + 4 * i, 0.0, 1.0)[:, None] * w
        half_h = _uniform(seed, [batch], 33 + 4 * i, 0.25, 0.5)[:, None] * size * h
        half_w = _uniform(seed, [batch], 34 + 4 * i, 0.25, 0.5)[:, None] * size * w
        rows, columns = tf.abs(ys - cy) <= half_h, tf.abs(xs - cx) <= half_w  # a box is rows x columns
        hidden = hidden | (rows[:, :, None] & columns[:, None, :])
    hidden = hidden & (_half(seed, batch, 30)[:, None, None] > 0)
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.where(hidden[..., None], mean, images)
