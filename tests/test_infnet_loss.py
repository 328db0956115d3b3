"""Inf-Net's losses: boundary weights, weighted BCE + IoU, mask edges and the edge loss, against hand-worked values."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungnet.errors import ConfigError, DataError
from lungnet.losses import (
    EdgeLoss,
    LossConfig,
    StructureLoss,
    boundary_weights,
    build_loss,
    mask_edges,
    structure_per_sample,
)

# A 4x4 mask with a central 2x2 object, predicted 0.8 on it and 0.1 around it.
M = np.zeros((4, 4), dtype="float32")
M[1:3, 1:3] = 1.0
P = np.where(M == 1, 0.8, 0.1).astype("float32")

# Boundary weights of M with a 3x3 window, worked out by hand (zero padding counted in the mean):
# a corner pixel's window holds 1 object pixel -> mean 1/9, w = 1 + 5/9 = 14/9; an edge-middle background
# pixel's holds 2 -> w = 1 + 10/9 = 19/9; an object pixel's holds all 4 -> mean 4/9, w = 1 + 5 * 5/9 = 34/9.
W3 = np.array([[14, 19, 19, 14], [19, 34, 34, 19], [19, 34, 34, 19], [14, 19, 19, 14]]) / 9


def _batch(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype="float32")[None, ..., None]


def _value(loss, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


# ---------------------------------------------------------------------------------------------- weights


def test_boundary_weights_by_hand_3x3():
    np.testing.assert_allclose(_np(boundary_weights(M, kernel_size=3)), W3, rtol=1e-6)


def test_boundary_weights_31_count_the_zero_padding():
    # on a 4x4 image every 31x31 window (15 px of zero padding each side) holds the whole image: the local
    # mean is 4 / 961 everywhere. Object: w = 1 + 5 (1 - 4/961) = 5.97919; background: 1 + 20/961 = 1.02081.
    # (Without the padding in the count the mean would be 4/16 and w 4.75 and 2.25.)
    w = _np(boundary_weights(_batch(M)))[0, ..., 0]
    np.testing.assert_allclose(w, np.where(M == 1, 6 - 20 / 961, 1 + 20 / 961), rtol=1e-6)
    assert (w.max(), w.min()) == pytest.approx((5.979188, 1.020812), abs=1e-6)


def test_boundary_weights_far_from_the_boundary_are_one():
    mask = np.zeros((1, 40, 40, 1), dtype="float32")
    mask[0, 10:30, 10:30] = 1.0
    w = _np(boundary_weights(mask, kernel_size=5))[0, ..., 0]
    assert w[0, 0] == pytest.approx(1.0) and w[20, 20] == pytest.approx(1.0)  # 5x5 window all one label
    assert w[10, 10] == pytest.approx(1 + 5 * (1 - 9 / 25))  # a corner: 9 of 25 in the object


# ---------------------------------------------------------------------------------------- structure loss


def test_structure_loss_by_hand():
    # BCE: -ln 0.8 = 0.2231436 on the 4 object pixels, -ln 0.9 = 0.1053605 on the 12 background pixels.
    # sum w = (4 * 34 + 4 * 14 + 8 * 19) / 9 = 344 / 9; on the object 136 / 9, on the background 208 / 9.
    # wbce = (136 * 0.2231436 + 208 * 0.1053605) / 344 = 52.26252 / 344 = 0.1519259
    # inter = 0.8 * 136/9 = 12.088889; union = 1.8 * 136/9 + 0.1 * 208/9 = 29.511111
    # wiou = 1 - (12.088889 + 1) / (29.511111 - 12.088889 + 1) = 1 - 13.088889 / 18.422222 = 0.2895054
    # total 0.4414313
    w = W3  # independent of lungnet: the hand-drawn weights above
    bce = -(M * np.log(P) + (1 - M) * np.log(1 - P))
    wbce = (w * bce).sum() / w.sum()
    inter, union = (P * M * w).sum(), ((P + M) * w).sum()
    wiou = 1 - (inter + 1) / (union - inter + 1)
    assert (wbce, wiou) == pytest.approx((0.1519259, 0.2895054), abs=1e-6)
    assert _value(StructureLoss(kernel_size=3), _batch(M), _batch(P)) == pytest.approx(0.4414313, abs=1e-6)


def test_weighting_changes_the_loss_as_the_formula_says():
    # weight 0: w = 1, plain mean BCE + plain soft IoU
    # mean BCE = (4 * 0.2231436 + 12 * 0.1053605) / 16 = 0.1348063 (what Keras' BCE gives)
    # IoU: inter 3.2, sum(p + m) = 4 * 1.8 + 12 * 0.1 = 8.4 -> 1 - 4.2 / (8.4 - 3.2 + 1) = 0.3225806
    bce = _value(keras.losses.BinaryCrossentropy(), _batch(M), _batch(P))
    assert bce == pytest.approx(0.1348063, abs=1e-6)
    plain = _value(StructureLoss(kernel_size=3, weight=0.0), _batch(M), _batch(P))
    assert plain == pytest.approx(bce + 1 - 4.2 / 6.2, abs=1e-6)
    weighted = _value(StructureLoss(kernel_size=3), _batch(M), _batch(P))
    assert weighted == pytest.approx(0.4414313, abs=1e-6)
    assert abs(weighted - plain) > 0.01  # 0.4414 vs 0.4574


def test_constant_weights_reduce_to_the_unweighted_terms():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=(1, 4, 4, 1)).astype("float32")
    # an empty mask: the local mean is 0 everywhere, w = 1, so weighting changes nothing
    empty = np.zeros_like(p)
    assert _value(StructureLoss(), empty, p) == pytest.approx(
        _value(StructureLoss(weight=0.0), empty, p), rel=1e-6
    )
    # a full 4x4 mask, 31x31 window: w = c = 1 + 5 (1 - 16/961) everywhere. The BCE's weights cancel
    # (sum(c bce) / sum(c) = mean bce); the IoU's +1 does not: 1 - (c sum p + 1) / (c (sum p + 16) - c sum p + 1)
    full = np.ones_like(p)
    c = 1 + 5 * (1 - 16 / 961)
    mean_bce = float(np.mean(-np.log(p)))
    wiou = 1 - (c * p.sum() + 1) / (16 * c + 1)
    assert _value(StructureLoss(), full, p) == pytest.approx(mean_bce + wiou, rel=1e-5)


def test_per_sample_then_batch_mean():
    # sample 2: an empty mask predicted 0.1 everywhere: w = 1, wbce = -ln 0.9, wiou = 1 - 1 / (1.6 + 1)
    y = np.concatenate([_batch(M), np.zeros((1, 4, 4, 1), "float32")])
    p = np.concatenate([_batch(P), np.full((1, 4, 4, 1), 0.1, "float32")])
    expected = [0.4414313, -math.log(0.9) + 1 - 1 / 2.6]
    per_sample = _np(StructureLoss(kernel_size=3, reduction=None)(y, p))
    np.testing.assert_allclose(per_sample, expected, atol=1e-6)
    assert _value(StructureLoss(kernel_size=3), y, p) == pytest.approx(np.mean(expected), abs=1e-6)
    # [B, H, W] masks are matched to [B, H, W, 1] maps; [B, H, W] maps work too
    assert _value(StructureLoss(kernel_size=3), y[..., 0], p) == pytest.approx(np.mean(expected), abs=1e-6)
    np.testing.assert_allclose(_np(structure_per_sample(y[..., 0], p[..., 0], 3)), expected, atol=1e-6)


def test_from_logits_matches_probabilities():
    logits = np.log(P / (1 - P))
    assert _value(StructureLoss(kernel_size=3, from_logits=True), _batch(M), _batch(logits)) == pytest.approx(
        0.4414313, abs=1e-5
    )


@pytest.mark.parametrize(
    ("loss", "values"),
    [
        (StructureLoss(), [0.0, 1.0]),
        (StructureLoss(from_logits=True), [-200.0, 200.0]),
        (EdgeLoss(), [0.0, 1.0]),
        (EdgeLoss(from_logits=True), [-200.0, 200.0]),
    ],
    ids=["structure", "structure-logits", "edge", "edge-logits"],
)
def test_gradients_finite_at_certain_predictions(loss, values):
    # every pixel is certain, right or wrong: object pixels and background pixels at both extremes
    mask = np.zeros((1, 6, 6, 1), "float32")
    mask[0, 1:4, 1:4] = 1.0
    pred = np.where(np.indices((6, 6)).sum(axis=0) % 2 == 0, values[0], values[1])
    pred = tf.Variable(pred.reshape(1, 6, 6, 1).astype("float32"))
    with tf.GradientTape() as tape:
        value = loss(mask, pred)
    grad = tape.gradient(value, pred).numpy()
    assert math.isfinite(float(value)) and np.all(np.isfinite(grad))
    # the clip in the probability BCE stops its gradient at exactly 0 and 1 (as Keras' BCE does: a float32
    # sigmoid only reaches them where its own gradient has vanished); the structure loss's IoU still pulls
    if not (isinstance(loss, EdgeLoss) and not loss.from_logits):
        assert np.any(grad != 0)


def test_float16_inputs_compute_in_float32():
    y16, p16 = _batch(M).astype("float16"), _batch(P).astype("float16")
    value = StructureLoss(kernel_size=3)(y16, p16)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert float(value) == pytest.approx(0.4414313, rel=1e-3)


def test_mismatched_maps_are_rejected():
    with pytest.raises(DataError, match=r"y_true \(1, 4, 4, 1\) and y_pred \(1, 2, 2, 1\)"):
        StructureLoss()(_batch(M), np.zeros((1, 2, 2, 1), "float32"))


def test_trains_in_a_model_with_unknown_image_size():
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=StructureLoss(kernel_size=5))
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype("float32")
    history = model.fit(x, (x > 0).astype("float32"), epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])


# --------------------------------------------------------------------------------------------------- edges

# A 7x7 mask with a 3x3 square at rows/columns 2-4; its morphological gradient (3x3 dilation - erosion) is
# the 5x5 ring of rows/columns 1-5 without the centre pixel (the erosion): 24 pixels, drawn by hand.
SQUARE = np.zeros((7, 7), "float32")
SQUARE[2:5, 2:5] = 1.0
SQUARE_EDGES = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 0, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    "float32",
)


def test_mask_edges_of_a_square():
    np.testing.assert_array_equal(_np(mask_edges(SQUARE)), SQUARE_EDGES)
    # [H, W, C] (a tf.data element) and [B, H, W, C] give the same
    np.testing.assert_array_equal(_np(mask_edges(SQUARE[..., None]))[..., 0], SQUARE_EDGES)
    np.testing.assert_array_equal(_np(mask_edges(_batch(SQUARE)))[0, ..., 0], SQUARE_EDGES)


def test_mask_edges_ignore_the_image_border():
    # a 3x3 square in the top-left corner of a 6x6 image: dilation covers rows/cols 0-3; erosion keeps the
    # pixels whose in-image neighbours are all object (rows/cols 0-1): no edge along the image border
    mask = np.zeros((6, 6), "float32")
    mask[0:3, 0:3] = 1.0
    expected = np.zeros((6, 6), "float32")
    expected[0:4, 0:4] = 1.0
    expected[0:2, 0:2] = 0.0
    np.testing.assert_array_equal(_np(mask_edges(mask)), expected)


def test_mask_edges_in_a_tf_data_pipeline():
    masks = np.stack([SQUARE, np.zeros_like(SQUARE)])[..., None]
    ds = tf.data.Dataset.from_tensor_slices(masks).map(mask_edges)
    edges = np.stack([e.numpy() for e in ds])
    np.testing.assert_array_equal(edges[0, ..., 0], SQUARE_EDGES)
    assert not edges[1].any()


def test_edge_loss_by_hand():
    # prediction 0.9 on the 24 true edge pixels, 0.2 on the other 25:
    # BCE mean = (24 * -ln 0.9 + 25 * -ln 0.8) / 49 = (2.528652 + 5.578589) / 49 = 0.1654539
    pred = _batch(np.where(SQUARE_EDGES == 1, 0.9, 0.2))
    expected = (24 * -math.log(0.9) + 25 * -math.log(0.8)) / 49
    assert expected == pytest.approx(0.1654539, abs=1e-6)
    assert _value(EdgeLoss(), _batch(SQUARE), pred) == pytest.approx(expected, rel=1e-5)
    # given the edge map itself as the target
    assert _value(EdgeLoss(from_mask=False), _batch(SQUARE_EDGES), pred) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------ config, serialising


def test_build_structure_loss():
    loss = build_loss(LossConfig(name="structure"))
    assert isinstance(loss, StructureLoss) and (loss.kernel_size, loss.weight) == (31, 5.0)
    loss = build_loss(LossConfig(name="structure", boundary_kernel=15, boundary_weight=2.0))
    assert (loss.kernel_size, loss.weight, loss.from_logits) == (15, 2.0, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boundary_kernel": 4}, r"loss\.boundary_kernel: 4 must be an odd integer >= 1"),
        ({"boundary_kernel": 0}, r"loss\.boundary_kernel"),
        ({"boundary_kernel": 31.0}, r"loss\.boundary_kernel"),
        ({"boundary_kernel": True}, r"loss\.boundary_kernel"),
        ({"boundary_weight": -1.0}, r"loss\.boundary_weight: -1\.0 must be a number >= 0"),
    ],
)
def test_structure_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(name="structure", **kwargs)


def test_constructors_validate():
    with pytest.raises(ConfigError, match=r"loss\.boundary_kernel"):
        StructureLoss(kernel_size=2)
    with pytest.raises(ConfigError, match=r"loss\.edge_size: 1"):
        EdgeLoss(size=1)
    with pytest.raises(DataError, match="mask"):
        mask_edges(np.zeros(5))


@pytest.mark.parametrize(
    "loss",
    [StructureLoss(kernel_size=3, weight=2.0, reduction="sum"), EdgeLoss(size=5, from_logits=True)],
    ids=["structure", "edge"],
)
def test_serialisation_round_trip(loss):
    config = loss.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert _value(restored, _batch(M), _batch(P)) == pytest.approx(_value(loss, _batch(M), _batch(P)))
