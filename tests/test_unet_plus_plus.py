"""UNet++: the nested dense skip pathways, deep supervision through the one fit path, and a run from an
experiment file (train, evaluate, export) — the family a new architecture module looks like."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from lungnet.cli import main
from lungnet.experiment import EXPERIMENTS_DIR
from lungnet.losses import LossConfig
from lungnet.models import SEGMENTERS, build_segmenter, inference_model
from lungnet.studies.segmentation import compile_segmentation
from lungnet.training.fit import TrainingConfig, train_phase


def _squares(n: int = 8, size: int = 32):
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size, 1), "float32")
    for i in range(n):
        top, left = rng.integers(2, size - 12, size=2)
        masks[i, top : top + 10, left : left + 10] = 1
    return rng.normal(0, 0.1, masks.shape).astype("float32") + masks, masks


@pytest.mark.parametrize("depth", [2, 3])
def test_nested_nodes_and_their_widths(depth):
    model = build_segmenter({"name": "unet_plus_plus", "depth": depth, "filters": 4}, (32, 32, 1))
    names = {layer.name for layer in model.layers}
    nodes = {(i, j) for i in range(depth + 1) for j in range(1, depth + 1) if i + j <= depth}
    assert len(nodes) == depth * (depth + 1) // 2
    for i, j in nodes:  # X[i][j] concatenates X[i][0..j-1] and the up-sampled X[i+1][j-1]
        concat = model.get_layer(f"x{i}_{j}_concat")
        assert len(concat.input) == j + 1
        assert model.get_layer(f"x{i}_{j}_2_relu").output.shape[-1] == 4 * 2**i
    assert not any(n.startswith("aux_") for n in names)  # no deep supervision: one output


def test_deep_supervision_trains_every_head_and_serves_one(tmp_path):
    config = SEGMENTERS.parse({"name": "unet_plus_plus", "depth": 3, "filters": 4, "deep_supervision": True})
    assert SEGMENTERS.get("unet_plus_plus").side_outputs(config) == ("aux_1", "aux_2")
    model = build_segmenter(config, (32, 32, 1))
    assert list(model.output) == ["probabilities", "aux_1", "aux_2"]
    x, y = _squares()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    summary = train_phase(
        model,
        ds,
        ds,
        run_dir=tmp_path,
        phase="upp",
        epochs=2,
        learning_rate=1e-2,
        config=TrainingConfig(optimizer="adam", verbose=0),
        compile_fn=compile_segmentation(LossConfig(name="hybrid")),
    )
    log = pd.read_csv(tmp_path / "logs" / "upp.csv")
    assert {"probabilities_loss", "aux_1_loss", "aux_2_loss", "val_loss"} <= set(log.columns)
    # the total is the sum of the heads' losses (equal weights)
    row = log.iloc[-1]
    assert row["loss"] == pytest.approx(
        row["probabilities_loss"] + row["aux_1_loss"] + row["aux_2_loss"], rel=1e-3
    )
    assert np.isfinite(summary["best_val_loss"])
    served = inference_model(model)
    assert len(served.outputs) == 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(served(x[:2], training=False)),
        keras.ops.convert_to_numpy(model(x[:2], training=False)["probabilities"]),
    )


@pytest.fixture(scope="module")
def upp_experiment(tmp_path_factory):
    """An experiment file of UNet++ with deep supervision, on the segmentation study's base settings."""
    folder = tmp_path_factory.mktemp("upp")
    model = {
        "name": "unet_plus_plus",
        "model": {"name": "unet_plus_plus", "depth": 2, "filters": 4, "deep_supervision": True},
    }
    spec = {
        "base": str(EXPERIMENTS_DIR / "attention_unet.yaml"),
        "name": "unet_plus_plus_smoke",
        "models": [model],
        "profiles": {"smoke": {"models": [model]}},
    }
    path = folder / "unet_plus_plus.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_unet_plus_plus_runs_from_an_experiment_file(upp_experiment, tiny_phantom_config, tmp_path):
    out = tmp_path / "run"
    cache = f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"
    args = ["--profile", "smoke", "--out", str(out), "--set", cache, "--set", "postprocess.crf.enabled=false"]
    assert main(["train", str(upp_experiment), *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["unet_plus_plus"] and 0 <= metrics["dice"] <= 1
    assert "aux_1_loss" in pd.read_csv(out / "logs" / "unet_plus_plus.csv").columns
    saved = keras.saving.load_model(out / "models" / "unet_plus_plus.keras", compile=False)
    assert len(saved.outputs) == 1  # side outputs are for training only
    assert main(["export", str(out)]) == 0
    signature = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    probs = signature(images=tf.zeros([1, 40, 40]))["probabilities"]
    assert probs.shape == (1, 40, 40)
