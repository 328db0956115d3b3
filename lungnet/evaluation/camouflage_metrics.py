"""The Inf-Net study's evaluation (Fan et al., IEEE TMI 2020) on NumPy arrays: S-measure, mean E-measure, MAE,
Dice / sensitivity / specificity at a threshold, and slice-level detection accuracy.

The S- and E-measures come from the salient / camouflaged object literature that Inf-Net's authors evaluate
with; they score a foreground map against a binary truth by structure rather than pixel counts alone.

Inputs: ``y_true`` masks [N, H, W] of 0/1 or bool and ``probs`` foreground probabilities [N, H, W] in [0, 1]
(a single [H, W] image and a trailing channel axis of size 1 are accepted). Each score is per image; the
summaries are means over images.

Definitions (per image; G the truth, P the probabilities, N = H W pixels, eps the float64 machine epsilon)
----------------------------------------------------------------------------------------------------------
S-measure (Fan et al., ICCV 2017), alpha = 0.5: ``S = alpha S_o + (1 - alpha) S_r``, clipped below at 0 (the
authors' code does; only a map anti-correlated with the truth goes negative). An all-zero G gives
``S = 1 - mean(P)``, an all-one G ``S = mean(P)``.
  object term: ``S_o = mu O_fg + (1 - mu) O_bg`` with mu = mean(G), ``O_fg = o(P on G)``,
  ``O_bg = o(1 - P off G)`` and ``o(v) = 2 mean(v) / (mean(v)^2 + 1 + std(v) + eps)``; std is the sample
  standard deviation (N - 1, as MATLAB's ``std`` in the authors' code; 0 for a single pixel).
  region term: the truth's centroid (X, Y), 1-based and rounded half up, splits both maps into four blocks
  (top-left: rows 1..Y, columns 1..X, and so on); ``S_r = sum_k w_k ssim_k`` with w_k the block's share of
  the image and ``ssim = 4 x y s_xy / ((x^2 + y^2)(s_x^2 + s_y^2) + eps)`` (means x, y, (co)variances s); it
  is 1 where both numerator and denominator are 0, 0 where only the numerator is, and an empty block
  (weight 0) contributes 0.
E-measure (Fan et al., IJCAI 2018) of a binary map F: with ``a_F = F - mean(F)``, ``a_G = G - mean(G)``,
  ``xi = 2 a_F a_G / (a_F^2 + a_G^2)`` and ``phi = (1 + xi)^2 / 4``, ``E = mean(phi)``. An all-zero G gives
  ``phi = 1 - F``, an all-one G ``phi = F``. The mean is the paper's ``1 / (w h)``; the authors' code divides
  by N - 1, so its perfect score is N / (N - 1) (1.00001 at 352 x 352), lungnet's is 1.
mean E-measure: as Inf-Net's evaluation code, E of ``F = P > t`` averaged over the 256 thresholds
  t = 0, 1/255, ..., 1 (at t = 1 nothing is foreground).
MAE: ``mean |P - G|``.
Dice, sensitivity, specificity: `lungnet.evaluation.segmentation.per_image_metrics` of ``P > threshold``
  (default 0.5), with its conventions for empty masks (NaN where undefined, left out of the means). Inf-Net's
  code instead averages these over the same 256 thresholds and scores any map without a true positive 0.

Inf-Net's evaluation min-max normalises each map to [0, 1] before scoring. ``minmax=True`` does the same (a
constant map is left as it is); the default scores lungnet's probabilities as they are, since stretching
turns a faint all-background map into a confident one.

Detection accuracy (`slice_detections`, `detection_accuracy`)
-------------------------------------------------------------
The paper reports a detection "accuracy" without defining it. Here, per slice: the prediction is
``P > threshold``; the slice is *flagged* when that has at least ``min_area`` pixels. A slice whose truth has
a nodule is *detected* when it is flagged, its prediction shares at least one pixel with the truth and the
slice-level IoU is >= ``min_iou`` (default 0: any overlap). A slice without a nodule is a *correct negative*
when it is not flagged. ``accuracy = (detected + correct negatives) / slices``. On a set without empty slices
(lidc-crops: every crop holds a nodule) the negative part is undefined: ``slice_specificity`` is None,
``accuracy_covers`` says "positives only", and the accuracy is then the slice-level sensitivity.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lungnet.config import is_int
from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.segmentation import (
    as_maps,
    binarize,
    check_binary_masks,
    check_per_image_table,
    per_image_metrics,
)

EPS = np.finfo(np.float64).eps
ALPHA = 0.5
E_THRESHOLDS = np.arange(256) / 255.0
MAP_COLUMNS = ("s_measure", "e_measure", "mae", "dice", "sensitivity", "specificity", "gt_pixels")
SLICE_COLUMNS = ("has_nodule", "pred_pixels", "overlap_pixels", "iou", "flagged", "correct", "outcome")


# ----------------------------------------------------------------------------------------------------- inputs
def _minmax(p: np.ndarray) -> np.ndarray:
    low = p.min(axis=(1, 2), keepdims=True)
    span = p.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (p - low) / np.where(span > 0, span, 1.0), p)


def _inputs(y_true, probs, minmax: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(truth as bool [N, H, W], probabilities as float64 [N, H, W]), checked."""
    t = check_binary_masks(as_maps(np.asarray(y_true), "y_true"), "y_true")
    p = as_maps(np.asarray(probs, dtype=np.float64), "probs")
    if t.shape != p.shape:
        raise DataError(f"y_true has shape {t.shape} but probs has shape {p.shape}")
    bad = ~(np.isfinite(p) & (p >= 0) & (p <= 1))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"probs must be probabilities in [0, 1], found {p[idx]} at index {idx}")
    return t, (_minmax(p) if minmax else p)


# -------------------------------------------------------------------------------------------------- S-measure
def _object_score(v: np.ndarray) -> float:
    if v.size == 0:
        return 0.0
    x = v.mean()
    sigma = v.std(ddof=1) if v.size > 1 else 0.0
    return float(2.0 * x / (x * x + 1.0 + sigma + EPS))


def s_object(g: np.ndarray, p: np.ndarray) -> float:
    """The object-aware term ``mu O_fg + (1 - mu) O_bg`` of one image (module docstring)."""
    mu = g.mean()
    return float(mu * _object_score(p[g]) + (1.0 - mu) * _object_score(1.0 - p[~g]))


def _centroid(g: np.ndarray) -> tuple[int, int]:
    """(X, Y): the truth's centroid, 1-based column and row, rounded half up (MATLAB's ``round``)."""
    rows, cols = np.nonzero(g)
    if rows.size == 0:
        h, w = g.shape
        return math.floor(w / 2 + 0.5), math.floor(h / 2 + 0.5)
    return math.floor(cols.mean() + 1.5), math.floor(rows.mean() + 1.5)


def _ssim(p: np.ndarray, g: np.ndarray) -> float:
    if p.size == 0:
        return 0.0
    flat_p, flat_g = p.max() == p.min(), g.max() == g.min()
    if flat_p or flat_g:
        # the covariance, so the numerator, is 0; the denominator is 0 only if both are flat. Decided
        # exactly here: a float mean of a constant block can leave a variance of 1e-34 instead of 0
        return 1.0 if flat_p and flat_g else 0.0
    g = g.astype(np.float64)
    x, y = p.mean(), g.mean()
    # population (co)variances: the N - 1 of the authors' code cancels in the ratio
    dx, dy = p - x, g - y
    var_x, var_y, cov = (dx * dx).mean(), (dy * dy).mean(), (dx * dy).mean()
    return float(4.0 * x * y * cov / ((x * x + y * y) * (var_x + var_y) + EPS))


def s_region(g: np.ndarray, p: np.ndarray) -> float:
    """The region-aware term: block-area-weighted ssim of the four blocks around the centroid."""
    h, w = g.shape
    x, y = _centroid(g)
    blocks = [(slice(0, y), slice(0, x)), (slice(0, y), slice(x, w))]
    blocks += [(slice(y, h), slice(0, x)), (slice(y, h), slice(x, w))]
    return float(sum(p[b].size / (h * w) * _ssim(p[b], g[b]) for b in blocks))


def _s_measure_one(g: np.ndarray, p: np.ndarray, alpha: float) -> float:
    mu = g.mean()
    if mu == 0:
        return float(1.0 - p.mean())
    if mu == 1:
        return float(p.mean())
    return max(0.0, alpha * s_object(g, p) + (1.0 - alpha) * s_region(g, p))


def s_measure(y_true, probs, alpha: float = ALPHA, minmax: bool = False) -> np.ndarray:
    """S-measure per image [N] (module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha: {alpha!r} must be in [0, 1]")
    t, p = _inputs(y_true, probs, minmax)
    return np.array([_s_measure_one(g, q, alpha) for g, q in zip(t, p, strict=True)])


# -------------------------------------------------------------------------------------------------- E-measure
def _phi(a_f: np.ndarray, a_g: float) -> np.ndarray:
    """The enhanced alignment of pixels with bias a_f and a_g; a_g != 0 (G is neither empty nor full)."""
    xi = 2.0 * a_f * a_g / (a_f * a_f + a_g * a_g)
    return (1.0 + xi) ** 2 / 4.0


def _e_from_counts(tp, fp, n_fg: int, n_bg: int) -> np.ndarray:
    """E-measure of binary maps given per map (arrays) TP and FP; every pixel of one (F, G) class has one phi."""
    n = n_fg + n_bg
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    fn, tn = n_fg - tp, n_bg - fp
    if n_fg == 0:
        return tn / n
    if n_bg == 0:
        return tp / n
    mu_f, mu_g = (tp + fp) / n, n_fg / n
    on, off = 1.0 - mu_f, -mu_f  # a_F where F = 1 and F = 0
    total = tp * _phi(on, 1.0 - mu_g) + fn * _phi(off, 1.0 - mu_g)
    total += fp * _phi(on, -mu_g) + tn * _phi(off, -mu_g)
    return total / n


def e_measure(y_true, y_pred) -> np.ndarray:
    """E-measure per image [N] of binary predicted masks ``y_pred`` (module docstring)."""
    t = check_binary_masks(as_maps(np.asarray(y_true), "y_true"), "y_true")
    f = check_binary_masks(as_maps(np.asarray(y_pred), "y_pred"), "y_pred")
    if t.shape != f.shape:
        raise DataError(f"y_true has shape {t.shape} but y_pred has shape {f.shape}")
    out = []
    for g, m in zip(t, f, strict=True):
        n_fg = int(g.sum())
        out.append(_e_from_counts((g & m).sum(), (~g & m).sum(), n_fg, g.size - n_fg))
    return np.array(out, dtype=np.float64)


def _above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many of ``values`` are > t (a sorted search, not a loop over pixels)."""
    return values.size - np.searchsorted(np.sort(values), thresholds, side="right")


def mean_e_measure(y_true, probs, minmax: bool = False) -> np.ndarray:
    """Per image [N], the mean over the 256 thresholds t = k / 255 of the E-measure of ``probs > t``."""
    t, p = _inputs(y_true, probs, minmax)
    out = []
    for g, q in zip(t, p, strict=True):
        tp, fp = _above(q[g], E_THRESHOLDS), _above(q[~g], E_THRESHOLDS)
        n_fg = int(g.sum())
        out.append(_e_from_counts(tp, fp, n_fg, g.size - n_fg).mean())
    return np.array(out, dtype=np.float64)


# -------------------------------------------------------------------------------------------- the study's table
def mae(y_true, probs, minmax: bool = False) -> np.ndarray:
    """Mean absolute error per image [N]."""
    t, p = _inputs(y_true, probs, minmax)
    return np.abs(p - t).mean(axis=(1, 2))


def per_image_map_metrics(y_true, probs, threshold: float = 0.5, minmax: bool = False) -> pd.DataFrame:
    """One row per image: s_measure, e_measure (the mean over thresholds), mae, and at ``threshold`` dice,
    sensitivity and specificity (`per_image_metrics`' conventions), gt_pixels."""
    t, p = _inputs(y_true, probs, minmax)
    at_threshold = per_image_metrics(t, binarize(p, threshold))
    table = pd.DataFrame(
        {
            "s_measure": s_measure(t, p),
            "e_measure": mean_e_measure(t, p),
            "mae": mae(t, p),
            "dice": at_threshold["dice"].to_numpy(),
            "sensitivity": at_threshold["sensitivity"].to_numpy(),
            "specificity": at_threshold["specificity"].to_numpy(),
            "gt_pixels": at_threshold["gt_pixels"].to_numpy(),
        }
    )
    table.index.name = "image"
    table.attrs.update({"threshold": float(threshold), "minmax": bool(minmax)})
    return table


def map_metrics(per_image: pd.DataFrame) -> dict:
    """Means over images of `per_image_map_metrics`' scores (NaN skipped), with ``n_images``."""
    check_per_image_table(per_image, MAP_COLUMNS, "per_image_map_metrics")
    out = {}
    for column in MAP_COLUMNS[:-1]:
        values = per_image[column].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        out[column] = float(values.mean()) if values.size else math.nan
    out["n_images"] = len(per_image)
    return out


# -------------------------------------------------------------------------------------------------- detection
def slice_detections(
    y_true, probs, threshold: float = 0.5, min_iou: float = 0.0, min_area: int = 1
) -> pd.DataFrame:
    """One row per slice: has_nodule, pred_pixels, overlap_pixels, iou, flagged, correct and the outcome
    (detected / missed / correct_negative / false_positive); criteria in the module docstring, kept in
    ``table.attrs`` for `detection_accuracy`."""
    if isinstance(min_iou, bool) or not isinstance(min_iou, int | float) or not 0.0 <= min_iou <= 1.0:
        raise ConfigError(f"min_iou: {min_iou!r} must be a number in [0, 1]")
    if not (is_int(min_area) and min_area >= 1):
        raise ConfigError(f"min_area: {min_area!r} must be an integer >= 1 (pixels)")
    t, p = _inputs(y_true, probs)
    m = binarize(p, threshold).astype(bool)
    gt = t.sum(axis=(1, 2))
    pred = m.sum(axis=(1, 2))
    overlap = (t & m).sum(axis=(1, 2))
    union = gt + pred - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), np.nan)  # NaN: both empty
    has_nodule, flagged = gt > 0, pred >= min_area
    detected = has_nodule & flagged & (overlap > 0) & (np.nan_to_num(iou) >= min_iou)
    correct = np.where(has_nodule, detected, ~flagged)
    outcome = np.where(
        has_nodule,
        np.where(detected, "detected", "missed"),
        np.where(flagged, "false_positive", "correct_negative"),
    )
    table = pd.DataFrame(
        {
            "has_nodule": has_nodule,
            "pred_pixels": pred.astype(np.int64),
            "overlap_pixels": overlap.astype(np.int64),
            "iou": iou,
            "flagged": flagged,
            "correct": correct.astype(bool),
            "outcome": outcome,
        }
    )
    table.index.name = "slice"
    table.attrs.update({"threshold": float(threshold), "min_iou": float(min_iou), "min_area": int(min_area)})
    return table


def detection_accuracy(slices: pd.DataFrame) -> dict:
    """Slice-level accuracy and its counts from `slice_detections`; None where a part is undefined.

    ``accuracy_covers`` is "positives and negatives", "positives only" (no empty slice: accuracy is the
    slice sensitivity and ``slice_specificity`` None) or "negatives only" (no nodule: the reverse).
    """
    missing = [c for c in SLICE_COLUMNS if c not in slices.columns]
    if missing:
        raise DataError(f"slice table lacks column(s) {missing}; build it with slice_detections()")
    if len(slices) == 0:
        raise DataError("slice table is empty (no slices to score)")
    counts = slices["outcome"].value_counts()
    detected, missed = int(counts.get("detected", 0)), int(counts.get("missed", 0))
    negatives, false_pos = int(counts.get("correct_negative", 0)), int(counts.get("false_positive", 0))
    n_pos, n_neg = detected + missed, negatives + false_pos
    covers = {(True, True): "positives and negatives", (True, False): "positives only"}
    return {
        "accuracy": (detected + negatives) / len(slices),
        "accuracy_covers": covers.get((n_pos > 0, n_neg > 0), "negatives only"),
        "slice_sensitivity": detected / n_pos if n_pos else None,
        "slice_specificity": negatives / n_neg if n_neg else None,
        "n_slices": len(slices),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "detected": detected,
        "missed": missed,
        "correct_negatives": negatives,
        "false_positives": false_pos,
        **{k: slices.attrs.get(k) for k in ("threshold", "min_iou", "min_area")},
    }
