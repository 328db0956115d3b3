"""Segmentation losses against values worked out by hand, their parameters, configs and serialisation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lungnet.errors import ConfigError
from lungnet.losses import DiceLoss, FocalLoss, HybridLoss, LossConfig, build_loss

# One 2x2 mask and prediction, shaped [B=1, 2, 2, 1].
Y = np.array([[1.0, 0.0], [1.0, 1.0]], dtype="float32").reshape(1, 2, 2, 1)
P = np.array([[0.8, 0.1], [0.6, 0.3]], dtype="float32").reshape(1, 2, 2, 1)


def _value(loss: keras.losses.Loss, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def _focal_pixel(y: float, p: float, alpha: float, gamma: float) -> float:
    p_t, alpha_t = (p, alpha) if y == 1 else (1 - p, 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


# ------------------------------------------------------------------------------------------------- Dice


def test_dice_by_hand():
    # sum(y p) = 0.8 + 0.6 + 0.3 = 1.7; sum(y) = 3; sum(p) = 0.8 + 0.1 + 0.6 + 0.3 = 1.8
    # smooth 1: 1 - (2 * 1.7 + 1) / (3 + 1.8 + 1) = 1 - 4.4 / 5.8 = 0.2413793
    assert _value(DiceLoss(), Y, P) == pytest.approx(1 - 4.4 / 5.8, abs=1e-6)
    # smooth 0: 1 - 3.4 / 4.8 = 0.2916667
    assert _value(DiceLoss(smooth=0.0), Y, P) == pytest.approx(1 - 3.4 / 4.8, abs=1e-6)


def test_dice_is_per_sample_then_batch_mean():
    # sample 2: mask all zeros, prediction 0.5 everywhere: 1 - (0 + 1) / (0 + 2 + 1) = 2/3
    y = np.concatenate([Y, np.zeros_like(Y)])
    p = np.concatenate([P, np.full_like(P, 0.5)])
    per_sample = [1 - 4.4 / 5.8, 1 - 1 / 3]
    assert _value(DiceLoss(), y, p) == pytest.approx(np.mean(per_sample), abs=1e-6)
    unreduced = keras.ops.convert_to_numpy(DiceLoss(reduction=None)(y, p))
    np.testing.assert_allclose(unreduced, per_sample, atol=1e-6)


def test_dice_perfect_prediction_is_zero():
    assert _value(DiceLoss(), Y, Y) == pytest.approx(0.0, abs=1e-7)
    # an empty mask predicted empty: (0 + 1) / (0 + 1) = 1, loss 0 (smooth keeps it defined)
    assert _value(DiceLoss(), np.zeros_like(Y), np.zeros_like(Y)) == pytest.approx(0.0, abs=1e-7)


def test_mask_without_channel_axis():
    # Keras matches y_true [B, H, W] to y_pred [B, H, W, 1]
    assert _value(DiceLoss(), Y[..., 0], P) == pytest.approx(1 - 4.4 / 5.8, abs=1e-6)


# ------------------------------------------------------------------------------------------------ focal


def test_focal_by_hand():
    # pixel y=1, p=0.8: -0.25 * 0.2^2 * ln 0.8 = 0.25 * 0.04 * 0.2231436 = 0.0022314
    # pixel y=0, p=0.1: -0.75 * 0.1^2 * ln 0.9 = 0.75 * 0.01 * 0.1053605 = 0.0007902
    # pixel y=1, p=0.6: -0.25 * 0.4^2 * ln 0.6 = 0.25 * 0.16 * 0.5108256 = 0.0204330
    # pixel y=1, p=0.3: -0.25 * 0.7^2 * ln 0.3 = 0.25 * 0.49 * 1.2039728 = 0.1474867
    # mean of the four: 0.1709413 / 4 = 0.0427353
    expected = (
        0.25 * 0.04 * -math.log(0.8)
        + 0.75 * 0.01 * -math.log(0.9)
        + 0.25 * 0.16 * -math.log(0.6)
        + 0.25 * 0.49 * -math.log(0.3)
    ) / 4
    assert expected == pytest.approx(0.0427353, abs=1e-7)
    assert _value(FocalLoss(), Y, P) == pytest.approx(expected, rel=1e-5)


def test_focal_gamma_0_alpha_half_is_half_the_bce():
    bce = _value(keras.losses.BinaryCrossentropy(), Y, P)
    assert _value(FocalLoss(alpha=0.5, gamma=0.0), Y, P) == pytest.approx(0.5 * bce, rel=1e-5)


def test_focal_alpha_weights_the_classes():
    # alpha 1: background pixels (alpha_t = 0) contribute nothing; alpha 0: only the background counts
    positives = sum(_focal_pixel(1, p, 1.0, 2.0) for p in (0.8, 0.6, 0.3)) / 4
    assert _value(FocalLoss(alpha=1.0), Y, P) == pytest.approx(positives, rel=1e-5)
    assert _value(FocalLoss(alpha=0.0), Y, P) == pytest.approx(_focal_pixel(0, 0.1, 0.0, 2.0) / 4, rel=1e-5)


def test_focal_gamma_down_weights_easy_pixels():
    # one easy pixel (y=1, p=0.95) and one hard (y=1, p=0.2): (1 - p_t)^gamma shrinks the easy one far more
    y = np.ones((1, 1, 2, 1), dtype="float32")
    easy = np.array([0.95], dtype="float32").reshape(1, 1, 1, 1)
    hard = np.array([0.2], dtype="float32").reshape(1, 1, 1, 1)
    for gamma in (0.0, 1.0, 2.0, 5.0):
        loss = FocalLoss(alpha=0.5, gamma=gamma)
        both = _value(loss, y, np.concatenate([easy, hard], axis=2))
        expected = (_focal_pixel(1, 0.95, 0.5, gamma) + _focal_pixel(1, 0.2, 0.5, gamma)) / 2
        assert both == pytest.approx(expected, rel=1e-5)
    ratio = [
        _value(FocalLoss(gamma=g), y[:, :, :1], easy) / _value(FocalLoss(gamma=g), y[:, :, :1], hard)
        for g in (0.0, 2.0)
    ]
    # gamma 0: ln 0.95 / ln 0.2 = 0.0319; gamma 2: times (0.05 / 0.8)^2 = 0.0039 -> 0.000125
    assert ratio[0] == pytest.approx(math.log(0.95) / math.log(0.2), rel=1e-4)
    assert ratio[1] == pytest.approx(ratio[0] * (0.05 / 0.8) ** 2, rel=1e-3)


def test_focal_clips_certain_mistakes():
    # p = 0 on a foreground pixel: log is clipped at eps, so the loss is large but finite
    value = _value(FocalLoss(), np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))
    assert math.isfinite(value) and value == pytest.approx(
        0.25 * -math.log(keras.backend.epsilon()), rel=1e-3
    )


# ----------------------------------------------------------------------------------------------- hybrid


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_hybrid_is_the_weighted_sum(lam):
    dice = _value(DiceLoss(smooth=2.0), Y, P)
    focal = _value(FocalLoss(alpha=0.4, gamma=1.5), Y, P)
    hybrid = _value(HybridLoss(lam=lam, alpha=0.4, gamma=1.5, smooth=2.0), Y, P)
    assert hybrid == pytest.approx(lam * dice + (1 - lam) * focal, rel=1e-5)


def test_float16_inputs_compute_in_float32():
    y16, p16 = Y.astype("float16"), P.astype("float16")
    for loss in (DiceLoss(), FocalLoss(), HybridLoss()):
        value = loss(y16, p16)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert _value(loss, y16, p16) == pytest.approx(_value(loss, Y, P), rel=1e-3)
    # a 256x256 mask sums to 65536, beyond float16's maximum 65504: still finite
    ones = np.ones((1, 256, 256, 1), dtype="float16")
    assert _value(DiceLoss(), ones, ones) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------ config, serialising


def test_build_loss():
    assert isinstance(build_loss(LossConfig()), HybridLoss)
    assert isinstance(build_loss(LossConfig(name="dice", smooth=0.5)), DiceLoss)
    assert build_loss(LossConfig(name="dice", smooth=0.5)).smooth == 0.5
    focal = build_loss(LossConfig(name="focal", alpha=0.6, gamma=1.0))
    assert isinstance(focal, FocalLoss) and (focal.alpha, focal.gamma) == (0.6, 1.0)
    assert isinstance(build_loss(LossConfig(name="bce")), keras.losses.BinaryCrossentropy)
    hybrid = build_loss(LossConfig(lam=0.2, alpha=0.3, gamma=1.0, smooth=0.0))
    assert (hybrid.lam, hybrid.alpha, hybrid.gamma, hybrid.smooth) == (0.2, 0.3, 1.0, 0.0)
    with pytest.raises(ConfigError, match="LossConfig"):
        build_loss({"name": "dice"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "jaccard"}, r"loss\.name: 'jaccard'"),
        ({"lam": 1.5}, r"loss\.lam: 1\.5 must be a number in \[0, 1\]"),
        ({"lam": -0.1}, r"loss\.lam"),
        ({"alpha": -0.1}, r"loss\.alpha"),
        ({"alpha": 2}, r"loss\.alpha"),
        ({"gamma": -1.0}, r"loss\.gamma: -1\.0 must be a number >= 0"),
        ({"smooth": -1.0}, r"loss\.smooth"),
        ({"lam": "0.5"}, r"loss\.lam"),
        ({"gamma": True}, r"loss\.gamma"),
    ],
)
def test_loss_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**kwargs)


def test_loss_constructors_validate():
    with pytest.raises(ConfigError, match=r"loss\.lam"):
        HybridLoss(lam=2.0)
    with pytest.raises(ConfigError, match=r"loss\.gamma"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ConfigError, match=r"loss\.smooth"):
        DiceLoss(smooth=-1)


@pytest.mark.parametrize(
    "loss",
    [
        DiceLoss(smooth=0.5),
        FocalLoss(alpha=0.4, gamma=3.0),
        HybridLoss(lam=0.7, alpha=0.3, gamma=1.0, smooth=2.0, reduction="sum"),
    ],
    ids=["dice", "focal", "hybrid"],
)
def test_serialisation_round_trip(loss):
    config = loss.get_config()
    again = type(loss).from_config(config)
    assert again.get_config() == config
    # through Keras's registry, as a saved model's compile config is restored
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert _value(restored, Y, P) == pytest.approx(_value(loss, Y, P), rel=1e-6)


def test_bce_dice_against_hand_worked_values():
    from lungnet.losses import BCEDiceLoss, LossConfig, build_loss

    y_true = np.array([[[[1.0], [0.0]]]], np.float32)  # one 1x2 image
    y_pred = np.array([[[[0.8], [0.2]]]], np.float32)
    bce = -np.log(0.8)  # both pixels are 0.8 right
    dice = 1 - (2 * 0.8 + 1) / (1 + 1.0 + 1)
    expected = 0.52 * bce + 0.48 * dice
    assert float(BCEDiceLoss()(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    assert float(build_loss(LossConfig(name="bce_dice", bce_weight=1.0))(y_true, y_pred)) == pytest.approx(
        bce
    )
