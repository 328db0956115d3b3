"""Image preprocessing as pure TensorFlow functions.

Every function here is made of TF ops only (no ``numpy_function``), so the same code runs inside ``tf.data``
and inside an exported SavedModel's serving signature. Images are float32 ``[H, W, C]`` (one image) or
``[B, H, W, C]`` (a batch); "per image" statistics are taken over ``H, W, C`` of each image. Spatial sizes
may be dynamic (``None``), which a serving signature that accepts any image size needs.

`preprocess_image` applies the chain in one fixed order:

    HU window -> normalise -> CLAHE -> sigmoid contrast -> [physical scale] -> centre crop -> resize -> channels

With ``pixel_spacing_mm`` set, each image is first resampled from its own pixel spacing (the manifest's
``pixel_spacing_mm`` column) to that spacing, so a pixel means the same millimetres in every image: size is
the strongest malignancy cue, and LIDC spacings vary from 0.5 to 1 mm. The centre crop is then a fixed field
of view (``center_crop`` x ``pixel_spacing_mm`` mm), padded with zeros where the image is smaller.

Intensity steps come first because their per-image statistics (min, max, mean) should see the whole image,
as in the published studies, not the crop.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import tensorflow as tf

from lungnet.errors import ConfigError

LUNG_WINDOW = (-1200.0, 0.0)
CLAHE_BINS = 256

Normalize = Literal["minmax", "zscore", "lung_window", "none"]
NORMALIZE_CHOICES = ("minmax", "zscore", "lung_window", "none")


@dataclasses.dataclass
class PreprocessConfig:
    """Deterministic preprocessing of one image; the defaults are the classification study's chain.

    The study min-max normalises each image, then applies sigmoidal contrast (gain 10, cutoff at the image
    mean), and resizes to 128 px. For its nodule crops it first takes a 96 px centre crop
    (``center_crop=96``); that is off by default because whole slices must not be cropped to their centre.
    """

    hu_window: tuple[float, float] | None = None  # clip to (lo, hi) before normalising; for HU inputs
    normalize: Normalize = "minmax"
    zscore_mean: float | None = None  # dataset statistics for normalize="zscore"; None = per image
    zscore_std: float | None = None
    sigmoid_gain: float | None = 10.0  # None turns the sigmoidal contrast off
    sigmoid_cutoff: float | None = None  # None = the per-image mean
    clahe: bool = False
    clahe_clip_limit: float = 2.0  # OpenCV's convention: multiple of the uniform bin count
    clahe_tiles: tuple[int, int] = (8, 8)  # (rows, columns) of the tile grid
    center_crop: int | None = None
    # Resample every image to this spacing (mm per pixel) from its own, before the centre crop; needs each
    # sample's spacing (manifest column ``pixel_spacing_mm``) and a ``center_crop`` (the field of view).
    pixel_spacing_mm: float | None = None
    image_size: int = 128
    channels: Literal[1, 3] = 3  # 3 replicates grey for ImageNet backbones

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"preprocess.{field}: {getattr(self, field)!r} {why}")

        if self.hu_window is not None:
            if len(self.hu_window) != 2:
                raise bad("hu_window", "must be two numbers (lo, hi)")
            self.hu_window = (float(self.hu_window[0]), float(self.hu_window[1]))
            if not self.hu_window[0] < self.hu_window[1]:
                raise bad("hu_window", "must have lo < hi")
        if self.normalize not in NORMALIZE_CHOICES:
            raise bad("normalize", f"is not one of {list(NORMALIZE_CHOICES)}")
        if (self.zscore_mean is None) != (self.zscore_std is None):
            raise bad("zscore_std", "and zscore_mean must be given together (or both left out)")
        if self.zscore_std is not None and not self.zscore_std > 0:
            raise bad("zscore_std", "must be > 0")
        if self.zscore_mean is not None and self.normalize != "zscore":
            raise bad("zscore_mean", f"is only used with normalize='zscore', not {self.normalize!r}")
        if self.sigmoid_gain is not None and not self.sigmoid_gain > 0:
            raise bad("sigmoid_gain", "must be > 0 (or null to turn the sigmoid off)")
        if not self.clahe_clip_limit > 0:
            raise bad("clahe_clip_limit", "must be > 0")
        if len(self.clahe_tiles) != 2 or any(int(t) != t or t < 1 for t in self.clahe_tiles):
            raise bad("clahe_tiles", "must be two integers >= 1")
        self.clahe_tiles = (int(self.clahe_tiles[0]), int(self.clahe_tiles[1]))
        if self.clahe and self.normalize == "zscore":
            # CLAHE histograms need a fixed [0, 1] range; z-scores have none.
            raise bad(
                "clahe", "needs values in [0, 1]; use normalize 'minmax' or 'lung_window', not 'zscore'"
            )
        if self.center_crop is not None and not self.center_crop > 0:
            raise bad("center_crop", "must be > 0 (or null for no crop)")
        if self.pixel_spacing_mm is not None:
            if not self.pixel_spacing_mm > 0:
                raise bad("pixel_spacing_mm", "must be > 0 (or null to keep each image's own spacing)")
            if self.center_crop is None:
                raise bad("pixel_spacing_mm", "needs a center_crop (the field of view, in resampled pixels)")
        if not self.image_size > 0:
            raise bad("image_size", "must be > 0")
        if self.channels not in (1, 3):
            raise bad("channels", "must be 1 or 3")

    @property
    def output_in_unit_range(self) -> bool:
        """Whether outputs are guaranteed to lie in [0, 1] (what RandAugment/AugMix are told)."""
        return self.sigmoid_gain is not None or self.normalize in ("minmax", "lung_window")


def _pair(size) -> tuple[int, int]:
    if isinstance(size, tuple | list):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _as_float(x) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _image_axes(x: tf.Tensor) -> list[int]:
    """Axes of one image: all of them for [H, W] / [H, W, C], the last three for [B, H, W, C]."""
    rank = x.shape.rank
    if rank not in (2, 3, 4):
        raise ValueError(f"expected an image [H, W], [H, W, C] or a batch [B, H, W, C]; got shape {x.shape}")
    return [1, 2, 3] if rank == 4 else list(range(rank))


def hu_window(x, lo: float, hi: float) -> tf.Tensor:
    """Clip intensities to the window [lo, hi] (e.g. Hounsfield units)."""
    if not lo < hi:
        raise ValueError(f"hu_window: need lo < hi, got ({lo}, {hi})")
    return tf.clip_by_value(_as_float(x), lo, hi)


def lung_window_uint8(x) -> tf.Tensor:
    """Lung window -1200..0 HU mapped linearly to 0..255 and rounded, as an 8-bit PNG export would store it.

    Returned as float32 so it chains with the other steps.
    """
    lo, hi = LUNG_WINDOW
    x = tf.clip_by_value(_as_float(x), lo, hi)
    return tf.round((x - lo) * (255.0 / (hi - lo)))


def minmax(x) -> tf.Tensor:
    """Rescale each image to [0, 1]; a constant image becomes zeros (not NaN)."""
    x = _as_float(x)
    axes = _image_axes(x)
    lo = tf.reduce_min(x, axis=axes, keepdims=True)
    span = tf.reduce_max(x, axis=axes, keepdims=True) - lo
    safe = tf.where(span > 0, span, tf.ones_like(span))
    return tf.where(span > 0, (x - lo) / safe, tf.zeros_like(x))


def zscore(x, mean: float | None = None, std: float | None = None) -> tf.Tensor:
    """Standardise: per image when `mean`/`std` are None, else with dataset statistics.

    A constant image (per-image std 0) becomes zeros.
    """
    x = _as_float(x)
    if (mean is None) != (std is None):
        raise ValueError("zscore: give both mean and std, or neither")
    if mean is not None:
        if not std > 0:
            raise ValueError(f"zscore: std must be > 0, got {std}")
        return (x - mean) / std
    axes = _image_axes(x)
    mu = tf.reduce_mean(x, axis=axes, keepdims=True)
    sd = tf.math.reduce_std(x, axis=axes, keepdims=True)
    return tf.where(sd > 0, (x - mu) / tf.where(sd > 0, sd, tf.ones_like(sd)), tf.zeros_like(x))


def sigmoid_contrast(x, gain: float = 10.0, cutoff: float | None = None) -> tf.Tensor:
    """``1 / (1 + exp(-gain * (x - cutoff)))``; `cutoff` defaults to each image's mean."""
    x = _as_float(x)
    if cutoff is None:
        cutoff = tf.reduce_mean(x, axis=_image_axes(x), keepdims=True)
    return tf.math.sigmoid(gain * (x - cutoff))


def center_crop(x, size: int | tuple[int, int]) -> tf.Tensor:
    """Crop the central ``size`` (square int or (h, w)) of [H, W, C] or [B, H, W, C].

    The offset is ``(H - h) // 2``. A side shorter than the crop is kept whole (no padding), so the crop
    never invents pixels; the resize that follows sets the final size.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank not in (3, 4):
        raise ValueError(f"center_crop: expected [H, W, C] or [B, H, W, C], got shape {x.shape}")
    ch, cw = _pair(size)
    shape = tf.shape(x)
    h, w = shape[-3], shape[-2]
    ch, cw = tf.minimum(h, ch), tf.minimum(w, cw)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw, :]


def physical_scale(x, spacing_mm, target_mm: float, size: int) -> tf.Tensor:
    """Resample [H, W, C] from `spacing_mm` to `target_mm` per pixel, then centre crop or zero-pad to `size`.

    Downsampling is antialiased (an area-like filter), so fine texture is averaged rather than aliased.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 3:
        raise ValueError(f"physical_scale: expected one image [H, W, C], got shape {x.shape}")
    scale = tf.cast(spacing_mm, tf.float32) / target_mm
    hw = tf.cast(tf.shape(x)[:2], tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    x = tf.image.resize(x, new_hw, method="bilinear", antialias=True)
    return tf.image.resize_with_crop_or_pad(x, size, size)


def resize(x, size: int | tuple[int, int], method: Literal["bilinear", "nearest"] = "bilinear") -> tf.Tensor:
    """Resize [H, W, C] or [B, H, W, C] to ``size`` (half-pixel centres, no antialiasing, like OpenCV)."""
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"resize: method must be 'bilinear' or 'nearest', got {method!r}")
    x = tf.convert_to_tensor(x)
    out = tf.image.resize(x, _pair(size), method=method)
    return tf.cast(out, x.dtype) if method == "nearest" else out


def to_channels(x, channels: int) -> tf.Tensor:
    """Grey (C=1) to `channels` by replication; RGB (C=3) to grey by the mean. The last axis must be static."""
    x = tf.convert_to_tensor(x)
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1:
        return tf.repeat(x, channels, axis=-1)
    if channels == 1:
        return tf.reduce_mean(x, axis=-1, keepdims=True)
    raise ValueError(f"to_channels: cannot turn {have} channels into {channels}")


def clahe(x, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)) -> tf.Tensor:
    """Contrast-limited adaptive histogram equalisation of each image and channel, in TF ops.

    Input values in [0, 1] (clipped), output in [0, 1]. The algorithm is OpenCV's ``createCLAHE`` step by
    step, so results agree with OpenCV on 8-bit images up to output rounding:

    1. quantise to 256 levels; when the tile grid does not divide the image, pad the bottom and right
       edges by reflection (excluding the edge pixel) as OpenCV does;
    2. per tile, a 256-bin histogram clipped at ``max(int(clip_limit * tile_area / 256), 1)``; the clipped
       excess is spread evenly over all bins and its remainder one count each over evenly spaced bins;
    3. per tile, the lookup table ``round(cumsum * 255 / tile_area)``;
    4. each pixel's value is the bilinear blend of the four nearest tiles' lookups (tile centres at
       ``(i + 0.5) * tile_size``; pixel-edge coordinates, as OpenCV).
    """
    x = _as_float(x)
    rank = x.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"clahe: expected [H, W, C] or [B, H, W, C], got shape {x.shape}")
    if not clip_limit > 0:
        raise ValueError(f"clahe: clip_limit must be > 0, got {clip_limit}")
    gy, gx = int(tile_grid[0]), int(tile_grid[1])
    batch = x if rank == 4 else x[tf.newaxis]
    shape = tf.shape(batch)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    # One plane per (image, channel): [N, H, W].
    planes = tf.reshape(tf.transpose(batch, [0, 3, 1, 2]), [-1, h, w])
    levels = tf.cast(tf.round(tf.clip_by_value(planes, 0.0, 1.0) * (CLAHE_BINS - 1)), tf.int32)

    # OpenCV's padding rule, kept for agreement: if either side is not divisible, BOTH sides are padded by
    # `tiles - size % tiles` (a whole extra tile row or column on a side that was divisible).
    divisible = (h % gy == 0) & (w % gx == 0)
    pad_h = tf.where(divisible, 0, gy - h % gy)
    pad_w = tf.where(divisible, 0, gx - w % gx)
    padded = tf.pad(levels, [[0, 0], [0, pad_h], [0, pad_w]], mode="REFLECT")
    th, tw = (h + pad_h) // gy, (w + pad_w) // gx
    n = tf.shape(padded)[0]
    tiles = tf.reshape(padded, [n, gy, th, gx, tw])
    tiles = tf.reshape(tf.transpose(tiles, [0, 1, 3, 2, 4]), [n * gy * gx, th * tw])

    # Histograms of all tiles at once: segment id = tile index * bins + level.
    num_tiles = n * gy * gx
    ids = tf.range(num_tiles)[:, tf.newaxis] * CLAHE_BINS + tiles
    hist = tf.math.bincount(
        tf.reshape(ids, [-1]), minlength=num_tiles * CLAHE_BINS, maxlength=num_tiles * CLAHE_BINS
    )
    hist = tf.reshape(hist, [num_tiles, CLAHE_BINS])

    area = th * tw
    limit = tf.maximum(tf.cast(tf.cast(area, tf.float32) * (clip_limit / CLAHE_BINS), tf.int32), 1)
    excess = tf.reduce_sum(tf.maximum(hist - limit, 0), axis=1, keepdims=True)
    hist = tf.minimum(hist, limit) + excess // CLAHE_BINS
    residual = excess % CLAHE_BINS
    step = tf.maximum(CLAHE_BINS // tf.maximum(residual, 1), 1)
    bins = tf.range(CLAHE_BINS)[tf.newaxis, :]
    hist += tf.cast((bins % step == 0) & (bins // step < residual), tf.int32)

    scale = (CLAHE_BINS - 1) / tf.cast(area, tf.float32)
    lut = tf.round(tf.cast(tf.cumsum(hist, axis=1), tf.float32) * scale)  # [tiles, bins], 0..255
    lut = tf.reshape(lut, [-1])

    def neighbours(length, tile, grid):
        pos = tf.cast(tf.range(length), tf.float32) / tf.cast(tile, tf.float32) - 0.5
        lo = tf.floor(pos)
        frac = pos - lo
        lo = tf.cast(lo, tf.int32)
        return tf.maximum(lo, 0), tf.minimum(lo + 1, grid - 1), frac

    y1, y2, fy = neighbours(h, th, gy)
    x1, x2, fx = neighbours(w, tw, gx)
    plane = tf.range(n)[:, tf.newaxis, tf.newaxis] * (gy * gx)
    level = levels  # the unpadded pixels index the lookups

    def look(ty, tx):
        tile_id = plane + ty[tf.newaxis, :, tf.newaxis] * gx + tx[tf.newaxis, tf.newaxis, :]
        return tf.gather(lut, tile_id * CLAHE_BINS + level)

    fx = fx[tf.newaxis, tf.newaxis, :]
    fy = fy[tf.newaxis, :, tf.newaxis]
    top = look(y1, x1) * (1.0 - fx) + look(y1, x2) * fx
    bottom = look(y2, x1) * (1.0 - fx) + look(y2, x2) * fx
    out = (top * (1.0 - fy) + bottom * fy) / (CLAHE_BINS - 1)
    out = tf.transpose(tf.reshape(out, [b, c, h, w]), [0, 2, 3, 1])
    out = tf.ensure_shape(out, batch.shape)
    return out if rank == 4 else out[0]


def preprocess_image(x, cfg: PreprocessConfig, spacing_mm=None) -> tf.Tensor:
    """The full deterministic chain (order in the module docstring) for [H, W], [H, W, C] or [B, H, W, C].

    Returns float32 ``[..., image_size, image_size, cfg.channels]``. `spacing_mm` is the image's pixel
    spacing (a scalar), or a vector of one per image of a batch; it is needed when ``cfg.pixel_spacing_mm``
    is set, and ignored otherwise.
    """
    x = _as_float(x)
    if x.shape.rank == 2:
        x = x[..., tf.newaxis]
    if cfg.hu_window is not None:
        x = hu_window(x, *cfg.hu_window)
    if cfg.normalize == "minmax":
        x = minmax(x)
    elif cfg.normalize == "zscore":
        x = zscore(x, cfg.zscore_mean, cfg.zscore_std)
    elif cfg.normalize == "lung_window":
        x = lung_window_uint8(x) / 255.0
    if cfg.clahe:
        x = clahe(x, cfg.clahe_clip_limit, cfg.clahe_tiles)
    if cfg.sigmoid_gain is not None:
        x = sigmoid_contrast(x, cfg.sigmoid_gain, cfg.sigmoid_cutoff)
    if cfg.pixel_spacing_mm is not None:
        x = _physical_scale_any_rank(x, spacing_mm, cfg)
    elif cfg.center_crop is not None:
        x = center_crop(x, cfg.center_crop)
    x = resize(x, cfg.image_size, "bilinear")
    return to_channels(x, cfg.channels)


def _physical_scale_any_rank(x: tf.Tensor, spacing_mm, cfg: PreprocessConfig) -> tf.Tensor:
    if spacing_mm is None:
        raise ValueError(
            f"preprocess.pixel_spacing_mm is {cfg.pixel_spacing_mm}: every image needs its own pixel spacing"
        )
    spacing = tf.cast(spacing_mm, tf.float32)
    if x.shape.rank == 3:
        return physical_scale(x, tf.reshape(spacing, []), cfg.pixel_spacing_mm, cfg.center_crop)
    size = cfg.center_crop
    spacing = tf.broadcast_to(tf.reshape(spacing, [-1]), tf.shape(x)[:1])
    return tf.map_fn(
        lambda pair: physical_scale(pair[0], pair[1], cfg.pixel_spacing_mm, size),
        (x, spacing),
        fn_output_signature=tf.TensorSpec([size, size, x.shape[-1]], tf.float32),
    )


def restore_geometry(m, height, width, cfg: PreprocessConfig, spacing_mm=None) -> tf.Tensor:
    """A model-resolution map [S, S, C] back on the pixels of its image of `height` x `width`: the inverse of
    `preprocess_image`'s geometry (bilinear; zero outside the field of view the model saw). `spacing_mm` is
    the image's own pixel spacing (a scalar), needed where ``cfg.pixel_spacing_mm`` is set. Sizes may be
    tensors, so a serving signature maps a segmenter's output back inside its graph."""
    m = _as_float(m)
    size = tf.stack([height, width])
    if cfg.pixel_spacing_mm is not None:
        if spacing_mm is None:
            raise ValueError(
                f"preprocess.pixel_spacing_mm is {cfg.pixel_spacing_mm}: mapping a map back needs the image's "
                "own pixel spacing"
            )
        scale = tf.cast(spacing_mm, tf.float32) / cfg.pixel_spacing_mm
        # the resampled image's size, rounded as `physical_scale` rounds it
        resampled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
        m = tf.image.resize(m, [cfg.center_crop, cfg.center_crop], method="bilinear")
        m = tf.image.resize_with_crop_or_pad(m, resampled[0], resampled[1])  # the inverse of its crop or pad
    elif cfg.center_crop is not None:
        window = tf.minimum(size, cfg.center_crop)
        offset = (size - window) // 2
        m = tf.image.resize(m, window, method="bilinear")
        return tf.pad(
            m,
            [
                [offset[0], size[0] - window[0] - offset[0]],
                [offset[1], size[1] - window[1] - offset[1]],
                [0, 0],
            ],
        )
    return tf.image.resize(m, size, method="bilinear")


def preprocess_mask(m, cfg: PreprocessConfig, spacing_mm=None) -> tf.Tensor:
    """The geometry of `preprocess_image` (physical scale, centre crop, nearest resize) for a 0/1 mask; one
    channel, float32. A physically rescaled mask is resampled bilinearly and thresholded at one half."""
    m = _as_float(m)
    if m.shape.rank == 2:
        m = m[..., tf.newaxis]
    if cfg.pixel_spacing_mm is not None:
        m = tf.cast(_physical_scale_any_rank(m, spacing_mm, cfg) >= 0.5, tf.float32)
    elif cfg.center_crop is not None:
        m = center_crop(m, cfg.center_crop)
    return resize(m, cfg.image_size, "nearest")
