"""prepare_data: one call from a data config to labelled, split, balanced pipelines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lungnet.data.dataset import DataConfig, image_column, load_data_config, prepare_data
from lungnet.errors import ConfigError


def _config(phantom_config, **overrides) -> DataConfig:
    base = DataConfig(
        phantom=phantom_config,
        batch_size=8,
        split=(0.6, 0.2, 0.2),
        preprocess=dataclasses.replace(DataConfig().preprocess, image_size=32, center_crop=96),
    )
    return dataclasses.replace(base, **overrides)


def test_prepare_data_on_the_phantom(tiny_phantom_config):
    data = prepare_data(_config(tiny_phantom_config, grouping="exclude-indeterminate"), progress=False)
    assert data.class_names == ("benign", "malignant")
    assert (data.manifest["malignancy"] != 3).all()
    per_patient = data.manifest.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    counts = data.train_manifest["target"].value_counts()
    assert counts.nunique() == 1  # every class brought to the same size
    train_originals = (data.manifest["split"] == "train").sum()
    assert (~data.train_manifest["augment_copy"]).sum() == train_originals


@pytest.fixture
def prepared_binary(tiny_phantom_config):
    return prepare_data(_config(tiny_phantom_config), progress=False)


def test_pipelines_yield_the_configured_batches(prepared_binary):
    images, targets = next(iter(prepared_binary.train))
    assert images.shape == (8, 32, 32, 3) and targets.shape == (8, 2)
    assert float(np.min(images)) >= 0.0 and float(np.max(images)) <= 1.0
    n_test = sum(int(x.shape[0]) for x, _ in prepared_binary.test)
    assert n_test == len(prepared_binary.split("test"))


def test_views_pick_the_right_column(tiny_phantom_config):
    from lungnet.data.sources.phantom import load_phantom

    manifest = load_phantom(tiny_phantom_config, progress=False)
    assert image_column(manifest, "crop") == "crop_image"
    assert image_column(manifest, "full") == "image"
    assert image_column(manifest.drop(columns=["crop_image"]), "crop") == "image"


def test_class_weight_balance(tiny_phantom_config):
    data = prepare_data(
        _config(tiny_phantom_config, balance="class_weight", grouping="paper", split=(0.34, 0.33, 0.33)),
        progress=False,
    )
    assert "augment_copy" not in data.train_manifest.columns
    counts = data.train_manifest["target"].value_counts()
    weighted = {c: counts[c] * data.class_weight[c] for c in counts.index}
    assert max(weighted.values()) == pytest.approx(min(weighted.values()))


def test_experiment_yaml_is_validated(tmp_path):
    good = tmp_path / "exp.yaml"
    good.write_text("data:\n  grouping: 5class\n  preprocess:\n    image_size: 64\n")
    cfg = load_data_config(good)
    assert cfg.grouping == "5class" and cfg.preprocess.image_size == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  preprocess:\n    imagesize: 64\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: data.preprocess: unknown key\(s\) \['imagesize'\]"):
        load_data_config(bad)
    bad.write_text("data:\n  grouping: binary\n")
    with pytest.raises(ConfigError, match=r"data.grouping: 'binary' is not one of"):
        load_data_config(bad)


def test_shipped_experiment_files_load():
    from lungnet.config import load_yaml
    from lungnet.experiment import EXPERIMENTS_DIR, load_experiment

    files = sorted(EXPERIMENTS_DIR.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        raw = load_yaml(path)
        inherited = load_yaml(path.parent / raw["base"]).get("profiles", {}) if "base" in raw else {}
        for profile in ["base", *raw.get("profiles", {}), *inherited]:
            config = load_experiment(path, profile=profile)
            data = config.data
            size = (
                data.image_size if config.task in ("segmentation", "inf_net") else data.preprocess.image_size
            )
            assert size > 0 and config.models
