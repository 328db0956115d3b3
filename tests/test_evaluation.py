"""Evaluation: metrics (hand-computed and against scikit-learn), calibration, baselines, figures."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from lungnet.errors import DataError
from lungnet.evaluation import (
    apply_temperature,
    bootstrap_ci,
    calibration_summary,
    classification_metrics,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    majority_baseline,
    mean_probability,
    metric_definitions,
    mode_of_predictions,
    negative_log_likelihood,
    predictions_from_probs,
    reliability_curve,
    size_only_baseline,
    summarise,
)
from lungnet.evaluation import figures as F
from lungnet.evaluation.calibration import prior_corrected
from lungnet.evaluation.paired import patient_bootstrap

BINARY = ("benign", "malignant")
FIVE = ("1", "2", "3", "4", "5")


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


# ------------------------------------------------------------------------------------------ metrics by hand
def test_binary_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.4, 0.8, 0.7, 0.55])
    m = classification_metrics(y, _binary(p1), BINARY)
    # predicted = [0, 1, 0, 1, 0, 1, 1, 1]
    # malignant: TP = 3 (idx 3, 5, 6), FP = 2 (idx 1, 7), FN = 1 (idx 4), TN = 2 (idx 0, 2)
    assert m["confusion_matrix"] == [[2, 2], [1, 3]]
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == m["sensitivity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # 2/3
    assert m["specificity"] == pytest.approx(2 / 4)
    # benign as positive: TP = 2, FP = 1 (idx 4), FN = 2 (idx 1, 7) -> F1 = 4 / 7
    assert m["per_class"]["benign"]["f1"] == pytest.approx(4 / 7)
    assert m["per_class"]["benign"]["support"] == 4
    assert m["f1_macro"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert m["accuracy"] == pytest.approx(5 / 8)
    # AUC = P(score of a malignant > score of a benign) over the 4 x 4 pairs:
    # 0.9 beats all 4, 0.4 beats 0.1 and 0.2, 0.8 and 0.7 beat all 4 -> 14 / 16
    assert m["auc"] == pytest.approx(14 / 16)
    assert m["n"] == 8 and m["task"] == "binary" and m["notes"] == {}
    json.dumps(m)  # JSON-ready


def test_multiclass_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    # predicted = [0, 1, 1, 1, 2, 0, 2]; class-0 probabilities chosen distinct for a hand AUC
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.5, 0.3],
            [0.05, 0.15, 0.8],
            [0.5, 0.1, 0.4],
            [0.25, 0.05, 0.7],
        ]
    )
    m = classification_metrics(y, probs, ("a", "b", "c"))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    # a: TP 1 FP 1 FN 1 -> P 1/2 R 1/2 F1 1/2; b: TP 2 FP 1 FN 0 -> P 2/3 R 1 F1 4/5; c: TP 2 FP 0 FN 1 -> 1, 2/3, 4/5
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # class a vs rest: positives score 0.7, 0.3; negatives 0.1, 0.2, 0.05, 0.5, 0.25
    # 0.7 beats all 5, 0.3 beats 0.1, 0.2, 0.05, 0.25 -> 9 / 10
    assert m["per_class"]["a"]["auc"] == pytest.approx(9 / 10)
    per_class_auc = [skm.roc_auc_score(y == c, probs[:, c]) for c in range(3)]
    assert m["auc"] == pytest.approx(np.mean(per_class_auc))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    # nll = -mean log p(true class), p(true) read off each row
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.8, 0.4, 0.7])))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_metrics_match_sklearn_on_random_data(k):
    rng = np.random.default_rng(k)
    for _ in range(5):
        n = 60
        y = rng.integers(0, k, n)
        probs = _softmax(rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y])
        names = [str(i) for i in range(k)]
        m = classification_metrics(y, probs, names)
        pred = probs.argmax(1)
        average = "binary" if k == 2 else "macro"
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average=average, zero_division=0))
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average=average, zero_division=0))
        assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average=average, zero_division=0))
        assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
        assert m["nll"] == pytest.approx(skm.log_loss(y, probs, labels=range(k)))
        expected_auc = (
            skm.roc_auc_score(y, probs[:, 1]) if k == 2 else skm.roc_auc_score(y, probs, multi_class="ovr")
        )
        assert m["auc"] == pytest.approx(expected_auc)


def test_auc_with_tied_scores_matches_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    p1 = np.array([0.5, 0.5, 0.2, 0.8, 0.2, 0.5, 0.1, 0.5])
    # pairs (pos, neg): 16; pos scores 0.5, 0.8, 0.2, 0.5; neg 0.5, 0.2, 0.5, 0.1
    # 0.5: beats 0.2, 0.1, ties two 0.5 -> 3; 0.8: 4; 0.2: beats 0.1, ties 0.2 -> 1.5; 0.5: 3 -> 11.5 / 16
    auc = classification_metrics(y, p1, BINARY)["auc"]
    assert auc == pytest.approx(11.5 / 16) and auc == pytest.approx(skm.roc_auc_score(y, p1))


def test_one_dimensional_malignant_probability_is_accepted():
    y = np.array([0, 1, 1, 0])
    p1 = np.array([0.2, 0.7, 0.4, 0.1])
    assert classification_metrics(y, p1, BINARY) == classification_metrics(y, _binary(p1), BINARY)
    assert classification_metrics(y, p1[:, None], BINARY)["f1"] == pytest.approx(2 / 3)


# -------------------------------------------------------------------------------------------- degenerate data
def test_single_class_y_true_gives_null_auc_with_note():
    m = classification_metrics([1, 1, 1], _binary([0.8, 0.3, 0.9]), BINARY)
    assert m["auc"] is None and "auc" in m["notes"]
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == 0.0 and "specificity" in m["notes"]
    json.dumps(m)


def test_binary_without_malignant_cases_or_predictions_has_undefined_f1():
    m = classification_metrics([0, 0], _binary([0.1, 0.2]), BINARY)
    assert m["f1"] is None and "f1" in m["notes"]
    assert m["accuracy"] == 1.0
    assert m["f1_macro"] == 1.0  # only benign is defined


def test_never_predicting_malignant_counts_precision_as_zero_with_note():
    m = classification_metrics([0, 1, 1], _binary([0.1, 0.2, 0.3]), BINARY)
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and "precision" in m["notes"]


def test_absent_class_auc_over_present_classes_and_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 3, 4], size=40)  # rating 3 (index 2) absent
    probs = _softmax(rng.normal(size=(40, 5)) + 2 * np.eye(5)[y])
    probs[:, 2] = 0.001  # never predicted either
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, FIVE)
    present = [0, 1, 3, 4]
    assert m["auc"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in present]))
    assert "auc" in m["notes"] and "per_class" in m["notes"]
    assert m["per_class"]["3"] == {"precision": None, "recall": None, "f1": None, "support": 0, "auc": None}
    pred = probs.argmax(1)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))


def test_class_predicted_but_absent_from_y_true_scores_zero():
    y = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 2, 1, 1]] * 0.9 + 0.1 / 3
    m = classification_metrics(y, probs, ("a", "b", "c"))
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "auc": None}
    # a: TP 1 FN 1 -> F1 2/3; b: F1 1; c: 0 -> macro (2/3 + 1 + 0) / 3
    assert m["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro", zero_division=0))


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        ([0, 1], [[2.0, -1.0], [0.5, 0.3]], "logits"),
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], "sums to"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], "outside 0..1"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "3 samples"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], "not a class index"),
        ([], np.zeros((0, 2)), "empty"),
        ([0, 1], [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], "3 columns"),
    ],
)
def test_bad_inputs_raise_clear_data_errors(y, probs, message):
    with pytest.raises(DataError, match=message):
        classification_metrics(y, probs, BINARY)


def test_y_pred_overrides_argmax_but_auc_uses_probs():
    y = np.array([0, 1, 1, 0])
    p = _binary([0.2, 0.7, 0.4, 0.1])
    m = classification_metrics(y, p, BINARY, y_pred=[0, 1, 1, 1])
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["auc"] == classification_metrics(y, p, BINARY)["auc"] == 1.0


def test_definitions_and_summary():
    assert "malignant" in metric_definitions(2)["f1"]
    assert "macro" in metric_definitions(5)["f1"]
    m = classification_metrics([0, 1], _binary([0.3, 0.6]), BINARY)
    text = summarise({"cnn": m, "empty": {"f1": None}})
    assert "cnn" in text and "1.000" in text and "n/a" in text


# ---------------------------------------------------------------------------------- predictions and TTA
def test_predictions_from_probs_is_argmax_and_ties_go_to_benign():
    assert predictions_from_probs([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]]).tolist() == [1, 0, 0]
    assert predictions_from_probs([0.7, 0.5, 0.2]).tolist() == [1, 0, 0]


def test_mode_of_predictions_votes_and_breaks_ties_by_mean_probability():
    # 5 transforms x 2 samples x 3 classes
    t = [
        [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]],
        [[0.5, 0.4, 0.1], [0.2, 0.7, 0.1]],
        [[0.4, 0.5, 0.1], [0.45, 0.35, 0.2]],
        [[0.6, 0.2, 0.2], [0.1, 0.8, 0.1]],
        [[0.1, 0.9, 0.0], [0.1, 0.2, 0.7]],
    ]
    # sample 0: votes class0 x3 (t0, t1, t3), class1 x2 -> 0, although the mean favours neither strongly
    # sample 1: votes class0 x2 (t0, t2), class1 x2 (t1, t3), class2 x1 -> tie 0 vs 1;
    #           mean p0 = (0.5 + 0.2 + 0.45 + 0.1 + 0.1) / 5 = 0.27, mean p1 = (0.4 + 0.7 + 0.35 + 0.8 + 0.2) / 5 = 0.49
    assert mode_of_predictions([np.array(a) for a in t]).tolist() == [0, 1]
    mean = mean_probability([np.array(a) for a in t])
    assert mean[1] == pytest.approx([0.27, 0.49, 0.24])
    # the mean's argmax differs from the vote on sample 0? mean p0 = 0.44, p1 = 0.46 -> argmax 1
    assert mean[0].argmax() == 1


def test_mode_of_predictions_rejects_mismatched_shapes():
    with pytest.raises(DataError, match="differ in shape"):
        mode_of_predictions([np.full((2, 2), 0.5), np.full((3, 2), 0.5)])


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p = _binary(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 80), 0, 1))
    m = classification_metrics(y, p, BINARY)
    ci = bootstrap_ci(y, p, BINARY, ("f1", "auc"), n_boot=60, seed=3)
    for key in ("f1", "auc"):
        assert ci[key][0] <= m[key] <= ci[key][1]
    assert ci == bootstrap_ci(y, p, BINARY, ("f1", "auc"), n_boot=60, seed=3)
    groups = np.repeat(np.arange(40), 2)
    assert bootstrap_ci(y, p, BINARY, ("auc",), n_boot=30, groups=groups)["auc"] is not None
    with pytest.raises(DataError, match="unknown metric"):
        bootstrap_ci(y, p, BINARY, ("f2",), n_boot=2)


# -------------------------------------------------------------------------------------------- calibration
def test_ece_by_hand():
    y = np.array([1, 0, 0, 1, 0, 1])
    p1 = np.array([0.9, 0.95, 0.3, 0.7, 0.55, 0.4])
    # confidence = [0.9, 0.95, 0.7, 0.7, 0.55, 0.6]; predicted = [1, 1, 0, 1, 1, 0]; correct = [1, 0, 1, 1, 0, 0]
    # 5 bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]:
    #   (.8, 1]: 0.9, 0.95   -> acc 1/2, conf 0.925 -> 2/6 * 0.425
    #   (.6, .8]: 0.7, 0.7   -> acc 1,   conf 0.7   -> 2/6 * 0.3
    #   (.4, .6]: 0.55, 0.6  -> acc 0,   conf 0.575 -> 2/6 * 0.575   (0.6 sits on an edge: lower bin)
    expected = 2 / 6 * 0.425 + 2 / 6 * 0.3 + 2 / 6 * 0.575
    assert expected_calibration_error(y, _binary(p1), n_bins=5) == pytest.approx(expected)
    rc = reliability_curve(y, _binary(p1), n_bins=5)
    assert rc["counts"].tolist() == [0, 0, 2, 2, 2]
    assert rc["accuracy"][2:].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert rc["confidence"][2:].tolist() == pytest.approx([0.575, 0.7, 0.925])
    assert np.isnan(rc["confidence"][0]) and rc["bin_edges"].tolist() == pytest.approx(
        [0, 0.2, 0.4, 0.6, 0.8, 1]
    )


def test_ece_zero_for_perfectly_calibrated_bins():
    # 10 samples at confidence 0.8, 8 correct
    y = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(y, _binary(np.full(10, 0.8))) == pytest.approx(0.0)


def _synthetic_logits(n, k, temperature, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=(n, k))
    true_p = _softmax(z / temperature)
    y = (rng.random(n)[:, None] > np.cumsum(true_p, axis=1)).sum(axis=1)
    return z, y


@pytest.mark.parametrize("k", [2, 4])
def test_fit_temperature_recovers_known_temperature(k):
    z, y = _synthetic_logits(20000, k, temperature=2.0, seed=k)
    overconfident = _softmax(z)
    assert fit_temperature(overconfident, y) == pytest.approx(2.0, rel=0.06)
    assert fit_temperature(z, y, inputs="logits") == pytest.approx(2.0, rel=0.06)


def test_temperature_scaling_never_worsens_validation_nll():
    for seed, t_true in [(0, 0.5), (1, 1.0), (2, 3.0)]:
        z, y = _synthetic_logits(400, 3, t_true, seed)
        p = _softmax(z)
        t = fit_temperature(p, y)
        assert negative_log_likelihood(y, apply_temperature(p, t)) <= negative_log_likelihood(y, p) + 1e-9
    # a flat model: NLL does not depend on T, so T stays 1
    assert fit_temperature(np.full((6, 3), 1 / 3), [0, 1, 2, 0, 1, 2]) == 1.0


def _balanced_trained(n, prior, seed):
    """Labels drawn with class prior `prior`, and the probabilities a model trained on balanced classes
    would give them: the true posterior divided by the prior, renormalised."""
    rng = np.random.default_rng(seed)
    posterior = _softmax(rng.normal(scale=1.0, size=(n, len(prior))) + np.log(prior))
    y = (rng.random(n)[:, None] > np.cumsum(posterior, axis=1)).sum(axis=1)
    balanced = posterior / prior
    return balanced / balanced.sum(axis=1, keepdims=True), y, posterior


def test_prior_correction_undoes_balanced_training_and_is_chosen_on_validation():
    prior = np.array([0.75, 0.25])
    p_val, y_val, posterior = _balanced_trained(4000, prior, seed=1)
    assert prior_corrected(p_val, prior) == pytest.approx(posterior, abs=1e-9)
    y_train = np.repeat([0, 1], [750, 250])
    calibration = fit_calibration(p_val, y_val, y_train)
    assert calibration.prior == pytest.approx(tuple(prior))
    assert calibration.temperature == pytest.approx(1.0, rel=0.1)
    p_test, y_test, _ = _balanced_trained(4000, prior, seed=2)
    summary = calibration_summary(calibration, y_test, p_test)
    assert summary["prior_correction"] is True
    assert summary["ece_after"] < 0.5 * summary["ece_before"]
    # temperature alone cannot move the logits' offset: it leaves a larger validation NLL
    plain = apply_temperature(p_val, fit_temperature(p_val, y_val))
    assert negative_log_likelihood(y_val, calibration.apply(p_val)) < negative_log_likelihood(y_val, plain)


def test_ece_intervals_from_patient_bootstrap_hold_the_estimate_and_narrow_with_more_patients():
    prior = np.array([0.75, 0.25])
    p_test, y_test, _ = _balanced_trained(4000, prior, seed=3)
    calibration = fit_calibration(p_test, y_test, np.repeat([0, 1], [750, 250]))
    widths = []
    # the same 4,000 slices as 20 patients whose slices err alike (grouped by confidence minus correctness),
    # then as 400 patients of unrelated slices: clustered errors must widen the interval
    calibrated = calibration.apply(p_test)
    residual = calibrated.max(axis=1) - (calibrated.argmax(axis=1) == y_test)
    clustered = np.argsort(np.argsort(residual)) * 20 // 4000
    for patients in (clustered, np.arange(4000) % 400):
        summary = calibration_summary(calibration, y_test, p_test, patients=patients)
        widths.append(np.diff(summary["ece_after_ci95"])[0])
    # unclustered, the interval holds the estimate (resampling biases ECE upwards, so clustered it may not)
    for key in ("ece_before", "ece_after"):
        low, high = summary[f"{key}_ci95"]
        assert low <= summary[key] <= high
    assert widths[1] < widths[0]
    # a resampled statistic that never varies gives a zero-width interval
    assert patient_bootstrap(lambda rows: 1.0, np.arange(10)) == [1.0, 1.0]
    assert "ece_after_ci95" not in calibration_summary(calibration, y_test, p_test)
    with pytest.raises(DataError, match="patients"):
        patient_bootstrap(lambda rows: 1.0, np.array([]))


def test_calibration_without_a_prior_shift_keeps_plain_temperature_scaling():
    z, y = _synthetic_logits(4000, 2, temperature=2.0, seed=3)
    overconfident = _softmax(z)
    calibration = fit_calibration(overconfident, y, y_train=np.repeat([0, 1], [900, 100]))
    # these probabilities already carry their labels' prior: moving them to the (skewed) training prior hurts
    assert calibration.prior is None and calibration.temperature == pytest.approx(2.0, rel=0.1)
    assert "prior" not in calibration.describe()


def test_prior_correction_rejects_a_prior_of_the_wrong_length():
    with pytest.raises(DataError, match="3 non-negative frequencies"):
        prior_corrected(np.full((4, 3), 1 / 3), [0.5, 0.5])


def test_apply_temperature_keeps_argmax_and_matches_sigmoid_scaling():
    p1 = np.array([0.05, 0.3, 0.6, 0.97])
    scaled = apply_temperature(_binary(p1), 2.5)
    logit = np.log(p1 / (1 - p1))
    assert scaled[:, 1] == pytest.approx(1 / (1 + np.exp(-logit / 2.5)))
    assert (scaled.argmax(1) == _binary(p1).argmax(1)).all()
    assert apply_temperature(_binary(p1), 1.0) == pytest.approx(_binary(p1))
    with pytest.raises(DataError, match="positive"):
        apply_temperature(_binary(p1), 0.0)


# --------------------------------------------------------------------------------------------- baselines
def _sizes(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sizes = np.where(y == 1, rng.normal(16, 4, n), rng.normal(7, 2.5, n)).clip(3, 40)
    return sizes, y


def test_size_only_baseline_binary():
    train_x, train_y = _sizes(300, 0)
    test_x, test_y = _sizes(200, 1)
    probs = size_only_baseline(train_x, train_y, test_x, BINARY)
    assert probs.shape == (200, 2) and np.allclose(probs.sum(1), 1)
    order = np.argsort(test_x)
    assert np.all(np.diff(probs[order, 1]) >= 0)  # larger nodules look more malignant
    assert classification_metrics(test_y, probs, BINARY)["auc"] > 0.9
    # fitted on the training split only: a test row's probability does not depend on the other test rows
    alone = size_only_baseline(train_x, train_y, test_x[:1], BINARY)
    assert alone[0] == pytest.approx(probs[0])


def test_size_only_baseline_multiclass_and_absent_class():
    rng = np.random.default_rng(2)
    y = rng.choice([0, 1, 3, 4], 200)  # rating 3 absent from training
    sizes = 4 + 4 * y + rng.normal(0, 2, 200)
    probs = size_only_baseline(sizes, y, [4.0, 10.0, 25.0], FIVE)
    assert probs.shape == (3, 5) and np.allclose(probs.sum(1), 1)
    assert (probs[:, 2] == 0).all()
    assert probs.argmax(1).tolist()[0] == 0 and probs.argmax(1).tolist()[2] == 4
    # one training class only: that class with probability 1
    assert size_only_baseline([5, 6], [1, 1], [3.0], BINARY).tolist() == [[0.0, 1.0]]
    with pytest.raises(DataError, match="train_sizes"):
        size_only_baseline([5, np.nan], [0, 1], [3.0], BINARY)


@pytest.mark.parametrize("names", [BINARY, FIVE])
def test_a_fitted_size_only_baseline_survives_json_and_matches_scikit_learn(names):
    import json

    from sklearn.linear_model import LogisticRegression

    from lungnet.evaluation import SizeOnly, fit_size_only

    rng = np.random.default_rng(3)
    y = rng.integers(0, len(names), 300)
    sizes = 6 + 3 * y + rng.uniform(-2, 2, 300)
    fitted = fit_size_only(sizes, y, names)
    again = SizeOnly.from_dict(json.loads(json.dumps(fitted.as_dict())))
    test = np.array([2.0, 8.0, 15.0, 30.0])
    z = ((sizes - sizes.mean()) / sizes.std())[:, None]
    reference = LogisticRegression(max_iter=1000, class_weight="balanced").fit(z, y)
    expected = reference.predict_proba(((test - sizes.mean()) / sizes.std())[:, None])
    assert again.predict(test) == pytest.approx(expected, abs=1e-9)
    assert SizeOnly.from_dict(None) is None


def test_cross_fitted_size_only_never_fits_a_fold_on_its_own_rows():
    from lungnet.evaluation import cross_fitted_size_only, fit_size_only

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    sizes = 5 + 8 * y + rng.uniform(-4, 4, 120)
    folds = np.arange(120) % 3
    probs = cross_fitted_size_only(sizes, y, folds, BINARY)
    for fold in range(3):
        held = folds == fold
        expected = fit_size_only(sizes[~held], y[~held], BINARY).predict(sizes[held])
        assert probs[held] == pytest.approx(expected)
    flipped = y.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]  # fold 0's own labels do not move fold 0's predictions
    again = cross_fitted_size_only(sizes, flipped, folds, BINARY)
    assert again[folds == 0] == pytest.approx(probs[folds == 0])
    assert not np.allclose(again[folds == 1], probs[folds == 1])
    with pytest.raises(DataError, match="120 sizes, 120 labels, 119 folds"):
        cross_fitted_size_only(sizes, y, folds[:-1], BINARY)


def test_majority_baseline():
    probs = majority_baseline([0, 0, 1, 0], 3, BINARY)
    assert probs.tolist() == [[0.75, 0.25]] * 3
    m = classification_metrics([0, 1, 1], probs, BINARY)
    assert m["auc"] == 0.5 and m["accuracy"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------------- figures
def _is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 30)
    p2 = _binary(np.clip(0.3 + 0.4 * y2 + rng.normal(0, 0.2, 30), 0.01, 0.99))
    y5 = rng.integers(0, 5, 40)
    p5 = _softmax(rng.normal(size=(40, 5)) + 1.5 * np.eye(5)[y5])
    return y2, p2, y5, p5


def _figures(tiny):
    y2, p2, y5, p5 = tiny
    m2 = classification_metrics(y2, p2, BINARY)
    m2["ci"] = {"f1": [m2["f1"] - 0.1, min(m2["f1"] + 0.1, 1.0)]}
    base = classification_metrics(y2, majority_baseline(y2, len(y2), BINARY), BINARY)
    t = fit_temperature(p2, y2)
    return {
        "confusion_binary": F.confusion_matrix_figure(m2["confusion_matrix"], BINARY),
        "confusion_5": F.confusion_matrix_figure(
            classification_metrics(y5, p5, FIVE)["confusion_matrix"], FIVE
        ),
        "roc_binary": F.roc_figure(
            y2, {"cnn": p2, "size only": _binary(np.linspace(0.1, 0.9, len(y2)))}, BINARY
        ),
        "roc_5": F.roc_figure(y5, p5, FIVE),
        "reliability": F.reliability_figure(y2, p2, apply_temperature(p2, t), label=f"T = {t:.2f}"),
        "confidence": F.confidence_histogram_figure(y5, p5, FIVE),
        "class_probability_binary": F.class_probability_figure(y2, p2, BINARY),
        "class_probability_5": F.class_probability_figure(y5, p5, FIVE),
        "comparison": F.metric_comparison_figure(
            {"cnn": m2, "majority": base},
            {"cnn": 0.82, "paper-only": 0.9},
            baselines=["majority"],
        ),
    }


def test_every_figure_renders_to_png(tiny, tmp_path):
    figs = _figures(tiny)
    for name, fig in figs.items():
        data = base64.b64decode(F.figure_to_base64_png(fig, dpi=50))
        assert _is_png(data), name
    path = F.save_figure(figs["comparison"], tmp_path / "figures" / "comparison.png", dpi=50)
    assert _is_png(path.read_bytes())
    assert [p.name for p in path.parent.iterdir()] == ["comparison.png"]  # no temp file left


def test_figures_do_not_use_pyplot():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from lungnet.evaluation import figures as F; "
        "F.confidence_histogram_figure([0, 1], [[0.8, 0.2], [0.3, 0.7]]); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_figure_is_atomic(tiny, tmp_path):
    fig = F.confusion_matrix_figure([[1, 0], [0, 1]], BINARY)
    path = F.save_figure(fig, tmp_path / "cm.png", dpi=30)
    before = path.read_bytes()

    def broken(target, **kwargs):
        with open(target, "wb") as f:
            f.write(b"\x89PNG half")
        raise RuntimeError("interrupted")

    fig.savefig = broken
    with pytest.raises(RuntimeError):
        F.save_figure(fig, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]
    with pytest.raises(DataError, match="format"):
        F.save_figure(fig, tmp_path / "cm.bmpx")


def test_figure_inputs_are_checked():
    with pytest.raises(DataError, match="shape"):
        F.confusion_matrix_figure([[1, 2, 3]], BINARY)
    with pytest.raises(DataError, match="nothing to plot"):
        F.metric_comparison_figure({})


def test_best_f1_threshold_is_chosen_on_the_given_labels():
    from lungnet.evaluation import best_f1_threshold, predictions_at_threshold

    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.3, 0.2, 0.4])
    # Thresholds 0.2 -> preds [0,0,1,1,1]: TP 2, FP 1 -> F1 0.8; 0.4 -> TP 1 -> F1 0.667; 0.5 -> F1 0.
    assert best_f1_threshold(y, p) == pytest.approx(0.2)
    np.testing.assert_array_equal(predictions_at_threshold(p, 0.2), [0, 0, 1, 1, 1])
