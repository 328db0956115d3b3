"""Dense CRF post-processing: it sharpens a blurred, speckled mask on a toy image; errors; missing pydensecrf2."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage

from lungnet.errors import ConfigError, DataError
from lungnet.postprocess.crf import CRFConfig, crf_available, dense_crf, dense_crf_batch, require_crf

needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright 16x16 square on a dark 48x48 background and a blurred, speckled probability map of it."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((48, 48), dtype=bool)
    truth[16:32, 16:32] = True
    image = np.where(truth, 200.0, 40.0) + rng.normal(0, 8, truth.shape)  # HU-like units, mild noise
    prob = np.where(truth, 0.9, 0.1)
    prob[ndimage.binary_dilation(truth, iterations=3) & ~truth] = 0.6  # bleeds 3 px outside the edges
    prob[(rng.random(truth.shape) < 0.03) & ~truth] = 0.7  # false-positive speckle
    prob[(rng.random(truth.shape) < 0.05) & truth] = 0.35  # holes
    prob = np.clip(prob + rng.normal(0, 0.03, truth.shape), 0.0, 1.0)
    return image, prob, truth


@needs_crf
def test_crf_sharpens_the_toy_mask():
    image, prob, truth = _toy()
    raw = _dice(prob > 0.5, truth)
    refined = dense_crf(image, prob, CRFConfig())
    assert refined.dtype == np.float32 and refined.shape == prob.shape
    assert refined.min() >= 0.0 and refined.max() <= 1.0
    crf = _dice(refined > 0.5, truth)
    assert raw < 0.7  # the bleeding ring alone costs ~0.3 Dice
    assert crf > 0.95 and crf > raw + 0.2


@needs_crf
def test_batch_matches_single_and_handles_constant_image():
    image, prob, _ = _toy()
    flat = np.full_like(image, -1000.0)  # constant image: no edges, must not divide by zero
    out = dense_crf_batch(np.stack([image, flat]), np.stack([prob, prob])[..., None], CRFConfig(iterations=3))
    assert out.shape == (2, 48, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], dense_crf(image, prob, CRFConfig(iterations=3)), atol=1e-6)
    assert np.all(np.isfinite(out[1]))


def test_shape_and_range_errors():
    image, prob, _ = _toy()
    with pytest.raises(DataError, match=r"\(48, 40\).*\(48, 48\)"):
        dense_crf(image, prob[:, :40])
    with pytest.raises(DataError, match="logits"):
        dense_crf(image, prob * 3 - 1)
    with pytest.raises(DataError, match="shape"):
        dense_crf_batch(np.stack([image, image]), prob[None])


def test_config_validation():
    with pytest.raises(ConfigError, match="postprocess.crf.iterations"):
        CRFConfig(iterations=0)
    with pytest.raises(ConfigError, match="postprocess.crf.bilateral_srgb"):
        CRFConfig(bilateral_srgb=0.0)
    with pytest.raises(ConfigError, match="postprocess.crf.gaussian_compat"):
        CRFConfig(gaussian_compat=-1.0)


def test_missing_pydensecrf2(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert not crf_available()
    with pytest.raises(ConfigError) as err:
        require_crf()
    message = str(err.value)
    for part in (
        "pydensecrf2",
        "pip install pydensecrf2==1.1",
        "compiles from source",
        "postprocess.crf.enabled: false",
    ):
        assert part in message
    assert "--set postprocess.crf.enabled=false" in message
    image, prob, _ = _toy()
    with pytest.raises(ConfigError, match="pydensecrf2"):
        dense_crf(image, prob, CRFConfig())
    # switched off: the probabilities come back unchanged and pydensecrf2 is not needed
    np.testing.assert_array_equal(dense_crf(image, prob, CRFConfig(enabled=False)), prob.astype(np.float32))
    assert dense_crf_batch(image[None], prob[None], CRFConfig(enabled=False), progress=True).shape == (
        1,
        48,
        48,
    )
