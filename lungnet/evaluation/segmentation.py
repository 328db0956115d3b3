"""Segmentation metrics for binary nodule masks (NumPy): per-image scores, means, pooled scores, per-lesion recall.

Inputs: ``y_true`` and ``y_pred`` are masks [N, H, W] of 0/1 or bool (a single [H, W] mask and a trailing
channel axis of size 1, as Keras models output, are accepted too). Threshold probabilities with `binarize`
first; `check_binary_masks` rejects anything else.

Definitions (per image; TP, FP, FN, TN are pixel counts, foreground = 1)
-------------------------------------------------------------------------
dice = 2 TP / (2 TP + FP + FN), iou = TP / (TP + FP + FN); both are 1 when ground truth and prediction are
both empty (nothing to find, nothing predicted) and 0 when exactly one of them is empty.
precision = TP / (TP + FP). With no predicted pixels it is undefined (NaN, left out of means) unless the
ground truth is empty too, which counts as 1.
sensitivity = TP / (TP + FN). With an empty ground truth it is NaN unless the prediction is empty too (1).
specificity = TN / (TN + FP). With no background pixels in the ground truth it is NaN unless the prediction
has none either (1).
accuracy = (TP + TN) / (H W), pixel accuracy (dominated by background on small nodules; reported because the
study does).

Aggregates (`aggregate_metrics`)
--------------------------------
``dice``, ``iou``, ``precision``, ``sensitivity``, ``specificity``, ``accuracy``: means over images, NaNs
skipped. ``dice_pooled`` / ``iou_pooled``: the same formulas on TP, FP, FN summed over all images (large
masks weigh more; 1 if every mask is empty). ``f_score``: harmonic mean of the mean precision and the mean
sensitivity. Per pixel, F1 = 2 TP / (2 TP + FP + FN) is exactly Dice, so a study that reports an F-score
next to Dice can only mean a score built from its mean precision and mean sensitivity; this is that score.

Lesions (`lesion_table`, `small_tumour_recall`)
-----------------------------------------------
A lesion is an 8-connected component of a ground-truth mask. Its IoU is taken against the union of the
predicted components that touch it; it is detected when that IoU >= ``min_iou``. Its diameter is the
equivalent-circle diameter 2 sqrt(area / pi) times the pixel spacing of its image (at the resolution the
masks are evaluated at); it is small when the diameter < ``max_diameter_mm``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from lungnet.errors import ConfigError, DataError

PER_IMAGE_COLUMNS = (
    "dice",
    "iou",
    "precision",
    "sensitivity",
    "specificity",
    "accuracy",
    "gt_pixels",
    "pred_pixels",
    "tp",
    "fp",
    "fn",
    "tn",
)
LESION_COLUMNS = (
    "image",
    "lesion",
    "area_px",
    "pixel_spacing_mm",
    "diameter_px",
    "diameter_mm",
    "diameter",
    "diameter_unit",
    "iou",
    "detected",
    "small",
)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------------------------------- inputs
def check_binary_masks(masks, what: str) -> np.ndarray:
    """Raise `DataError` naming ``what`` unless ``masks`` holds only 0/1 (or bool); return it as bool."""
    a = np.asarray(masks)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf":
        raise DataError(f"{what} must be binary masks of 0/1, got dtype {a.dtype}")
    bad = (a != 0) & (a != 1)  # NaN is caught too
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        values = np.unique(a[bad])[:5].tolist()
        raise DataError(
            f"{what} must be binary masks of 0/1, found {values} (first at index {idx}); "
            "threshold probabilities with binarize() first"
        )
    return a.astype(bool)


def as_maps(a: np.ndarray, what: str) -> np.ndarray:
    """`a` as ``[N, H, W]`` (from ``[H, W]`` or ``[N, H, W, 1]``); a DataError naming `what` otherwise."""
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3:
        raise DataError(f"{what} must be maps [N, H, W], got shape {a.shape}")
    if a.shape[0] == 0:
        raise DataError(f"{what} is empty (no images to evaluate)")
    return a


def _as_masks(masks, what: str) -> np.ndarray:
    return check_binary_masks(as_maps(np.asarray(masks), what), what)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_masks(y_true, "y_true"), _as_masks(y_pred, "y_pred")
    if t.shape != p.shape:
        raise DataError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    return t, p


def binarize(probs, threshold: float = 0.5) -> np.ndarray:
    """Masks from foreground probabilities: 1 where p > ``threshold`` (a tie is background, as in metrics.py)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold: must be in [0, 1], got {threshold!r}")
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(p))[0])
        raise DataError(f"probs has a non-finite value at index {idx}")
    return (p > threshold).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- metrics
def _safe_ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    """num / den; where den == 0: 1 if ``both_empty`` (the convention above) else NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(den > 0, r, np.where(both_empty, 1.0, np.nan))


def per_image_metrics(y_true, y_pred) -> pd.DataFrame:
    """One row per image: dice, iou, precision, sensitivity, specificity, accuracy, pixel counts, TP/FP/FN/TN.

    Conventions for empty masks are in the module docstring. The TP/FP/FN/TN columns are kept so that
    `aggregate_metrics` can pool over images.
    """
    t, p = _pair(y_true, y_pred)
    axes = (1, 2)
    tp = (t & p).sum(axis=axes).astype(np.float64)
    fp = (~t & p).sum(axis=axes).astype(np.float64)
    fn = (t & ~p).sum(axis=axes).astype(np.float64)
    tn = (~t & ~p).sum(axis=axes).astype(np.float64)
    gt, pred = tp + fn, tp + fp
    n_pix = t.shape[1] * t.shape[2]
    both_empty = (gt == 0) & (pred == 0)
    table = pd.DataFrame(
        {
            "dice": _safe_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            "iou": _safe_ratio(tp, tp + fp + fn, both_empty),
            "precision": _safe_ratio(tp, pred, gt == 0),
            "sensitivity": _safe_ratio(tp, gt, pred == 0),
            "specificity": _safe_ratio(tn, tn + fp, pred == n_pix),
            "accuracy": (tp + tn) / n_pix,
            "gt_pixels": gt.astype(np.int64),
            "pred_pixels": pred.astype(np.int64),
            "tp": tp.astype(np.int64),
            "fp": fp.astype(np.int64),
            "fn": fn.astype(np.int64),
            "tn": tn.astype(np.int64),
        }
    )
    table.index.name = "image"
    return table


def _harmonic(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def check_per_image_table(per_image: pd.DataFrame, columns, builder: str) -> None:
    """A DataError unless `per_image` is a non-empty table with `columns` (as `builder` makes it)."""
    missing = [c for c in columns if c not in per_image.columns]
    if missing:
        raise DataError(f"per-image table lacks column(s) {missing}; build it with {builder}()")
    if len(per_image) == 0:
        raise DataError("per-image table is empty (no images to aggregate)")


def aggregate_metrics(per_image: pd.DataFrame) -> dict:
    """Means over images (NaN-skipping), pooled Dice/IoU, the study's F-score and counts; see the module docstring."""
    check_per_image_table(per_image, PER_IMAGE_COLUMNS, "per_image_metrics")

    def mean(col: str) -> float:
        values = per_image[col].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    out = {k: mean(k) for k in ("dice", "iou", "precision", "sensitivity", "specificity", "accuracy")}
    out["f_score"] = _harmonic(out["precision"], out["sensitivity"])
    tp, fp, fn = (float(per_image[c].sum()) for c in ("tp", "fp", "fn"))
    out["dice_pooled"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    out["iou_pooled"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    out["n_images"] = len(per_image)
    out["n_empty_gt"] = int((per_image["gt_pixels"] == 0).sum())
    return out


# ----------------------------------------------------------------------------------------------------- lesions
def _spacings(pixel_spacing_mm, n: int) -> np.ndarray:
    s = np.asarray(pixel_spacing_mm, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(n, float(s))
    if s.shape != (n,):
        raise DataError(
            f"pixel_spacing_mm must be a scalar or an array [{n}] (one per image), got shape {s.shape}"
        )
    bad = np.flatnonzero(~np.isnan(s) & ~(np.isfinite(s) & (s > 0)))
    if bad.size:
        raise DataError(
            f"pixel_spacing_mm[{bad[0]}] = {s[bad[0]]} is not a positive spacing (use NaN for unknown)"
        )
    return s


def lesion_table(
    y_true, y_pred, pixel_spacing_mm, max_diameter_mm: float = 10.0, min_iou: float = 0.3
) -> pd.DataFrame:
    """One row per ground-truth lesion (8-connected component): size, IoU with the prediction, detected, small.

    ``pixel_spacing_mm`` is a scalar or an array [N] (mm per pixel at the evaluated resolution, i.e. after
    any resizing). Where it is NaN, the diameter in pixels is used for the ``small`` test and
    ``diameter_unit`` says "px" (``diameter_mm`` is then NaN); ``diameter`` is the value that was compared
    with ``max_diameter_mm``. The thresholds are kept in ``table.attrs`` for `small_tumour_recall`.
    """
    if not (math.isfinite(max_diameter_mm) and max_diameter_mm > 0):
        raise ConfigError(f"max_diameter_mm: must be a positive number, got {max_diameter_mm!r}")
    if not 0.0 < min_iou <= 1.0:
        raise ConfigError(f"min_iou: must be in (0, 1], got {min_iou!r}")
    t, p = _pair(y_true, y_pred)
    spacing = _spacings(pixel_spacing_mm, len(t))
    rows = []
    for i in range(len(t)):
        gt_labels, n_gt = ndimage.label(t[i], structure=_EIGHT_CONNECTED)
        if n_gt == 0:
            continue
        pred_labels, _ = ndimage.label(p[i], structure=_EIGHT_CONNECTED)
        for j in range(1, n_gt + 1):
            lesion = gt_labels == j
            touching = np.unique(pred_labels[lesion])
            touching = touching[touching > 0]
            predicted = np.isin(pred_labels, touching) if touching.size else np.zeros_like(lesion)
            iou = float((lesion & predicted).sum() / (lesion | predicted).sum())
            area = int(lesion.sum())
            d_px = 2.0 * math.sqrt(area / math.pi)
            d_mm = d_px * spacing[i]  # NaN when the spacing is unknown
            known = not math.isnan(d_mm)
            rows.append(
                {
                    "image": i,
                    "lesion": j,
                    "area_px": area,
                    "pixel_spacing_mm": spacing[i],
                    "diameter_px": d_px,
                    "diameter_mm": d_mm,
                    "diameter": d_mm if known else d_px,
                    "diameter_unit": "mm" if known else "px",
                    "iou": iou,
                    "detected": iou >= min_iou,
                    "small": (d_mm if known else d_px) < max_diameter_mm,
                }
            )
    table = pd.DataFrame(rows, columns=list(LESION_COLUMNS))
    table = table.astype({"image": np.int64, "lesion": np.int64, "area_px": np.int64})
    table = table.astype({"detected": bool, "small": bool})
    table.attrs.update({"max_diameter_mm": float(max_diameter_mm), "min_iou": float(min_iou)})
    return table


def small_tumour_recall(lesions: pd.DataFrame) -> dict:
    """Recall over small lesions (diameter < max_diameter_mm; NaN if there are none) and over all lesions."""
    missing = [c for c in ("detected", "small") if c not in lesions.columns]
    if missing:
        raise DataError(f"lesion table lacks column(s) {missing}; build it with lesion_table()")
    detected = lesions["detected"].to_numpy(dtype=bool)
    small = lesions["small"].to_numpy(dtype=bool)
    n_small, n_small_detected = int(small.sum()), int((small & detected).sum())
    return {
        "small_tumour_recall": n_small_detected / n_small if n_small else math.nan,
        "n_small_lesions": n_small,
        "n_small_detected": n_small_detected,
        "lesion_recall": float(detected.mean()) if len(detected) else math.nan,
        "n_lesions": len(detected),
        "max_diameter_mm": lesions.attrs.get("max_diameter_mm"),
        "min_iou": lesions.attrs.get("min_iou"),
    }


# ------------------------------------------------------------------------------------------------------ levels
READERS_SLICES = (
    "the central slice (lidc-crops' is_central) of each nodule with 3-4 readers: the slices the radiologists' "
    "agreement is measured on"
)


def readers_slices(frame: pd.DataFrame) -> np.ndarray | None:
    """Which rows of `frame` are `READERS_SLICES`; None when it has no ``is_central`` and ``n_readers``."""
    if not {"is_central", "n_readers"} <= set(frame.columns):
        return None
    readers = pd.to_numeric(frame["n_readers"], errors="coerce")
    central = pd.to_numeric(frame["is_central"], errors="coerce") == 1
    return (central & readers.between(3, 4)).to_numpy()


def level_summaries(per_image: pd.DataFrame, frame: pd.DataFrame) -> dict:
    """Mean Dice and IoU on the radiologists' slices, per nodule and per patient, beside all slices.

    ``readers_slices``: `READERS_SLICES` (needs ``is_central`` and ``n_readers``); ``nodule``: the mean over
    nodules of each nodule's mean over its slices (slices without a nodule id left out); ``patient``: the same
    over patients. Each has ``n``.
    """
    table = per_image[["dice", "iou"]].reset_index(drop=True)
    frame = frame.reset_index(drop=True)

    def summary(rows: pd.DataFrame) -> dict:
        return {
            "dice": float(np.nanmean(rows["dice"])),
            "iou": float(np.nanmean(rows["iou"])),
            "n": len(rows),
        }

    out = {}
    central = readers_slices(frame)
    if central is not None and central.any():
        out["readers_slices"] = {**summary(table[central]), "definition": READERS_SLICES}
    for level, column in (("nodule", "nodule_id"), ("patient", "patient_id")):
        if column in frame.columns:
            ids = frame[column]
            known = ids.notna().to_numpy()  # nodule-free slices have no nodule id
            if known.any():
                out[level] = summary(table[known].groupby(ids[known].astype(str).to_numpy()).mean())
    return out
