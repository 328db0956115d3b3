"""Hand-crafted radiomics of a nodule region (one 2-D slice and its mask), for the SVM baselines.

pyradiomics is not used: version 3.1.0 (the latest) has no wheel for CPython 3.11, and its C extension
predates NumPy 2. The features are computed with NumPy and scikit-image instead, and named as in the
IBSI / pyradiomics vocabulary where the definition is the same:

- **first order** over the region's pixels: mean, std, min, max, median, 10th / 90th percentile, skewness,
  kurtosis (excess), energy (mean of squares), entropy of a 32-bin histogram (bits);
- **shape** (scikit-image `regionprops` of the whole mask): area, perimeter, equivalent diameter, major and
  minor axis, eccentricity, solidity, extent, compactness ``4·pi·area / perimeter²``. Lengths are in pixels,
  and also in mm when the pixel spacing is known;
- **GLCM texture**: the region's intensities are quantised into 32 levels between its own minimum and
  maximum. Co-occurrences at distance 1 in 4 directions (0°, 45°, 90°, 135°) count only pairs whose two
  pixels are both inside the mask, symmetric and normalised. Contrast, dissimilarity, homogeneity, energy,
  correlation and ASM are averaged over the directions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops
from tqdm.auto import tqdm

from lungnet.errors import DataError

LEVELS = 32
HISTOGRAM_BINS = 32
ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def _first_order(values: np.ndarray) -> dict[str, float]:
    mean, std = float(values.mean()), float(values.std())
    centred = values - mean
    skewness = float((centred**3).mean() / std**3) if std > 0 else 0.0
    kurtosis = float((centred**4).mean() / std**4 - 3.0) if std > 0 else 0.0
    counts, _ = np.histogram(values, bins=HISTOGRAM_BINS)
    p = counts[counts > 0] / values.size
    return {
        "mean": mean,
        "std": std,
        "min": float(values.min()),
        "max": float(values.max()),
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
        "skewness": skewness,
        "kurtosis": kurtosis,
        "energy": float((values**2).mean()),
        "entropy": float(-(p * np.log2(p)).sum()),
    }


def _shape(mask: np.ndarray, spacing_mm: float | None) -> dict[str, float]:
    region = regionprops(mask.astype(np.uint8))[0]
    perimeter = float(region.perimeter)
    lengths = {
        "perimeter": perimeter,
        "equivalent_diameter": float(region.equivalent_diameter_area),
        "major_axis": float(region.axis_major_length),
        "minor_axis": float(region.axis_minor_length),
    }
    features = {
        "area": float(region.area),
        **lengths,
        "eccentricity": float(region.eccentricity),
        "solidity": float(region.solidity),
        "extent": float(region.extent),
        "compactness": float(4 * math.pi * region.area / perimeter**2) if perimeter > 0 else 0.0,
    }
    if spacing_mm is not None and np.isfinite(spacing_mm):
        features["area_mm2"] = features["area"] * spacing_mm**2
        features.update({f"{k}_mm": v * spacing_mm for k, v in lengths.items()})
    return features


def quantise(image: np.ndarray, mask: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Levels ``1..levels`` inside the mask (its own min to max, equal widths), 0 outside."""
    values = image[mask]
    low, span = float(values.min()), float(values.max() - values.min())
    scaled = (image - low) / span if span > 0 else np.zeros_like(image, dtype=float)
    q = 1 + np.clip(np.floor(scaled * levels), 0, levels - 1).astype(np.int64)
    return np.where(mask, q, 0)


def _glcm(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    q = quantise(image, mask)
    counts = graycomatrix(q.astype(np.uint8), [1], ANGLES, levels=LEVELS + 1, symmetric=True, normed=False)
    counts = counts[1:, 1:].astype(float)  # drop pairs touching level 0: outside the mask
    totals = counts.sum(axis=(0, 1), keepdims=True)
    if not (totals > 0).all():
        # a region without neighbouring pairs in some direction (a single pixel, a thin diagonal line)
        return {f"glcm_{p.lower()}": float("nan") for p in GLCM_PROPERTIES}
    matrix = counts / totals
    features = {}
    for prop in GLCM_PROPERTIES:
        values = graycoprops(matrix, prop)[0]
        if prop == "correlation":  # a constant region: scikit-image returns 1 by convention
            values = np.where(np.isfinite(values), values, 1.0)
        features[f"glcm_{prop.lower()}"] = float(values.mean())
    return features


def radiomics_features(
    image: np.ndarray, mask: np.ndarray, spacing_mm: float | None = None
) -> dict[str, float]:
    """First-order, shape and GLCM features of `image` inside the binary `mask` (both ``[H, W]``)."""
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if image.ndim != 2 or image.shape != mask.shape:
        raise DataError(f"radiomics: image {image.shape} and mask {mask.shape} must be the same [H, W]")
    mask = mask > 0
    if not mask.any():
        raise DataError("radiomics: the mask is empty (no region to describe)")
    values = image[mask]
    if not np.isfinite(values).all():
        raise DataError("radiomics: the image has non-finite values inside the mask")
    first = {f"first_{k}": v for k, v in _first_order(values).items()}
    shape = {f"shape_{k}": v for k, v in _shape(mask, spacing_mm).items()}
    return {**first, **shape, **_glcm(image, mask)}


def radiomics_table(samples, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Features of each ``(key, image, mask, spacing_mm)`` in `samples`: one row per key. A sample whose
    features cannot be computed (an empty mask, mismatched shapes) is skipped and named in the returned
    list of problems, rather than stopping the build."""
    rows, problems = {}, []
    for key, image, mask, spacing in tqdm(samples, desc="radiomics", unit="slice", disable=not progress):
        try:
            rows[key] = radiomics_features(image, mask, spacing)
        except DataError as exc:
            problems.append(f"{key}: {exc}")
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table, problems
