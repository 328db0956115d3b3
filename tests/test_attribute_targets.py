"""The readers' other ratings as extra targets: scaling and errors, the pipeline's columns, the targets each
model receives, and a run that learns them beside the class."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.cli import main
from lungnet.data.attributes import attribute_targets
from lungnet.data.dataset import DataConfig
from lungnet.data.pipelines import classification_dataset
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import ConfigError, DataError
from lungnet.experiment import load_experiment
from lungnet.models.classifiers.custom_cnn import CustomCNNConfig, build_custom_cnn
from lungnet.models.contract import ATTRIBUTE_OUTPUT, OUTPUT_NAME
from lungnet.studies.runner import parse_overrides
from lungnet.training.fit import targets_for
from tests.test_reader_targets import write_rated_crops

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = {"filters": (4, 4, 8, 8), "dense_units": 8}


def ratings_frame() -> pd.DataFrame:
    return pd.DataFrame({"calcification": [6, 1, 3.5], "spiculation": [1, 5, 3], "texture": [5, 5, 1]})


def test_ratings_are_scaled_to_their_lidc_scales():
    values = attribute_targets(ratings_frame(), ["calcification", "spiculation"])
    assert values.dtype == np.float32 and values.shape == (3, 2)
    np.testing.assert_allclose(values[:, 0], [1.0, 0.0, 0.5])  # calcification 1..6
    np.testing.assert_allclose(values[:, 1], [0.0, 1.0, 0.5])  # spiculation 1..5


def test_the_diameter_is_a_target_on_a_log_scale():
    frame = pd.DataFrame({"diameter_mm": [1.0, 10.0, 100.0, 5.0], "texture": [1, 2, 3, 5]})
    values = attribute_targets(frame, ["texture", "diameter_mm"])
    np.testing.assert_allclose(values[:, 1], [0.0, 0.5, 1.0, np.log(5) / np.log(100)], rtol=1e-6)
    assert DataConfig(attribute_targets=["diameter_mm"]).attribute_targets == ("diameter_mm",)
    frame.loc[3, "diameter_mm"] = 0.4
    with pytest.raises(DataError, match="row 3: diameter_mm 0.4 is not a measurement in 1..100"):
        attribute_targets(frame, ["diameter_mm"])


def test_bad_ratings_name_the_column_and_row():
    frame = ratings_frame()
    with pytest.raises(DataError, match=r"\['margin'\]"):
        attribute_targets(frame, ["margin"])
    frame.loc[2, "spiculation"] = 7
    with pytest.raises(DataError, match="manifest row 2: spiculation 7"):
        attribute_targets(frame, ["spiculation"])
    frame.loc[1, "texture"] = None
    with pytest.raises(DataError, match="row 1: texture"):
        attribute_targets(frame, ["texture"])
    with pytest.raises(ConfigError, match="unknown rating 'malignancy'"):
        DataConfig(attribute_targets=["malignancy"])
    with pytest.raises(ConfigError, match="twice"):
        DataConfig(attribute_targets=["texture", "texture"])


def test_the_head_and_the_data_must_name_as_many_ratings():
    with pytest.raises(ConfigError, match="model.attributes: 3, but data.attribute_targets names 2"):
        load_experiment(
            EXPERIMENTS / "binary_nodule.yaml",
            profile="smoke",
            overrides=parse_overrides(
                [
                    "data.attribute_targets=[texture,spiculation]",
                    "models=[{name: c, model: {name: custom_cnn, attributes: 3}}]",
                ]
            ),
        )
    with pytest.raises(ConfigError, match="model.attributes"):
        CustomCNNConfig(attributes=-1)


def _batches(classes: int, ratings: int) -> tf.data.Dataset:
    x = np.zeros((4, 16, 16, 3), np.float32)
    one_hot = np.eye(classes, dtype=np.float32)[[0, 1, 1, 0]]
    scaled = np.tile(np.linspace(0, 1, ratings, dtype=np.float32), (4, 1))
    return tf.data.Dataset.from_tensors((x, np.concatenate([one_hot, scaled], axis=1)))


@pytest.mark.parametrize("classes", [2, 5])
def test_each_model_receives_its_own_targets(classes):
    rated = build_custom_cnn(CustomCNNConfig(**TINY, attributes=3), (16, 16, 3), classes)
    assert set(rated.output) == {OUTPUT_NAME, ATTRIBUTE_OUTPUT}
    _, y = next(iter(targets_for(rated, _batches(classes, 3))))
    width = 1 if classes == 2 else classes
    assert y[OUTPUT_NAME].shape == (4, width)
    np.testing.assert_allclose(y[ATTRIBUTE_OUTPUT][0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(y[OUTPUT_NAME][:, -1], [0, 1, 1, 0] if classes == 2 else [0, 0, 0, 0])

    plain = build_custom_cnn(CustomCNNConfig(**TINY), (16, 16, 3), classes)  # ignores the ratings
    _, y = next(iter(targets_for(plain, _batches(classes, 3))))
    assert y.shape == (4, width)

    with pytest.raises(ConfigError, match="rates 3 .* carries 2"):
        targets_for(rated, _batches(classes, 2))


def test_the_pipeline_carries_the_ratings_after_the_classes(tmp_path):
    manifest = pd.read_csv(write_rated_crops(tmp_path, n_patients=2))
    manifest["image"] = [str(tmp_path / name) for name in manifest["image"]]
    manifest["target"] = (manifest["malignancy_median"] > 3).astype(int)
    manifest["spiculation"] = np.where(manifest["target"] == 1, 5.0, 1.0)
    manifest["calcification"] = 6.0
    ds = classification_dataset(
        manifest,
        PreprocessConfig(image_size=16),
        num_classes=2,
        training=False,
        batch_size=64,
        attribute_columns=("spiculation", "calcification"),
    )
    _, y = next(iter(ds))
    expected = np.column_stack(
        [1 - manifest["target"], manifest["target"], manifest["target"], np.ones(len(manifest))]
    )
    np.testing.assert_allclose(y.numpy(), expected)


def test_a_run_learns_the_ratings_beside_the_class(tmp_path):
    manifest = pd.read_csv(write_rated_crops(tmp_path))
    # calcified (rated 3) when benign, spiculated when malignant, as the readers would tend to say
    malignant = manifest["malignancy_median"] > 3
    manifest["calcification"] = np.where(malignant, 6.0, 3.0)
    manifest["spiculation"] = np.where(malignant, 4.0, 1.0)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    run_dir = tmp_path / "run"
    overrides = [
        "data.grouping=exclude-indeterminate",
        "data.attribute_targets=[calcification,spiculation]",
        "models=[{name: custom_cnn, model: {name: custom_cnn, filters: [4, 4, 8, 8], dense_units: 8, attributes: 2}}]",
        "data.preprocess.image_size=32",
        "data.split=[0.5,0.25,0.25]",
        "training.epochs=3",
        "evaluation.explain=false",
        "evaluation.outliers=false",
    ]
    args = ["train", "binary_nodule", "--profile", "smoke", "--data", str(tmp_path / "manifest.csv")]
    assert main(args + ["--out", str(run_dir)] + [a for o in overrides for a in ("--set", o)]) == 0
    log = pd.read_csv(run_dir / "logs" / "custom_cnn.csv")
    assert {"aux_attributes_loss", "val_aux_attributes_loss", "val_probabilities_auc"} <= set(log.columns)
    assert log["aux_attributes_loss"].iloc[-1] < log["aux_attributes_loss"].iloc[0]
    saved = keras.models.load_model(run_dir / "models" / "custom_cnn.keras")
    assert len(saved.outputs) == 1 and saved.output.shape[-1] == 1  # the run keeps probabilities only
    # an external set needs no ratings: the network never reads them
    external = tmp_path / "external.csv"
    manifest.drop(columns=["calcification", "spiculation"]).to_csv(external, index=False)
    assert main(["evaluate", str(run_dir), "--data", str(external), "--out", str(tmp_path / "eval")]) == 0
    assert list((tmp_path / "eval").rglob("*.json"))
