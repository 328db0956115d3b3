"""Segmentation metrics: hand-computed values on tiny masks, empty-mask conventions, lesions, small-tumour recall."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.segmentation import (
    aggregate_metrics,
    binarize,
    check_binary_masks,
    lesion_table,
    per_image_metrics,
    small_tumour_recall,
)


def _four_images() -> tuple[np.ndarray, np.ndarray]:
    t = np.zeros((4, 4, 4), dtype=np.uint8)
    p = np.zeros((4, 4, 4), dtype=np.uint8)
    t[0, 0:2, 0:2] = 1  # image 0: gt = 2x2 block in columns 0-1
    p[0, 0:2, 1:3] = 1  #          pred = 2x2 block in columns 1-2 -> TP 2, FP 2, FN 2, TN 10
    # image 1: both empty
    t[2, 3, 0:2] = 1  # image 2: gt 2 px, nothing predicted -> TP 0, FP 0, FN 2, TN 14
    p[3, 3, 3] = 1  # image 3: gt empty, 1 px predicted -> TP 0, FP 1, FN 0, TN 15
    return t, p


def test_per_image_metrics_by_hand():
    t, p = _four_images()
    m = per_image_metrics(t, p)
    assert list(m[["tp", "fp", "fn", "tn"]].to_numpy()[0]) == [2, 2, 2, 10]
    r = m.iloc[0]
    assert r.dice == pytest.approx(0.5)  # 2*2 / (2*2 + 2 + 2)
    assert r.iou == pytest.approx(1 / 3)  # 2 / (2 + 2 + 2)
    assert r.precision == pytest.approx(0.5)  # 2 / (2 + 2)
    assert r.sensitivity == pytest.approx(0.5)  # 2 / (2 + 2)
    assert r.specificity == pytest.approx(10 / 12)  # 10 / (10 + 2)
    assert r.accuracy == pytest.approx(0.75)  # (2 + 10) / 16
    assert (r.gt_pixels, r.pred_pixels) == (4, 4)


def test_empty_mask_conventions():
    t, p = _four_images()
    m = per_image_metrics(t, p)
    # both empty: every score is 1
    assert (
        m.iloc[1][["dice", "iou", "precision", "sensitivity", "specificity", "accuracy"]].tolist()
        == [1.0] * 6
    )
    # gt 2 px, nothing predicted: dice 0, precision undefined, sensitivity 0/2, accuracy 14/16
    r = m.iloc[2]
    assert (r.dice, r.iou, r.sensitivity, r.specificity) == (0.0, 0.0, 0.0, 1.0)
    assert math.isnan(r.precision)
    assert r.accuracy == pytest.approx(14 / 16)
    # gt empty, 1 px predicted: dice 0, precision 0/1, sensitivity undefined, specificity 15/16
    r = m.iloc[3]
    assert (r.dice, r.iou, r.precision) == (0.0, 0.0, 0.0)
    assert math.isnan(r.sensitivity)
    assert r.specificity == pytest.approx(15 / 16)


def test_specificity_without_background():
    full = np.ones((1, 2, 2), dtype=bool)
    part = full.copy()
    part[0, 0, 0] = False
    assert per_image_metrics(full, full).specificity.iloc[0] == 1.0  # no negatives anywhere
    assert math.isnan(
        per_image_metrics(full, part).specificity.iloc[0]
    )  # TN + FP = 0, prediction has a negative


def test_aggregate_means_skip_nan_and_pooled():
    t, p = _four_images()
    agg = aggregate_metrics(per_image_metrics(t, p))
    assert agg["dice"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert agg["iou"] == pytest.approx((1 / 3 + 1 + 0 + 0) / 4)
    assert agg["precision"] == pytest.approx((0.5 + 1 + 0) / 3)  # image 2's NaN left out
    assert agg["sensitivity"] == pytest.approx((0.5 + 1 + 0) / 3)  # image 3's NaN left out
    assert agg["accuracy"] == pytest.approx((12 + 16 + 14 + 15) / 64)
    # pooled: TP = 2, FP = 2 + 1 = 3, FN = 2 + 2 = 4
    assert agg["dice_pooled"] == pytest.approx(4 / 11)  # 2*2 / (2*2 + 3 + 4)
    assert agg["iou_pooled"] == pytest.approx(2 / 9)  # 2 / (2 + 3 + 4)
    assert (agg["n_images"], agg["n_empty_gt"]) == (4, 2)


def test_f_score_is_harmonic_mean_of_mean_precision_and_sensitivity():
    t = np.zeros((2, 4, 4), dtype=bool)
    p = np.zeros((2, 4, 4), dtype=bool)
    t[0, 0:2, 0:2] = True  # gt 4 px
    p[0, 0:2, 0] = True  # pred 2 px inside -> precision 1, sensitivity 2/4, dice 2*2/(4+2) = 2/3
    t[1, 0, 0:2] = p[1, 0, 0:2] = True  # perfect -> precision 1, sensitivity 1, dice 1
    agg = aggregate_metrics(per_image_metrics(t, p))
    assert agg["precision"] == 1.0
    assert agg["sensitivity"] == pytest.approx(0.75)
    assert agg["f_score"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)  # = 6/7
    assert agg["dice"] == pytest.approx((2 / 3 + 1) / 2)  # = 5/6, a different number
    assert agg["dice_pooled"] == pytest.approx(0.8)  # TP 4, FP 0, FN 2 -> 8 / 10


def test_aggregate_needs_per_image_table():
    with pytest.raises(DataError, match="tp"):
        aggregate_metrics(pd.DataFrame({"dice": [1.0]}))


def _lesion_masks() -> tuple[np.ndarray, np.ndarray]:
    t = np.zeros((2, 20, 20), dtype=np.uint8)
    p = np.zeros((2, 20, 20), dtype=np.uint8)
    t[0, 0:4, 0:4] = 1  # lesion A: 16 px
    p[0, 0:5, 0:2] = 1  # overlaps A in 8 px, 2 px outside -> IoU 8 / (16 + 2) = 0.444
    t[0, 6:18, 6:18] = 1  # lesion B: 144 px
    p[0, 6:18, 6:8] = 1  # two separate strips inside B: 24 + 12 px -> IoU 36 / 144 = 0.25
    p[0, 6:18, 10] = 1
    p[0, 19, 0:3] = 1  # a false positive touching no lesion: not in any lesion's union
    t[1, 2:5, 2:5] = 1  # lesion C: 9 px, nothing predicted -> IoU 0
    return t, p


def test_lesion_table_sizes_iou_detection():
    t, p = _lesion_masks()
    les = lesion_table(t, p, pixel_spacing_mm=np.array([0.8, np.nan]), max_diameter_mm=10.0, min_iou=0.3)
    assert len(les) == 3
    a, b, c = (les.iloc[k] for k in range(3))
    assert (a.image, a.area_px, b.image, b.area_px, c.image, c.area_px) == (0, 16, 0, 144, 1, 9)
    # equivalent-circle diameters: 2 sqrt(16/pi) = 4.51 px -> 3.61 mm; 2 sqrt(144/pi) = 13.54 px -> 10.83 mm
    assert a.diameter_mm == pytest.approx(2 * math.sqrt(16 / math.pi) * 0.8)
    assert b.diameter_mm == pytest.approx(2 * math.sqrt(144 / math.pi) * 0.8)
    assert (a.diameter_unit, b.diameter_unit) == ("mm", "mm")
    # unknown spacing: the diameter in pixels (3.39 px) is used and the unit says so
    assert c.diameter_unit == "px" and math.isnan(c.diameter_mm)
    assert c.diameter == pytest.approx(2 * math.sqrt(9 / math.pi))
    assert a.iou == pytest.approx(8 / 18)
    assert b.iou == pytest.approx(0.25)
    assert c.iou == 0.0
    assert les.detected.tolist() == [True, False, False]
    assert les.small.tolist() == [True, False, True]


def test_lesion_thresholds_move_the_boundaries():
    t, p = _lesion_masks()
    les = lesion_table(t, p, pixel_spacing_mm=0.8, max_diameter_mm=12.0, min_iou=0.2)
    assert les.detected.tolist() == [True, True, False]  # B's 0.25 >= 0.2
    assert les.small.tolist() == [True, True, True]  # B's 10.83 mm < 12 mm; C: 2.71 mm


def test_small_tumour_recall_numbers():
    t, p = _lesion_masks()
    out = small_tumour_recall(lesion_table(t, p, pixel_spacing_mm=np.array([0.8, np.nan])))
    assert out["n_small_lesions"] == 2  # A and C
    assert out["n_small_detected"] == 1  # A
    assert out["small_tumour_recall"] == pytest.approx(0.5)
    assert out["lesion_recall"] == pytest.approx(1 / 3)
    assert (out["max_diameter_mm"], out["min_iou"]) == (10.0, 0.3)


def test_no_lesions_gives_nan_recall():
    empty = np.zeros((2, 5, 5), dtype=bool)
    les = lesion_table(empty, empty, pixel_spacing_mm=1.0)
    assert len(les) == 0 and "diameter_mm" in les.columns
    out = small_tumour_recall(les)
    assert math.isnan(out["small_tumour_recall"]) and out["n_small_lesions"] == 0


def test_lesion_table_bad_spacing_and_thresholds():
    t, p = _lesion_masks()
    with pytest.raises(DataError, match="pixel_spacing_mm"):
        lesion_table(t, p, pixel_spacing_mm=[0.8, 0.8, 0.8])
    with pytest.raises(DataError, match=r"pixel_spacing_mm\[1\]"):
        lesion_table(t, p, pixel_spacing_mm=[0.8, -1.0])
    with pytest.raises(ConfigError, match="min_iou"):
        lesion_table(t, p, pixel_spacing_mm=0.8, min_iou=0.0)


def test_check_binary_masks_names_the_input():
    assert check_binary_masks(np.array([[0, 1], [1, 0]]), "y_true").dtype == bool
    with pytest.raises(DataError, match="y_pred.*0.7"):
        check_binary_masks(np.array([[0.0, 0.7]]), "y_pred")
    t, _ = _four_images()
    with pytest.raises(DataError, match="y_pred"):
        per_image_metrics(t, t * 0.6)
    with pytest.raises(DataError, match="shape"):
        per_image_metrics(t, t[:2])


def test_binarize_and_channel_axis():
    assert binarize(np.array([0.2, 0.5, 0.7])).tolist() == [0, 0, 1]  # a tie is background
    t, p = _four_images()
    m = per_image_metrics(t[..., None], binarize(p[..., None].astype(float)))
    assert m.dice.iloc[0] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="threshold"):
        binarize(np.zeros(3), threshold=1.5)
