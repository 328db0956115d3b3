"""Radiomics of a nodule region against hand-worked values: first order, shape, GLCM texture, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lungnet.data.radiomics import LEVELS, quantise, radiomics_features, radiomics_table
from lungnet.errors import DataError


def _square(size=16, side=6, value=5.0):
    image = np.zeros((size, size))
    mask = np.zeros((size, size), bool)
    mask[5 : 5 + side, 4 : 4 + side] = True
    image[mask] = value
    return image, mask


def test_uniform_region():
    f = radiomics_features(*_square())
    assert f["first_mean"] == 5.0 and f["first_std"] == 0.0 and f["first_entropy"] == 0.0
    assert f["first_energy"] == 25.0 and f["first_skewness"] == 0.0
    assert f["shape_area"] == 36 and f["shape_extent"] == 1.0 and f["shape_solidity"] == 1.0
    # one grey level: every co-occurrence on the diagonal
    assert f["glcm_contrast"] == 0.0 and f["glcm_homogeneity"] == 1.0
    assert f["glcm_energy"] == 1.0 and f["glcm_asm"] == 1.0 and f["glcm_correlation"] == 1.0


def test_checkerboard_texture_by_hand():
    """A 0/1 checkerboard quantises to levels 1 and 32: horizontal and vertical neighbours always differ
    (contrast 31² = 961, dissimilarity 31), diagonal ones never (0), so the means over the 4 directions are
    480.5 and 15.5; outside pixels (value 0 too) must not count."""
    image = np.zeros((12, 12))
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    yy, xx = np.mgrid[:12, :12]
    image[mask] = ((yy + xx) % 2)[mask]
    f = radiomics_features(image, mask)
    assert f["glcm_contrast"] == pytest.approx((LEVELS - 1) ** 2 / 2)
    assert f["glcm_dissimilarity"] == pytest.approx((LEVELS - 1) / 2)
    assert f["first_entropy"] == pytest.approx(1.0)  # half 0, half 1: one bit
    assert f["first_mean"] == 0.5 and f["first_std"] == 0.5


def test_quantisation_levels():
    image = np.array([[0.0, 0.5, 1.0, 9.0]])
    mask = np.array([[True, True, True, False]])
    np.testing.assert_array_equal(quantise(image, mask, levels=4), [[1, 3, 4, 0]])


def test_moments_match_scipy_and_spacing_scales_shape():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, size=(32, 32))
    yy, xx = np.mgrid[:32, :32]
    mask = (yy - 16) ** 2 + (xx - 15) ** 2 <= 10**2
    f = radiomics_features(image, mask, spacing_mm=0.5)
    values = image[mask]
    assert f["first_skewness"] == pytest.approx(stats.skew(values))
    assert f["first_kurtosis"] == pytest.approx(stats.kurtosis(values))
    assert f["first_p90"] == pytest.approx(np.percentile(values, 90))
    assert f["shape_area_mm2"] == pytest.approx(mask.sum() * 0.25)
    assert f["shape_equivalent_diameter_mm"] == pytest.approx(2 * np.sqrt(mask.sum() / np.pi) * 0.5)
    assert 0.85 < f["shape_compactness"] <= 1.1  # a disc, up to the perimeter estimate
    assert f["shape_eccentricity"] < 0.2


def test_bad_items_are_named_and_skipped_in_a_table():
    image, mask = _square()
    samples = [
        ("ok", image, mask, 0.7),
        ("empty", image, np.zeros_like(mask), 0.7),
        ("shape", image, mask[:8], 0.7),
    ]
    table, problems = radiomics_table(samples, progress=False)
    assert list(table.index) == ["ok"]
    assert problems[0].startswith("empty: ") and "mask is empty" in problems[0]
    assert problems[1].startswith("shape: ") and "same [H, W]" in problems[1]
    with pytest.raises(DataError, match="non-finite"):
        radiomics_features(np.where(mask, np.nan, 0.0), mask)
