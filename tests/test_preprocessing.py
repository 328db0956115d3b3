"""Each preprocessing function against a plain NumPy reference written here, on random inputs."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import tensorflow as tf

from lungnet.config import from_dict
from lungnet.data import preprocessing as pp
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import ConfigError

RNG = np.random.default_rng(1234)


def random_images(*shape, lo=0.0, hi=255.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


# ---- NumPy references ------------------------------------------------------------------------------------


def np_minmax(x):
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def np_zscore(x):
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def np_sigmoid(x, gain=10.0, cutoff=None):
    cutoff = x.mean() if cutoff is None else cutoff
    return 1.0 / (1.0 + np.exp(-gain * (x - cutoff)))


def np_center_crop(x, size):
    h, w = x.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top : top + ch, left : left + cw]


def np_resize_bilinear(x, out_h, out_w):
    """Half-pixel-centre bilinear without antialiasing (TF2 / OpenCV INTER_LINEAR convention)."""
    in_h, in_w = x.shape[:2]

    def axis(out_n, in_n):
        pos = np.clip((np.arange(out_n) + 0.5) * in_n / out_n - 0.5, 0, in_n - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, in_n - 1), pos - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bottom = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def np_resize_nearest(x, out_h, out_w):
    in_h, in_w = x.shape[:2]
    ys = np.minimum(np.floor((np.arange(out_h) + 0.5) * in_h / out_h).astype(int), in_h - 1)
    xs = np.minimum(np.floor((np.arange(out_w) + 0.5) * in_w / out_w).astype(int), in_w - 1)
    return x[ys][:, xs]


def np_clahe(image01, clip_limit, tiles):
    """OpenCV's CLAHE written out with loops: one [H, W] plane in [0, 1] -> [0, 1]."""
    gy, gx = tiles
    q = np.round(np.clip(image01, 0, 1) * 255).astype(int)
    h, w = q.shape
    q_pad = q
    if h % gy or w % gx:  # OpenCV pads both sides when either is not divisible
        q_pad = np.pad(q, ((0, gy - h % gy), (0, gx - w % gx)), mode="reflect")
    th, tw = q_pad.shape[0] // gy, q_pad.shape[1] // gx
    area = th * tw
    limit = max(int(clip_limit * area / 256), 1)
    lut = np.zeros((gy, gx, 256))
    for ty in range(gy):
        for tx in range(gx):
            tile = q_pad[ty * th : (ty + 1) * th, tx * tw : (tx + 1) * tw]
            hist = np.bincount(tile.ravel(), minlength=256)
            clipped = 0
            for b in range(256):
                if hist[b] > limit:
                    clipped += hist[b] - limit
                    hist[b] = limit
            hist += clipped // 256
            residual = clipped % 256
            step = max(256 // residual, 1) if residual else 1
            b = 0
            while b < 256 and residual > 0:
                hist[b] += 1
                residual -= 1
                b += step
            lut[ty, tx] = np.round(np.cumsum(hist) * (255.0 / area))
    out = np.zeros((h, w))
    for y in range(h):
        fy = y / th - 0.5
        y1 = int(np.floor(fy))
        ay = fy - y1
        y1, y2 = max(y1, 0), min(y1 + 1, gy - 1)
        for x in range(w):
            fx = x / tw - 0.5
            x1 = int(np.floor(fx))
            ax = fx - x1
            x1, x2 = max(x1, 0), min(x1 + 1, gx - 1)
            v = q[y, x]
            top = lut[y1, x1, v] * (1 - ax) + lut[y1, x2, v] * ax
            bottom = lut[y2, x1, v] * (1 - ax) + lut[y2, x2, v] * ax
            out[y, x] = top * (1 - ay) + bottom * ay
    return out / 255.0


# ---- intensity ---------------------------------------------------------------------------------------------


def test_hu_window_clips():
    x = random_images(20, 24, 1, lo=-2000, hi=2000)
    np.testing.assert_array_equal(pp.hu_window(x, -1000, 400).numpy(), np.clip(x, -1000, 400))
    with pytest.raises(ValueError, match="lo < hi"):
        pp.hu_window(x, 10, 10)


def test_lung_window_uint8_maps_minus1200_to_0_and_0_to_255():
    x = np.array([-3000, -1200, -600, -300, 0, 500], np.float32).reshape(1, 6, 1)
    expected = np.round((np.clip(x, -1200, 0) + 1200) / 1200 * 255)
    out = pp.lung_window_uint8(x).numpy()
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 255


def test_minmax_per_image_in_a_batch_and_constant_image():
    batch = np.stack(
        [random_images(16, 18, 1), random_images(16, 18, 1, lo=-50, hi=3), np.full((16, 18, 1), 7.0)]
    )
    out = pp.minmax(batch).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], np_minmax(batch[i]), atol=1e-6)
        assert out[i].min() == 0 and out[i].max() == pytest.approx(1)
    np.testing.assert_array_equal(out[2], 0)  # constant: zeros, not NaN
    np.testing.assert_allclose(pp.minmax(batch[1]).numpy(), np_minmax(batch[1]), atol=1e-6)


def test_zscore_per_image_dataset_stats_and_guards():
    batch = np.stack([random_images(12, 12, 1), np.full((12, 12, 1), 3.0, np.float32)])
    out = pp.zscore(batch).numpy()
    np.testing.assert_allclose(out[0], np_zscore(batch[0]), atol=1e-5)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(
        pp.zscore(batch[0], mean=100.0, std=50.0).numpy(), (batch[0] - 100) / 50, rtol=1e-6
    )
    with pytest.raises(ValueError, match="std must be > 0"):
        pp.zscore(batch[0], mean=1.0, std=0.0)
    with pytest.raises(ValueError, match="both"):
        pp.zscore(batch[0], mean=1.0)


def test_sigmoid_contrast_default_cutoff_is_per_image_mean():
    batch = np.stack([random_images(10, 14, 1, lo=0, hi=1), random_images(10, 14, 1, lo=0.5, hi=1)])
    out = pp.sigmoid_contrast(batch, gain=10.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], np_sigmoid(batch[i]), atol=1e-6)
    np.testing.assert_allclose(
        pp.sigmoid_contrast(batch[0], gain=5.0, cutoff=0.3).numpy(), np_sigmoid(batch[0], 5.0, 0.3), atol=1e-6
    )


# ---- geometry ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,size", [((20, 20, 1), 10), ((21, 18, 2), 9), ((15, 40, 1), 16), ((8, 8, 1), 12)]
)
def test_center_crop_matches_reference(shape, size):
    x = random_images(*shape)
    np.testing.assert_array_equal(pp.center_crop(x, size).numpy(), np_center_crop(x, size))
    batch = np.stack([x, x + 1])
    np.testing.assert_array_equal(pp.center_crop(batch, size).numpy()[1], np_center_crop(x + 1, size))


@pytest.mark.parametrize("in_hw,out", [((20, 24), 32), ((50, 37), 16), ((96, 96), 128), ((33, 33), 33)])
def test_resize_bilinear_and_nearest_match_reference(in_hw, out):
    x = random_images(*in_hw, 2)
    np.testing.assert_allclose(pp.resize(x, out).numpy(), np_resize_bilinear(x, out, out), atol=1e-3)
    np.testing.assert_array_equal(pp.resize(x, out, "nearest").numpy(), np_resize_nearest(x, out, out))
    # Our bilinear reference is also OpenCV's INTER_LINEAR (no antialiasing) -- what the NumPy loops use.
    np.testing.assert_allclose(
        pp.resize(x[..., :1], out).numpy()[..., 0],
        cv2.resize(x[..., 0], (out, out), interpolation=cv2.INTER_LINEAR),
        atol=1e-2,
    )
    with pytest.raises(ValueError, match="method"):
        pp.resize(x, out, "bicubic")


def test_to_channels():
    x = random_images(5, 6, 1)
    three = pp.to_channels(x, 3).numpy()
    assert three.shape == (5, 6, 3) and all(np.array_equal(three[..., c], x[..., 0]) for c in range(3))
    np.testing.assert_allclose(pp.to_channels(three, 1).numpy(), x, atol=1e-5)


# ---- CLAHE -------------------------------------------------------------------------------------------------


def smooth_image(h, w) -> np.ndarray:
    noise = cv2.GaussianBlur(RNG.integers(0, 256, (h, w)).astype(np.uint8), (5, 5), 0)
    return cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX)


@pytest.mark.parametrize(
    "hw,tiles,clip",
    [((32, 32), (4, 4), 2.0), ((37, 50), (3, 4), 3.0), ((33, 64), (2, 4), 1.0), ((40, 24), (8, 3), 40.0)],
)
def test_clahe_matches_numpy_reference(hw, tiles, clip):
    image = smooth_image(*hw).astype(np.float32) / 255
    out = pp.clahe(image[..., None], clip, tiles).numpy()[..., 0]
    np.testing.assert_allclose(out, np_clahe(image, clip, tiles), atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_clahe_agrees_with_opencv():
    """Same algorithm as cv2.createCLAHE: after rounding to 8 bits, at most 1 level off on < 1 % of pixels.

    The 1-level differences are exact .5 ties that float32 rounding breaks the other way.
    """
    for hw, tiles, clip in [((64, 64), (8, 8), 2.0), ((50, 37), (4, 3), 3.0), ((33, 65), (2, 5), 4.0)]:
        image = smooth_image(*hw)
        expected = cv2.createCLAHE(clip, (tiles[1], tiles[0])).apply(image).astype(np.float32)
        ours = np.round(
            pp.clahe(image[..., None].astype(np.float32) / 255, clip, tiles).numpy()[..., 0] * 255
        )
        diff = np.abs(ours - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (hw, diff.max(), (diff > 0).mean())


def test_clahe_batch_and_channels_are_independent_and_shapes_may_be_dynamic():
    a, b = smooth_image(24, 28) / 255.0, smooth_image(24, 28) / 255.0
    batch = np.stack([np.stack([a, b], -1), np.stack([b, a], -1)]).astype(np.float32)
    out = pp.clahe(batch, 2.0, (2, 2)).numpy()
    np.testing.assert_allclose(out[0, ..., 0], np_clahe(a, 2.0, (2, 2)), atol=1e-5)
    np.testing.assert_allclose(out[1, ..., 0], np_clahe(b, 2.0, (2, 2)), atol=1e-5)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    def serve(x):
        return pp.clahe(x, 2.0, (2, 2))

    np.testing.assert_allclose(serve(batch[..., :1]).numpy(), out[..., :1], atol=1e-6)


# ---- the chain ---------------------------------------------------------------------------------------------


def np_chain(x, cfg: PreprocessConfig):
    x = x.astype(np.float64)
    if cfg.hu_window:
        x = np.clip(x, *cfg.hu_window)
    if cfg.normalize == "minmax":
        x = np_minmax(x)
    elif cfg.normalize == "zscore":
        x = np_zscore(x) if cfg.zscore_mean is None else (x - cfg.zscore_mean) / cfg.zscore_std
    elif cfg.normalize == "lung_window":
        x = np.round((np.clip(x, -1200, 0) + 1200) / 1200 * 255) / 255
    if cfg.clahe:
        x = np_clahe(x, cfg.clahe_clip_limit, cfg.clahe_tiles)
    if cfg.sigmoid_gain is not None:
        x = np_sigmoid(x, cfg.sigmoid_gain, cfg.sigmoid_cutoff)
    if cfg.center_crop:
        x = np_center_crop(x, cfg.center_crop)
    x = np_resize_bilinear(x[..., None], cfg.image_size, cfg.image_size)
    return np.repeat(x, cfg.channels, axis=-1)


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(image_size=48),
        PreprocessConfig(center_crop=24, image_size=32),
        PreprocessConfig(
            hu_window=(-1000.0, 400.0), normalize="zscore", sigmoid_gain=None, image_size=20, channels=1
        ),
        PreprocessConfig(
            normalize="zscore", zscore_mean=-500.0, zscore_std=400.0, sigmoid_gain=None, image_size=36
        ),
        PreprocessConfig(
            normalize="lung_window", clahe=True, clahe_tiles=(2, 3), sigmoid_gain=6.0, image_size=30
        ),
    ],
)
def test_preprocess_image_matches_numpy_chain(cfg):
    x = smooth_image(40, 44).astype(np.float32) * 6 - 1100  # an HU-like range
    out = pp.preprocess_image(x, cfg).numpy()
    assert out.shape == (cfg.image_size, cfg.image_size, cfg.channels) and out.dtype == np.float32
    np.testing.assert_allclose(out, np_chain(x, cfg), atol=1e-4)
    batch = pp.preprocess_image(np.stack([x[..., None], x[..., None] * 0.5]), cfg).numpy()
    np.testing.assert_allclose(batch[0], out, atol=1e-5)


def test_preprocess_image_in_a_serving_signature_with_uint8_input():
    cfg = PreprocessConfig(center_crop=24, image_size=32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8)])
    def serve(x):
        return pp.preprocess_image(x, cfg)

    x = RNG.integers(0, 256, (2, 40, 36, 1)).astype(np.uint8)
    out = serve(x).numpy()
    assert out.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(out[1], np_chain(x[1, ..., 0].astype(np.float32), cfg), atol=1e-4)


def test_preprocess_mask_uses_the_image_geometry_and_stays_binary():
    cfg = PreprocessConfig(center_crop=20, image_size=32)
    mask = (RNG.random((30, 26)) > 0.7).astype(np.uint8)
    out = pp.preprocess_mask(mask, cfg).numpy()
    assert out.shape == (32, 32, 1) and set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out[..., 0], np_resize_nearest(np_center_crop(mask, 20), 32, 32))


# ---- config ------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_study_chain_and_from_dict_fills_tuples():
    cfg = PreprocessConfig()
    assert (cfg.normalize, cfg.sigmoid_gain, cfg.image_size, cfg.channels) == ("minmax", 10.0, 128, 3)
    cfg = from_dict(PreprocessConfig, {"hu_window": [-1000, 400], "clahe_tiles": [4, 4], "center_crop": 96})
    assert cfg.hu_window == (-1000.0, 400.0) and cfg.clahe_tiles == (4, 4) and cfg.center_crop == 96
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(PreprocessConfig, {"imagesize": 64}, "preprocess")
    with pytest.raises(ConfigError, match="normalize"):
        from_dict(PreprocessConfig, {"normalize": "minmax01"}, "preprocess")


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"image_size": 0}, "image_size"),
        ({"hu_window": (400.0, -1000.0)}, "hu_window"),
        ({"center_crop": -3}, "center_crop"),
        ({"channels": 2}, "channels"),
        ({"normalize": "zscore", "zscore_mean": 1.0}, "zscore_std"),
        ({"normalize": "zscore", "zscore_mean": 1.0, "zscore_std": 0.0}, "zscore_std"),
        ({"zscore_mean": 1.0, "zscore_std": 2.0}, "zscore_mean"),
        ({"sigmoid_gain": 0.0}, "sigmoid_gain"),
        ({"clahe_clip_limit": 0.0}, "clahe_clip_limit"),
        ({"clahe_tiles": (0, 4)}, "clahe_tiles"),
        ({"clahe": True, "normalize": "zscore"}, "clahe"),
        ({"normalize": "robust"}, "normalize"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"preprocess.{field}"):
        dataclasses.replace(PreprocessConfig(), **changes)
