"""Inf-Net's wiring: outputs per stage, the PPD / reverse-attention / edge-attention connections checked
numerically through the named layers, and config errors. Tiny conv-encoder models at 64 px."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lungnet.errors import ConfigError
from lungnet.models import build_segmenter
from lungnet.models.contract import EDGE_OUTPUT, OUTPUT_NAME
from lungnet.models.segmenters.inf_net import GLOBAL_OUTPUT

SIZE = 64
TINY = {
    "name": "inf_net",
    "encoder": "conv",
    "depth": 5,
    "filters": 2,
    "rfb_channels": 4,
    "edge_channels": 4,
    "ra_channels": [6, 4, 4],
}


@pytest.fixture(scope="module")
def model():
    return build_segmenter(TINY, (SIZE, SIZE, 1))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _resize(x, like):
    size = keras.ops.shape(like)[1:3]
    return keras.ops.convert_to_numpy(keras.ops.image.resize(x, size, interpolation="bilinear"))


def _probe(model, names, x):
    probe = keras.Model(model.input, {n: model.get_layer(n).output for n in names})
    return {k: keras.ops.convert_to_numpy(v) for k, v in probe(x, training=False).items()}


def test_outputs_are_named_per_stage_at_full_size(model):
    out = model(np.random.default_rng(0).random((2, SIZE, SIZE, 1), dtype=np.float32))
    assert list(out) == [OUTPUT_NAME, GLOBAL_OUTPUT, "aux_ra5", "aux_ra4", EDGE_OUTPUT]
    for value in out.values():
        assert tuple(value.shape) == (2, SIZE, SIZE, 1)


def test_stage_strides(model):
    """The global map at stride 8 (P3), the RA maps at 32 / 16 / 8, the edge at 4 (P2)."""
    strides = {"ppd_logits": 8, "ra5_logits": 32, "ra4_logits": 16, "ra3_logits": 8, "edge_logits_bn": 4}
    for layer, stride in strides.items():
        assert tuple(model.get_layer(layer).output.shape[1:3]) == (SIZE // stride,) * 2, layer
    assert tuple(model.get_layer("edge_1_conv").input.shape[1:3]) == (SIZE // 4,) * 2  # reads P2


def test_reverse_attention_weights_residuals_and_heads(model):
    x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 1)).astype("float32")
    names = [
        "ppd_logits",
        "ra5_previous",
        "ra5_weights",
        "ra5_residual_bn",
        "ra5_logits",
        "ra4_previous",
        "ra4_weights",
        "ra4_logits",
        "ra3_logits",
        OUTPUT_NAME,
        GLOBAL_OUTPUT,
    ]
    v = _probe(model, names, x)
    # RA5 starts from the global map brought down to P5; RA4 from RA5's map brought up to P4
    np.testing.assert_allclose(v["ra5_previous"], _resize(v["ppd_logits"], v["ra5_logits"]), atol=1e-5)
    np.testing.assert_allclose(v["ra4_previous"], _resize(v["ra5_logits"], v["ra4_logits"]), atol=1e-5)
    # the reverse weights: 1 - sigmoid(previous map)
    np.testing.assert_allclose(v["ra5_weights"], 1.0 - _sigmoid(v["ra5_previous"]), atol=1e-5)
    np.testing.assert_allclose(v["ra4_weights"], 1.0 - _sigmoid(v["ra4_previous"]), atol=1e-5)
    # each RA adds its residual to the map it was given
    np.testing.assert_allclose(v["ra5_logits"], v["ra5_residual_bn"] + v["ra5_previous"], atol=1e-5)
    # heads: the final map is RA3's, the global one the PPD's, resized and squashed
    np.testing.assert_allclose(v[OUTPUT_NAME], _sigmoid(_resize(v["ra3_logits"], x)), atol=1e-5)
    np.testing.assert_allclose(v[GLOBAL_OUTPUT], _sigmoid(_resize(v["ppd_logits"], x)), atol=1e-5)


def test_reverse_attention_multiplies_the_stage_features(model):
    x = np.random.default_rng(2).normal(size=(1, SIZE, SIZE, 1)).astype("float32")
    reverse = model.get_layer("ra4_reverse")
    features_layer = reverse.input[0]._keras_history.operation.name
    v = _probe(model, [features_layer, "ra4_weights", "ra4_reverse"], x)
    np.testing.assert_allclose(v["ra4_reverse"], v[features_layer] * v["ra4_weights"], rtol=1e-5, atol=1e-6)


def test_every_ra_module_reads_the_edge_features(model):
    for level, stride in (("5", 32), ("4", 16), ("3", 8)):
        edge = model.get_layer(f"ra{level}_edge")
        assert tuple(edge.output.shape[1:]) == (SIZE // stride, SIZE // stride, TINY["edge_channels"])
        concat_inputs = {
            t._keras_history.operation.name for t in model.get_layer(f"ra{level}_with_edge").input
        }
        assert f"ra{level}_edge" in concat_inputs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ra_channels": [8, 4]}, "model.ra_channels"),
        ({"rfb_channels": 0}, "model.rfb_channels"),
        ({"depth": 4}, "model.depth"),
        ({"encoder": "no_such_encoder"}, "no_such_encoder"),
    ],
)
def test_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        build_segmenter({**TINY, **change}, (SIZE, SIZE, 1))


def test_input_must_be_a_multiple_of_32():
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_segmenter(TINY, (48, 48, 1))


def test_the_study_compiles_the_edge_output_against_the_boundary(model):
    from lungnet.losses import EdgeLoss, LossConfig, StructureLoss
    from lungnet.studies.segmentation import compile_segmentation
    from lungnet.training.fit import TrainingConfig

    compile_segmentation(LossConfig(name="structure"))(model, 1e-3, TrainingConfig())
    losses = model.loss
    assert isinstance(losses[EDGE_OUTPUT], EdgeLoss)
    assert all(isinstance(losses[n], StructureLoss) for n in losses if n != EDGE_OUTPUT)


@pytest.mark.slow  # ~100 s on 2 cores (tracing the graph); the compile and harness tests cover the rest
def test_inf_net_trains_in_the_segmentation_study(tmp_path, tiny_phantom_config):
    import json

    import pandas as pd

    from lungnet.cli import main

    out = tmp_path / "run"
    model = json.dumps({**TINY, "depth": 5})
    code = main(
        [
            "train",
            "attention-unet",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--set",
            f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}",
            "--set",
            f"models=[{{name: inf_net, model: {model}}}]",
            "--set",
            "loss.name=structure",
            "--set",
            "postprocess.crf.enabled=false",
            "--set",
            "evaluation.intensity_test=false",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_model"] == "inf_net"
    log = pd.read_csv(next((out / "logs").glob("*.csv")))
    assert {"aux_edge_loss", "aux_global_loss", "probabilities_loss"} <= set(log.columns)


def test_parameter_count_against_the_reference():
    """The reference (Res2Net50 v1b 26w x 4s) has about 31.07 M trainable parameters without its classifier;
    Keras' batch norms add their moving statistics (non-trainable) to `count_params`."""
    import math

    full = build_segmenter({"name": "inf_net", "encoder": "res2net50"}, (64, 64, 3))
    trainable = sum(math.prod(w.shape) for w in full.trainable_weights)
    assert trainable == 31_072_721
    assert abs(trainable - 31.07e6) / 31.07e6 < 0.001
