"""The segmentation zoo study: its profiles load with the paper's recipe, and (slow) the smoke run trains,
reports a leaderboard and exports the selected model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungnet.experiment import load_experiment, resolve_experiment_path


@pytest.mark.parametrize("profile", ["default", "cpu-real", "cpu-real-row-split", "full", "smoke"])
def test_profiles_keep_the_papers_recipe(profile):
    config = load_experiment(resolve_experiment_path("segmentation-zoo"), profile=profile)
    assert config.loss.name == "bce_dice" and config.loss.bce_weight == 0.52
    assert config.training.optimizer == "adamw" and config.training.weight_decay == 2e-5
    assert config.training.lr_schedule == "plateau" and config.training.plateau_factor == 0.5
    unar = next(m for m in config.models if m.name == "unar")
    assert unar.model.attention_gates and unar.model.encoder == "resnet34_d" and unar.learning_rate == 4e-4
    assert config.data.augment.elastic > 0 and config.data.augment.rotate90
    if profile == "full":
        assert config.data.image_size == 256 and config.data.batch_size == 8 and config.training.epochs == 70
        assert config.training.early_stopping_patience == 13 and config.training.plateau_patience == 7
        assert {m.name for m in config.models} == {
            "unar",
            "res34_unet_v2",
            "unet_plus_plus",
            "deeplab_v3_plus",
            "segformer",
            "light_unet",
            "unet",
        }
    if profile == "cpu-real-row-split":
        assert config.data.split_level == "row"


@pytest.mark.slow  # about 4 minutes on 2 cores (three models traced and trained, UNAR exported)
def test_smoke_run_writes_the_leaderboard_and_exports(tmp_path, tiny_phantom_config):
    from lungnet.cli import main
    from lungnet.serving.export import export_run
    from tests.export_checks import assert_export_matches_keras
    from tests.report_checks import check_report

    out = tmp_path / "run"
    args = ["reproduce", "segmentation-zoo", "--profile", "smoke", "--out", str(out)]
    assert main([*args, "--set", f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"unar", "segformer", "light_unet"}
    assert "Leaderboard" in (out / "report.html").read_text()
    images = np.random.default_rng(0).uniform(-1000, 400, (2, 64, 64)).astype(np.float32)
    probs = assert_export_matches_keras(out, out / "saved_model", images)  # the selected model
    assert probs.shape == (2, 64, 64) and np.all((probs >= 0) & (probs <= 1))
    # every other model of the zoo exports as well (SegFormer's layers default to training=True)
    for name in sorted(set(metrics["models"]) - {metrics["selected_model"]}):
        saved = export_run(out, name, tmp_path / f"saved-{name}")
        assert_export_matches_keras(out, saved, images, model_name=name)
    check_report(out / "report.html", tmp_path)  # last: it skips where Chromium is missing
