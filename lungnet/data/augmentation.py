"""Random augmentation as Keras 3 layers, for batches inside ``tf.data`` or inside a model.

The geometric transforms (flips, rotation, translation, zoom) are composed into one affine matrix per image
by `RandomAffine`, and each image is resampled once (bilinear). Chaining Keras' RandomFlip, RandomRotation,
RandomTranslation and RandomZoom instead resamples the batch four times: four times the cost, and the
image is blurred and border-filled again at every step.

`RandomAffine` draws its parameters with stateless random ops from a seed: either one given to the call
(``layer(images, seed=s)``, what the pipelines do, one seed per batch, so batches can be augmented in
parallel and still repeat exactly), or, without one, the next seed of the layer's own
`keras.random.SeedGenerator` (so it also works as a layer in a model).

RandAugment and AugMix (photometric, optional) are Keras' stateful layers; `build_augmenter` chains them
after `RandomAffine`.

Images are expected in [0, 1] (what `lungnet.data.preprocessing` produces for the study chains). For
segmentation the same geometric transform must move image and mask together: `build_joint_augmenter`
stacks the mask as an extra channel, transforms the stack once and re-binarises the mask.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from lungnet.data import elastic_augment
from lungnet.data.opencv_batch import aligned_empty, opencv_single_threaded
from lungnet.errors import ConfigError

FillMode = Literal["reflect", "constant", "nearest", "wrap"]
FILL_MODES = ("reflect", "constant", "nearest", "wrap")
Resampler = Literal["tensorflow", "opencv"]
RESAMPLERS = ("tensorflow", "opencv")


@dataclasses.dataclass
class AugmentConfig:
    """Which random transforms to apply, and how strongly. Zero / False turns a transform off.

    The ranges mean what the Keras layers of the same name mean: `rotation` as RandomRotation's factor,
    `translation` as RandomTranslation's height and width factors, `zoom` as RandomZoom's height factor
    (one zoom for both axes). See `RandomAffine`.
    """

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
    # Segmentation only (`lungnet.data.elastic_augment`; each on a random half of a batch): quarter turns,
    # elastic and grid distortion (displacement as a fraction of the side), gamma / brightness / contrast
    # ranges, and coarse dropout (up to N holes of up to `coarse_dropout_size` x the side).
    rotate90: bool = False
    elastic: float = 0.0
    grid_distortion: float = 0.0
    gamma: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    coarse_dropout: int = 0
    coarse_dropout_size: float = 0.1
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
        for name in ("elastic", "grid_distortion"):
            if not 0 <= getattr(self, name) <= 0.25:
                raise bad(name, "must be a fraction of the image side in [0, 0.25]")
        for name in ("gamma", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if not self.brightness >= 0:
            raise bad("brightness", "must be >= 0")
        if not (isinstance(self.coarse_dropout, int) and 0 <= self.coarse_dropout <= 16):
            raise bad("coarse_dropout", "must be a number of holes in 0..16")
        if not 0 < self.coarse_dropout_size <= 0.5:
            raise bad("coarse_dropout_size", "must be in (0, 0.5]")

    @property
    def segmentation_extras(self) -> list[str]:
        """The segmentation-only transforms this config turns on."""
        names = (
            "rotate90",
            "elastic",
            "grid_distortion",
            "gamma",
            "brightness",
            "contrast",
            "coarse_dropout",
        )
        return [n for n in names if getattr(self, n)]

    @property
    def geometric_only(self) -> bool:
        return not (self.randaugment or self.augmix)

    @property
    def has_geometry(self) -> bool:
        return bool(
            self.rotation or self.translation or self.zoom or self.horizontal_flip or self.vertical_flip
        )


def affine_transforms(
    height,
    width,
    *,
    angle=None,
    translate_x=None,
    translate_y=None,
    zoom=None,
    flip_horizontal=None,
    flip_vertical=None,
) -> tf.Tensor:
    """The ``[B, 8]`` transforms for `apply_affine` that flip, rotate, translate and zoom each image.

    Every argument is a ``[B]`` tensor (or None for "not at all"); at least one must be given:

    - `angle`: radians, counter-clockwise as displayed (``pi / 2`` is ``np.rot90(image)``);
    - `translate_x`, `translate_y`: pixels the content moves right / down;
    - `zoom`: Keras' zoom factor: each output pixel reads the input ``zoom`` times as far from the centre,
      so > 1 zooms out (content shrinks) and < 1 zooms in;
    - `flip_horizontal`, `flip_vertical`: bool, mirror left-right / top-bottom.

    They compose in the order of Keras' layers: flip, then rotate, then translate, then zoom, rotation and
    zoom about the image centre ``((W - 1) / 2, (H - 1) / 2)``. Like every transform that
    ``ImageProjectiveTransformV3`` takes, the result maps OUTPUT pixel coordinates ``(x, y)`` to the INPUT
    coordinates they are read from, ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``; it is the inverse of the
    motion described above.
    """
    given = [
        t for t in (angle, translate_x, translate_y, zoom, flip_horizontal, flip_vertical) if t is not None
    ]
    if not given:
        raise ValueError("affine_transforms: give at least one of the per-image parameters")
    n = tf.shape(given[0])[0]

    def value(t, default: float) -> tf.Tensor:
        return tf.fill([n], default) if t is None else tf.cast(t, tf.float32)

    def sign(flip) -> tf.Tensor:
        return tf.ones([n]) if flip is None else tf.where(tf.cast(flip, tf.bool), -1.0, 1.0)

    theta = value(angle, 0.0)
    tx, ty = value(translate_x, 0.0), value(translate_y, 0.0)
    z = value(zoom, 1.0)
    sx, sy = sign(flip_horizontal), sign(flip_vertical)
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Centred coordinates q = p - c. Output -> input of each stage, last stage first:
    # zoom q -> z q; translation q -> q - t; rotation q -> R q; flip q -> S q.
    # Together: q_in = z S R q - S R t.
    a0, a1 = sx * z * cos, -sx * z * sin
    b0, b1 = sy * z * sin, sy * z * cos
    off_x = -sx * (cos * tx - sin * ty)
    off_y = -sy * (sin * tx + cos * ty)
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    a2 = off_x + cx - a0 * cx - a1 * cy
    b2 = off_y + cy - b0 * cx - b1 * cy
    zeros = tf.zeros([n])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


# Per quarter-turn count k (tf.image.rot90): output pixel (x, y) of the turned image reads pixel
# (c0 x + c1 y + c2 L, d0 x + d1 y + d2 L) before the turn, L = side - 1.
QUARTER_TURNS = np.array(
    [[1, 0, 0, 0, 1, 0], [0, -1, 1, 1, 0, 0], [-1, 0, 1, 0, -1, 1], [0, 1, 0, -1, 0, 1]], np.float32
)


def with_quarter_turns(transforms, turns, size) -> tf.Tensor:
    """`transforms` followed by ``tf.image.rot90(image, k)`` with ``k = turns[b]`` (square images of side
    `size`), as one transform: a turn only permutes output pixels, so composing it changes values only by
    the rounding of the coordinates."""
    last = tf.cast(size, tf.float32) - 1.0
    c0, c1, c2, d0, d1, d2 = tf.unstack(tf.gather(QUARTER_TURNS, tf.cast(turns, tf.int32)), axis=1)
    c2, d2 = c2 * last, d2 * last
    a0, a1, a2, b0, b1, b2 = (transforms[:, i] for i in range(6))
    return tf.stack(
        [
            a0 * c0 + a1 * d0,
            a0 * c1 + a1 * d1,
            a0 * c2 + a1 * d2 + a2,
            b0 * c0 + b1 * d0,
            b0 * c1 + b1 * d1,
            b0 * c2 + b1 * d2 + b2,
            transforms[:, 6],
            transforms[:, 7],
        ],
        axis=1,
    )


def apply_affine(
    images,
    transforms,
    fill_mode: FillMode = "reflect",
    fill_value: float = 0.0,
    resampler: Resampler = "tensorflow",
    channels: int | None = None,
) -> tf.Tensor:
    """Resample ``images [B, H, W, C]`` once with per-image ``transforms [B, 8]`` (bilinear).

    `fill_mode` follows Keras / TensorFlow: "reflect" mirrors about the edge of the last pixel
    (``d c b a | a b c d``, OpenCV's BORDER_REFLECT), "constant" fills with `fill_value`, "nearest"
    repeats the edge pixel, "wrap" tiles.

    `resampler` "tensorflow" uses the ``ImageProjectiveTransformV3`` op: pure TensorFlow, so it runs in a
    model, a SavedModel or on a GPU. "opencv" calls ``cv2.warpAffine`` per image through
    ``tf.numpy_function``: the same result to within ~1e-5 of the image's range (tested), a fraction of
    the CPU time, but only for ``tf.data`` or eager use (a numpy_function cannot be saved with a model,
    and runs on the CPU, holding Python's GIL between images). OpenCV's BORDER_WRAP does not match
    TensorFlow's "wrap", so "wrap" always uses the TensorFlow op.

    `channels` 3 with grey images (C = 1) also replicates the result to 3 channels, as
    `lungnet.data.preprocessing.to_channels` would after it; "opencv" does that in the same pass over the
    batch (``tf.repeat`` alone costs more CPU than OpenCV's warp of a batch of 128 px images).
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"apply_affine: fill_mode {fill_mode!r} is not one of {list(FILL_MODES)}")
    if resampler not in RESAMPLERS:
        raise ValueError(f"apply_affine: resampler {resampler!r} is not one of {list(RESAMPLERS)}")
    images = tf.convert_to_tensor(images)
    transforms = tf.cast(transforms, tf.float32)
    replicate = channels is not None and channels != images.shape[-1]
    if replicate and (channels != 3 or images.shape[-1] != 1):
        raise ValueError(
            f"apply_affine: channels={channels} needs grey images, not {images.shape[-1]} channels"
        )
    if resampler == "opencv" and fill_mode != "wrap":
        out = tf.numpy_function(
            _warp_opencv,
            [tf.cast(images, tf.float32), transforms, fill_mode, float(fill_value), replicate],
            tf.float32,
            stateful=False,
        )
        out = tf.cast(out, images.dtype)
        out.set_shape(images.shape[:-1].concatenate(channels if replicate else images.shape[-1]))
        return out
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )
    out.set_shape(images.shape)
    if replicate:
        out = tf.repeat(out, 3, axis=-1)
    return out


def _warp_opencv(images: np.ndarray, transforms: np.ndarray, fill_mode, fill_value, to_rgb) -> np.ndarray:
    import cv2

    borders = {
        "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d, as TensorFlow's REFLECT
        "constant": cv2.BORDER_CONSTANT,
        "nearest": cv2.BORDER_REPLICATE,
        "wrap": cv2.BORDER_WRAP,
    }
    border = borders[fill_mode.decode() if isinstance(fill_mode, bytes) else str(fill_mode)]
    fill = (float(fill_value),) * 4
    batch, height, width, channels = images.shape
    matrices = transforms[:, :6].reshape(-1, 2, 3)
    # WARP_INVERSE_MAP: the matrix maps output to input pixels. OpenCV 5 interpolates 1, 3 and 4 channel
    # float images exactly (to ~1e-6 of TensorFlow's op); others go through its older remap with
    # coordinates rounded to 1/32 pixel (~1e-2 off), so those are warped one channel at a time.
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (width, height)
    warp_affine = cv2.warpAffine  # positional arguments: the loops below run once per image

    with opencv_single_threaded(cv2):
        if to_rgb:  # grey: warp each image, then write the 3 channels of the output in one go
            out = aligned_empty((batch, height, width, 3), images.dtype)
            grey = images.reshape(batch, height, width)
            warped = aligned_empty((height, width), images.dtype)
            three = [warped, warped, warped]
            for i in range(batch):
                warp_affine(grey[i], matrices[i], size, warped, flags, border, fill)
                cv2.merge(three, out[i])
            return out
        out = aligned_empty(images.shape, images.dtype)
        for i in range(batch):
            if channels in (1, 3, 4):
                warped = warp_affine(images[i], matrices[i], size, None, flags, border, fill)
                out[i] = warped.reshape(height, width, channels)
            else:
                for c in range(channels):
                    src = np.ascontiguousarray(images[i, ..., c])
                    out[i, ..., c] = warp_affine(src, matrices[i], size, None, flags, border, fill)
        return out


@keras.saving.register_keras_serializable(package="lungnet")
class RandomAffine(keras.layers.Layer):
    """Random flips, rotation, translation and zoom as one affine warp per image (bilinear, one resample).

    Ranges, per image, chosen to mean what the Keras layers' arguments of the same name mean:

    - `rotation`: fraction of a full turn, the angle is uniform in ``[-rotation, rotation] * 360`` degrees
      (``keras.layers.RandomRotation(rotation)``);
    - `translation`: fraction of the side, the shift is uniform in ``[-translation, translation] * W``
      horizontally and independently ``* H`` vertically (``RandomTranslation(translation, translation)``);
    - `zoom`: the zoom factor is uniform in ``[1 - zoom, 1 + zoom]``, the same for both axes, > 1 zooming
      out (``RandomZoom(zoom)``);
    - `horizontal_flip`, `vertical_flip`: each with probability 1/2, drawn independently (Keras'
      ``RandomFlip("horizontal_and_vertical")`` instead flips both axes or neither, with one draw).

    The transforms compose as Keras' layers applied in that order would (flip, rotate, translate, zoom;
    rotation and zoom about the centre), but the image is resampled only once, and filled by `fill_mode`
    only once.

    ``call(images, training=True, seed=None)``: with `seed`, an int ``[2]`` tensor, the parameters are
    drawn with ``tf.random.stateless_uniform`` from sub-seeds of it (one per parameter), so the same seed
    gives the same transforms and calls with their own seeds can run in any order or in parallel. Without
    one, the layer takes the next seed from its own `keras.random.SeedGenerator` (seeded by `seed` of the
    constructor), like Keras' random layers. With ``training=False`` images pass through unchanged.
    """

    def __init__(
        self,
        rotation: float = 0.0,
        translation: float = 0.0,
        zoom: float = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: FillMode = "reflect",
        fill_value: float = 0.0,
        seed: int | None = None,
        resampler: Resampler = "tensorflow",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if resampler not in RESAMPLERS:
            raise ValueError(f"RandomAffine: resampler {resampler!r} is not one of {list(RESAMPLERS)}")
        if not 0 <= rotation <= 0.5:
            raise ValueError(f"RandomAffine: rotation {rotation!r} must be a fraction of a turn in [0, 0.5]")
        if not 0 <= translation < 1:
            raise ValueError(f"RandomAffine: translation {translation!r} must be in [0, 1)")
        if not 0 <= zoom < 1:
            raise ValueError(f"RandomAffine: zoom {zoom!r} must be in [0, 1)")
        if fill_mode not in FILL_MODES:
            raise ValueError(f"RandomAffine: fill_mode {fill_mode!r} is not one of {list(FILL_MODES)}")
        self.rotation = float(rotation)
        self.translation = float(translation)
        self.zoom = float(zoom)
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = fill_mode
        self.fill_value = float(fill_value)
        self.seed = seed
        self.resampler = resampler
        self.seed_generator = keras.random.SeedGenerator(seed)

    @classmethod
    def from_augment_config(cls, cfg: AugmentConfig, seed: int | None = None, **kwargs) -> RandomAffine:
        return cls(
            rotation=cfg.rotation,
            translation=cfg.translation,
            zoom=cfg.zoom,
            horizontal_flip=cfg.horizontal_flip,
            vertical_flip=cfg.vertical_flip,
            fill_mode=cfg.fill_mode,
            seed=seed,
            **kwargs,
        )

    @property
    def is_identity(self) -> bool:
        return not (
            self.rotation or self.translation or self.zoom or self.horizontal_flip or self.vertical_flip
        )

    def transforms(self, batch_size, height, width, seed) -> tf.Tensor:
        """The ``[batch_size, 8]`` transforms that `seed` (int ``[2]``) draws; see `affine_transforms`."""
        seed = tf.cast(seed, tf.int64)
        # One sub-seed per parameter: turning zoom on does not change the angles a seed draws, and the
        # parameters are independent.
        seeds = tf.random.experimental.stateless_split(seed, num=6)

        def uniform(i: int, bound: float, centre: float = 0.0) -> tf.Tensor | None:
            if not bound:
                return None
            return tf.random.stateless_uniform(
                [batch_size], seeds[i], minval=centre - bound, maxval=centre + bound
            )

        def coin(i: int, enabled: bool) -> tf.Tensor | None:
            return tf.random.stateless_uniform([batch_size], seeds[i]) < 0.5 if enabled else None

        params = {
            "angle": uniform(0, self.rotation * 2 * math.pi),
            "translate_x": None,
            "translate_y": None,
            "zoom": uniform(3, self.zoom, centre=1.0),
            "flip_horizontal": coin(4, self.horizontal_flip),
            "flip_vertical": coin(5, self.vertical_flip),
        }
        if self.translation:
            params["translate_x"] = uniform(1, self.translation) * tf.cast(width, tf.float32)
            params["translate_y"] = uniform(2, self.translation) * tf.cast(height, tf.float32)
        if all(v is None for v in params.values()):
            params["angle"] = tf.zeros([batch_size])
        return affine_transforms(height, width, **params)

    def call(self, images, training=True, seed=None):
        if not training or self.is_identity:
            return images
        images = tf.convert_to_tensor(images)
        unbatched = images.shape.rank == 3
        out = self.warp(images[None] if unbatched else images, seed)
        return out[0] if unbatched else out

    def warp(self, images, seed=None, channels: int | None = None, quarter_turns=None) -> tf.Tensor:
        """What ``call(images, training=True, seed=seed)`` does to a batch, outside Keras' layer call.

        `channels` 3 with grey images also replicates the result to 3 channels, fused into the warp with
        the "opencv" resampler (see `apply_affine`); the pipelines use that for their last step.
        `quarter_turns` (int ``[B]``, 0-3, square images) then turns each image ``tf.image.rot90`` style,
        in the same resampling.
        """
        images = tf.convert_to_tensor(images)
        if seed is None:
            seed = self.seed_generator.next()
        shape = tf.shape(images)
        transforms = self.transforms(shape[0], shape[1], shape[2], seed)
        if quarter_turns is not None:
            transforms = with_quarter_turns(transforms, quarter_turns, shape[1])
        return apply_affine(images, transforms, self.fill_mode, self.fill_value, self.resampler, channels)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "translation": self.translation,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "vertical_flip": self.vertical_flip,
            "fill_mode": self.fill_mode,
            "fill_value": self.fill_value,
            "seed": self.seed,
            "resampler": self.resampler,
        }


def _base_seed(cfg: AugmentConfig, seed: int | None) -> int:
    return seed if seed is not None else (cfg.seed if cfg.seed is not None else 0)


def build_geometric_augmenter(
    cfg: AugmentConfig, seed: int | None = None, resampler: Resampler = "tensorflow"
) -> RandomAffine | None:
    """The config's flips, rotation, translation and zoom as one `RandomAffine`, or None when all are off.

    `seed` overrides ``cfg.seed``; with both None the seed is 0. `resampler`: see `apply_affine`.
    """
    if not cfg.has_geometry:
        return None
    return RandomAffine.from_augment_config(
        cfg, seed=_base_seed(cfg, seed), resampler=resampler, name="random_affine"
    )


def build_photometric_augmenters(
    cfg: AugmentConfig, seed: int | None = None, value_range: tuple[float, float] = (0.0, 1.0)
) -> list[keras.layers.Layer]:
    """RandAugment, then AugMix, as the config asks (possibly none). Stateful: call them in a fixed order."""
    seed = _base_seed(cfg, seed)
    layers: list[keras.layers.Layer] = []
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
    return layers


def build_augmenter(
    cfg: AugmentConfig, seed: int | None = None, value_range: tuple[float, float] = (0.0, 1.0)
) -> keras.layers.Pipeline:
    """`RandomAffine` (flips, rotation, translation, zoom), then RandAugment, then AugMix, as one layer.

    Call it on a batch ``[B, H, W, C]`` with ``training=True``. `seed` overrides ``cfg.seed``; with
    both None the seed is 0, so runs repeat by default.
    """
    geometric = build_geometric_augmenter(cfg, seed)
    layers: list[keras.layers.Layer] = [geometric] if geometric is not None else []
    layers += build_photometric_augmenters(cfg, seed, value_range)
    if not layers:  # keras.layers.Pipeline fails on an empty list
        layers.append(keras.layers.Identity())
    return keras.layers.Pipeline(layers, name="augment")


def build_joint_augmenter(
    cfg: AugmentConfig, seed: int | None = None, resampler: Resampler = "tensorflow"
) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """``(images [B,H,W,C], masks [B,H,W,1], seed=None) -> (images, masks)``, one transform for both.

    The mask rides along as an extra channel, so it is resampled with exactly the image's warp (bilinear,
    the config's fill mode), then thresholded at 0.5 back to 0/1. `seed` (int ``[2]``) is passed to
    `RandomAffine`: given, the transforms are a function of it alone. `resampler`: see `apply_affine`.
    Photometric augmentation
    (RandAugment, AugMix) mixes geometric and intensity operations that cannot be split apart, so it is
    refused here.
    """
    if not cfg.geometric_only:
        raise ConfigError(
            "augment: randaugment/augmix cannot be used for segmentation (their geometric operations would "
            "move the image but not the mask); use rotation/flips/translation/zoom"
        )
    affine = build_geometric_augmenter(cfg, seed, resampler)
    extras = cfg.segmentation_extras

    def augment(images, masks, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.convert_to_tensor(images, tf.float32)
        masks = tf.cast(masks, images.dtype)
        if affine is None and not extras:
            return images, masks
        channels = images.shape[-1]
        if channels is None:
            raise ValueError("build_joint_augmenter: the image channel count must be static")
        if extras and seed is None:
            raise ValueError("build_joint_augmenter: the segmentation extras need the batch's seed")
        stacked = tf.concat([images, masks], axis=-1)
        turns_in_affine = affine is not None and cfg.rotate90
        if affine is not None:  # the quarter turns ride in the affine warp: one resampling, not five passes
            turns = _quarter_turns(stacked, seed) if turns_in_affine else None
            stacked = affine.warp(stacked, seed, quarter_turns=turns)
        if cfg.rotate90 and not turns_in_affine:
            stacked = _select_turns(stacked, _quarter_turns(stacked, seed))
        if cfg.elastic or cfg.grid_distortion:
            stacked = elastic_augment.warp_jointly(stacked, seed, cfg.elastic, cfg.grid_distortion, resampler)
        out_images = stacked[..., :channels]
        out_masks = tf.cast(stacked[..., channels:] > 0.5, images.dtype)
        if cfg.gamma or cfg.brightness or cfg.contrast:
            out_images = elastic_augment.photometric(
                out_images, seed, cfg.brightness, cfg.contrast, cfg.gamma
            )
        if cfg.coarse_dropout:
            out_images = elastic_augment.coarse_dropout(
                out_images, seed, cfg.coarse_dropout, cfg.coarse_dropout_size
            )
        return out_images, out_masks

    return augment


def _quarter_turns(stacked, seed) -> tf.Tensor:
    """A quarter-turn count 0..3 per image (square images: the study's crops)."""
    sub = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 10)
    return tf.random.stateless_uniform([tf.shape(stacked)[0]], sub, maxval=4, dtype=tf.int32)


def _select_turns(stacked: tf.Tensor, turns: tf.Tensor) -> tf.Tensor:
    """Each image turned ``tf.image.rot90`` by its count (without an affine warp to carry the turns)."""
    out = stacked
    for k in (1, 2, 3):
        out = tf.where((turns == k)[:, None, None, None], tf.image.rot90(stacked, k), out)
    return out
