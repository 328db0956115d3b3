"""Inf-Net's evaluation metrics: S-measure, E-measure, MAE, the study's table and slice detection, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.camouflage_metrics import (
    detection_accuracy,
    e_measure,
    mae,
    map_metrics,
    mean_e_measure,
    per_image_map_metrics,
    s_measure,
    s_object,
    s_region,
    slice_detections,
)

# A 4x4 truth with a central 2x2 object; the prediction 0.8 on it, 0.2 around it, 0.6 in the last corner.
G = np.zeros((4, 4), dtype=bool)
G[1:3, 1:3] = True
P = np.where(G, 0.8, 0.2)
P[3, 3] = 0.6


# -------------------------------------------------------------------------------------------------- S-measure


def test_s_measure_object_and_region_terms_by_hand():
    # object term, mu = 4/16 = 0.25:
    #   O_fg: P on G = 0.8 (x4): mean 0.8, std 0 -> 2 * 0.8 / (0.64 + 1 + 0) = 0.9756098
    #   O_bg: 1 - P off G = 0.8 (x11), 0.4 (x1): mean 9.2/12 = 0.7666667; sample std: squared deviations
    #         11 * 0.0333333^2 + 0.3666667^2 = 0.1466667, / 11 -> sqrt = 0.1154701
    #         -> 2 * 0.7666667 / (0.5877778 + 1 + 0.1154701) = 1.5333333 / 1.7032479 = 0.9002413
    #   S_o = 0.25 * 0.9756098 + 0.75 * 0.9002413 = 0.9190834
    assert s_object(G, P) == pytest.approx(0.9190831, abs=1e-6)
    # region term: centroid columns/rows 2 and 3 (1-based), mean 2.5, rounded half up -> X = Y = 3 (half to
    # even would give 2). Blocks: top-left 3x3 (weight 9/16) holds 4 object px at 0.8 and 5 background at 0.2;
    # top-right 3x1, bottom-left 1x3 (prediction 0.2, truth 0) and bottom-right 1x1: flat, ssim 1.
    #   top-left: x = 4.2/9 = 0.4666667, y = 4/9; var_y = 20/81, cov = 20/81 * 0.6, var_x = 20/81 * 0.36
    #   ssim = 4 x y cov / ((x^2 + y^2)(var_x + var_y)) = (16/9) x 0.6 / ((x^2 + 16/81) * 1.36)
    #        = 0.4977778 / (0.4153086 * 1.36) = 0.8813038
    #   S_r = 9/16 * 0.8813038 + 7/16 = 0.9332334
    assert s_region(G, P) == pytest.approx(0.9332334, abs=1e-6)
    # S = 0.5 * 0.9190831 + 0.5 * 0.9332334 = 0.9261582
    assert s_measure(G, P)[0] == pytest.approx(0.9261582, abs=1e-6)


def test_s_measure_perfect_and_inverted():
    t = np.zeros((2, 6, 6), dtype=bool)
    t[0, 1:4, 2:5] = True
    t[1, 0:2, 0:6] = True
    np.testing.assert_allclose(s_measure(t, t.astype(float)), [1.0, 1.0], atol=1e-12)
    # inverted: both object terms are 0; image 0's centroid splits the object, its region term is negative
    # and S is clipped to 0. Image 1's band is cut along its own edge (X = 4, Y = 2): every block is flat in
    # both maps, ssim 1 whatever the values, so S = 0.5 * 0 + 0.5 * 1 (the definition, and the authors' code)
    np.testing.assert_allclose(s_measure(t, 1.0 - t), [0.0, 0.5], atol=1e-12)
    # a soft inverted map scores low
    assert s_measure(t[:1], np.where(t[:1], 0.3, 0.7))[0] < 0.2


def test_s_measure_special_cases():
    p = np.array([[0.2, 0.0], [0.4, 0.2]])
    assert s_measure(np.zeros((2, 2)), p)[0] == pytest.approx(1 - 0.2)  # 1 - mean(P)
    assert s_measure(np.ones((2, 2)), p)[0] == pytest.approx(0.2)  # mean(P)
    with pytest.raises(ConfigError, match="alpha"):
        s_measure(G, P, alpha=1.5)


# -------------------------------------------------------------------------------------------------- E-measure

g2 = np.array([[1, 0], [0, 0]], dtype=bool)


def test_e_measure_binary_by_hand():
    # F = top row, mean(F) = 0.5, mean(G) = 0.25
    #   (F=1, G=1): a_F 0.5, a_G 0.75 -> xi = 0.75 / 0.8125 = 0.9230769, phi = 1.9230769^2 / 4 = 0.9245562
    #   (F=1, G=0): a_F 0.5, a_G -0.25 -> xi = -0.25 / 0.3125 = -0.8, phi = 0.2^2 / 4 = 0.01
    #   (F=0, G=0) x2: a_F -0.5, a_G -0.25 -> xi = 0.8, phi = 1.8^2 / 4 = 0.81
    #   E = (0.9245562 + 0.01 + 2 * 0.81) / 4 = 0.6386391
    f = np.array([[1, 1], [0, 0]])
    assert e_measure(g2, f)[0] == pytest.approx(0.6386391, abs=1e-6)


def test_e_measure_perfect_and_special_cases():
    t = np.zeros((1, 5, 5), dtype=bool)
    t[0, 1:3, 1:4] = True
    assert e_measure(t, t)[0] == pytest.approx(1.0, abs=1e-12)
    f = np.zeros((5, 5))
    f[0, :3] = 1
    assert e_measure(np.zeros((5, 5)), f)[0] == pytest.approx(22 / 25)  # all-zero truth: mean(1 - F)
    assert e_measure(np.ones((5, 5)), f)[0] == pytest.approx(3 / 25)  # all-one truth: mean(F)
    # an empty map on a non-trivial truth: a_F = 0, xi = 0, phi = 1/4 everywhere
    assert e_measure(t, np.zeros_like(t))[0] == pytest.approx(0.25)


def test_mean_e_measure_over_256_thresholds_by_hand():
    # P = [[0.9, 0.3], [0, 0]]; F = P > t for t = k/255:
    #   k = 0..76 (t < 0.3, 77 thresholds): F = top row -> E = 0.6386391 (above)
    #   k = 77..229 (0.3 <= t < 0.9, 153): F = G -> E = 1
    #   k = 230..255 (26, t = 1 included): F empty -> E = 0.25
    #   mean = (77 * 0.6386391 + 153 + 26 * 0.25) / 256 = 208.675211 / 256 = 0.8151375
    p = np.array([[0.9, 0.3], [0.0, 0.0]])
    assert mean_e_measure(g2, p)[0] == pytest.approx(0.8151375, abs=1e-6)
    # a perfect binary map still meets t = 1, where nothing is above: (255 + 0.25) / 256 = 0.9970703,
    # as in Inf-Net's evaluation code
    assert mean_e_measure(g2, g2.astype(float))[0] == pytest.approx(255.25 / 256)


def test_e_measure_matches_the_per_pixel_formula_and_the_threshold_loop():
    rng = np.random.default_rng(3)
    t = rng.random((3, 12, 12)) < 0.3
    p = np.clip(0.6 * t + rng.normal(0.2, 0.25, size=t.shape), 0, 1)
    f = p > 0.5
    # the formula pixel by pixel, written out independently of the count-based code
    expected = []
    for g, m in zip(t.astype(float), f.astype(float), strict=True):
        a_f, a_g = m - m.mean(), g - g.mean()
        expected.append((((2 * a_f * a_g / (a_f**2 + a_g**2)) + 1) ** 2 / 4).mean())
    np.testing.assert_allclose(e_measure(t, f), expected, rtol=1e-12)
    # the mean over thresholds is the mean of the binary E-measures of P > k / 255
    loop = np.mean([e_measure(t, p > k / 255) for k in range(256)], axis=0)
    np.testing.assert_allclose(mean_e_measure(t, p), loop, rtol=1e-12)


def test_mae_and_minmax():
    p = np.array([[0.9, 0.3], [0.0, 0.0]])
    assert mae(g2, p)[0] == pytest.approx((0.1 + 0.3) / 4)
    # min-max normalisation (Inf-Net's evaluation): 0.25 + 0.5 G stretches to G exactly
    faint = 0.25 + 0.5 * g2
    assert mae(g2, faint)[0] == pytest.approx(0.25)
    assert mae(g2, faint, minmax=True)[0] == 0.0
    assert s_measure(g2, faint, minmax=True)[0] == pytest.approx(1.0)
    assert mae(g2, np.full((2, 2), 0.5), minmax=True)[0] == pytest.approx(0.5)  # a flat map is left as is


# ----------------------------------------------------------------------------------------- the study's table


def test_per_image_map_metrics_and_means():
    t = np.stack([g2, np.zeros((2, 2), bool)])
    p = np.stack([np.array([[0.9, 0.3], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 0.7]])])
    table = per_image_map_metrics(t, p[..., None])  # a channel axis is accepted
    # image 0: P > 0.5 = G -> Dice, sensitivity, specificity 1
    # image 1: empty truth, one false positive: Dice 0, sensitivity NaN (undefined), specificity 3/4,
    #          S = 1 - mean(P) = 1 - 0.175, MAE 0.175
    r0, r1 = table.iloc[0], table.iloc[1]
    assert (r0.dice, r0.sensitivity, r0.specificity) == (1.0, 1.0, 1.0)
    assert r0.e_measure == pytest.approx(0.8151375, abs=1e-6)
    assert (r1.dice, r1.specificity) == (0.0, 0.75) and math.isnan(r1.sensitivity)
    assert r1.s_measure == pytest.approx(0.825) and r1.mae == pytest.approx(0.175)
    means = map_metrics(table)
    assert means["mae"] == pytest.approx((0.1 + 0.175) / 2)
    assert means["sensitivity"] == 1.0  # image 1's NaN left out
    assert means["n_images"] == 2


def test_inputs_are_checked():
    with pytest.raises(DataError, match="probs must be probabilities"):
        s_measure(g2, np.array([[1.2, 0.0], [0.0, 0.0]]))
    with pytest.raises(DataError, match="y_true must be binary"):
        mae(np.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(DataError, match="shape"):
        mean_e_measure(g2, np.zeros((3, 3)))
    with pytest.raises(DataError, match="lacks"):
        map_metrics(per_image_map_metrics(g2, g2.astype(float)).drop(columns="mae"))


# -------------------------------------------------------------------------------------------------- detection


def _slices() -> tuple[np.ndarray, np.ndarray]:
    t = np.zeros((5, 4, 4), dtype=bool)
    p = np.full((5, 4, 4), 0.1)
    t[0, 0:2, 0:2] = True  # 0: nodule; prediction 2 px, 1 in common -> IoU 1 / (4 + 2 - 1) = 0.2: detected
    p[0, 1, 1:3] = 0.9
    t[1, 0:2, 0:2] = True  # 1: nodule; prediction elsewhere -> missed
    p[1, 3, 3] = 0.9
    t[2, 2:4, 2:4] = True  # 2: nodule; nothing predicted -> missed
    # 3: empty, nothing predicted -> correct negative
    p[4, 0, 3] = 0.9  # 4: empty, 1 px predicted -> false positive
    return t, p


def test_detection_accuracy_counts():
    t, p = _slices()
    table = slice_detections(t, p)
    assert table.outcome.tolist() == ["detected", "missed", "missed", "correct_negative", "false_positive"]
    assert table.iou.iloc[0] == pytest.approx(0.2) and math.isnan(table.iou.iloc[3])
    out = detection_accuracy(table)
    assert out["accuracy"] == pytest.approx(2 / 5)  # (1 detected + 1 correct negative) / 5
    assert (out["detected"], out["missed"], out["correct_negatives"], out["false_positives"]) == (1, 2, 1, 1)
    assert (out["n_positive"], out["n_negative"], out["n_slices"]) == (3, 2, 5)
    assert out["slice_sensitivity"] == pytest.approx(1 / 3)
    assert out["slice_specificity"] == pytest.approx(1 / 2)
    assert out["accuracy_covers"] == "positives and negatives"
    assert (out["threshold"], out["min_iou"], out["min_area"]) == (0.5, 0.0, 1)


def test_detection_criteria_are_parameters():
    t, p = _slices()
    # min_area 2: slice 4's 1 px no longer flags it -> 3 / 5; slice 0's 2 px still do
    assert detection_accuracy(slice_detections(t, p, min_area=2))["accuracy"] == pytest.approx(3 / 5)
    # min_area 3 applies to nodule slices too: slice 0's 2 px are not a detection -> 1 / 5
    assert detection_accuracy(slice_detections(t, p, min_area=3))["detected"] == 0
    # min_iou 0.25: slice 0's IoU 0.2 is too little
    out = detection_accuracy(slice_detections(t, p, min_iou=0.25))
    assert (out["detected"], out["accuracy"]) == (0, pytest.approx(1 / 5))
    with pytest.raises(ConfigError, match="min_iou"):
        slice_detections(t, p, min_iou=1.5)
    with pytest.raises(ConfigError, match="min_area"):
        slice_detections(t, p, min_area=0)


def test_detection_without_empty_slices_is_slice_sensitivity():
    t, p = _slices()
    out = detection_accuracy(slice_detections(t[:3], p[:3]))
    assert out["accuracy"] == pytest.approx(1 / 3) == out["slice_sensitivity"]
    assert out["slice_specificity"] is None and out["n_negative"] == 0
    assert out["accuracy_covers"] == "positives only"
    only_empty = detection_accuracy(slice_detections(t[3:], p[3:]))
    assert only_empty["slice_sensitivity"] is None and only_empty["accuracy_covers"] == "negatives only"
    assert only_empty["accuracy"] == pytest.approx(1 / 2)
