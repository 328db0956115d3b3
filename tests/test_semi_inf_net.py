"""The Inf-Net study: label budgets, pseudo-label rounds (resumable), the radiomics SVM baselines, config
errors, and a smoke run through the CLI with export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lungnet.cli import main
from lungnet.errors import ConfigError, DataError
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.training.pseudo_labels import (
    LabelBudgetConfig,
    SemiConfig,
    pseudo_label_confidence,
    round_groups,
    split_label_budget,
)
from tests.export_checks import assert_export_matches_keras
from tests.report_checks import check_report
from tests.test_run_spread import check_spread_of_copies
from tests.test_segmentation_study import png_config, write_png_dataset


def _frame(n_patients=10, per_patient=3):
    return pd.DataFrame(
        {
            "patient_id": [f"P{p}" for p in range(n_patients) for _ in range(per_patient)],
            "image_ref": [f"{k}.png" for k in range(n_patients * per_patient)],
        }
    )


def test_label_budget_splits_by_patient_and_is_repeatable():
    train = _frame()
    labelled, unlabelled = split_label_budget(train, LabelBudgetConfig(fraction=0.3, seed=1))
    assert labelled["patient_id"].nunique() == 3 and len(labelled) == 9
    assert not set(labelled["patient_id"]) & set(unlabelled["patient_id"])
    assert len(labelled) + len(unlabelled) == len(train)
    again, _ = split_label_budget(train, LabelBudgetConfig(fraction=0.3, seed=1))
    pd.testing.assert_frame_equal(labelled, again)
    other, _ = split_label_budget(train, LabelBudgetConfig(fraction=0.3, seed=2))
    assert set(other["patient_id"]) != set(labelled["patient_id"])
    # a tiny budget still labels one patient; the whole budget leaves nothing unlabelled
    assert split_label_budget(train, LabelBudgetConfig(fraction=0.01))[0]["patient_id"].nunique() == 1
    assert split_label_budget(train, LabelBudgetConfig(fraction=1.0))[1].empty


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1, True])
def test_bad_label_budget_is_named(fraction):
    with pytest.raises(ConfigError, match="labels.fraction"):
        LabelBudgetConfig(fraction=fraction)


def test_round_groups_cut_a_fixed_order():
    frame = _frame(n_patients=4, per_patient=3)  # 12 images
    groups = round_groups(frame, SemiConfig(group_size=5), seed=0)
    assert [len(g) for g in groups] == [5, 5, 2]
    assert sorted(pd.concat(groups)["image_ref"]) == sorted(frame["image_ref"])
    assert [len(g) for g in round_groups(frame, SemiConfig(group_size=5, rounds=2), seed=0)] == [5, 5]
    pd.testing.assert_frame_equal(groups[0], round_groups(frame, SemiConfig(group_size=5), seed=0)[0])


def test_confidence_is_the_mean_probability_over_predicted_nodule_pixels():
    probs = np.zeros((3, 2, 2))
    probs[0] = [[0.9, 0.7], [0.1, 0.2]]  # nodule pixels 0.9 and 0.7 -> 0.8
    probs[1] = [[0.4, 0.3], [0.2, 0.1]]  # nothing predicted -> 0
    probs[2] = [[0.5, 1.0], [1.0, 1.0]]  # 0.875
    np.testing.assert_allclose(pseudo_label_confidence(probs), [0.8, 0.0, 0.875])
    with pytest.raises(DataError, match="N, H, W"):
        pseudo_label_confidence(np.zeros((2, 2)))


@pytest.mark.parametrize(
    "semi, match",
    [
        ({"confidence_threshold": 1.0}, "confidence_threshold"),
        ({"group_size": 0}, "group_size"),
        ({"rounds": 0}, "rounds"),
        ({"final_epochs": -1}, "final_epochs"),
        ({"pseudo_labels": "no"}, "pseudo_labels"),
    ],
)
def test_bad_semi_settings_are_named(semi, match):
    with pytest.raises(ConfigError, match=match):
        SemiConfig(**semi)


def _smoke_models(**semi_spec):
    tiny = {"name": "unet", "depth": 2, "filters": 4, "batch_norm": True}
    return [
        {"name": "a", "model": tiny},
        {"name": "b", "model": tiny, "semi": {"group_size": 2}, **semi_spec},
    ]


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"start_from": "nope"}, "not an earlier model"),
        ({"start_from": "b"}, "not an earlier model"),
    ],
)
def test_start_from_must_name_an_earlier_model(spec, match):
    path = resolve_experiment_path("inf-net")
    with pytest.raises(ConfigError, match=match):
        load_experiment(path, profile="smoke", overrides={"models": _smoke_models(**spec)})


def test_start_from_needs_the_same_architecture():
    models = _smoke_models(start_from="a")
    models[1]["model"] = {**models[1]["model"], "filters": 8}
    with pytest.raises(ConfigError, match="another architecture"):
        load_experiment(resolve_experiment_path("inf-net"), profile="smoke", overrides={"models": models})


def test_a_side_output_models_final_metric_answers_to_its_plain_name():
    from lungnet.training.checkpoints import monitored_value

    logs = {"val_probabilities_iou": 0.7, "val_loss": 1.0, "val_aux_edge_loss": 2.0}
    assert monitored_value(logs, "val_iou") == 0.7
    assert monitored_value(logs, "val_loss") == 1.0
    assert monitored_value(logs, "val_auc") is None


def test_every_profile_loads():
    for profile in ("default", "cpu-real", "full", "smoke"):
        config = load_experiment(resolve_experiment_path("inf-net"), profile=profile)
        assert config.task == "inf_net" and [m.name for m in config.models][:2] == ["inf_net", "semi_inf_net"]


# ------------------------------------------------------------------------------------- a round on a tiny model
@pytest.fixture(scope="module")
def png_data(tmp_path_factory):
    from lungnet.data.segmentation import prepare_segmentation_data

    manifest = write_png_dataset(tmp_path_factory.mktemp("png"), n_patients=8)
    return prepare_segmentation_data(png_config(manifest, batch_size=4), progress=False)


def _round_config(png_data, **semi):
    from lungnet.experiment import InfNetExperimentConfig, InfNetModelSpec
    from lungnet.models import SegmenterConfig
    from lungnet.training.fit import TrainingConfig

    model = SegmenterConfig.from_config_dict(
        {"name": "unet", "depth": 2, "filters": 4, "batch_norm": True}, "model"
    )
    spec = InfNetModelSpec("semi", model, semi=SemiConfig(**semi))
    config = InfNetExperimentConfig(
        name="t",
        data=png_data.config,
        models=(spec,),
        training=TrainingConfig(epochs=1, steps_per_epoch=2, validation_steps=1, verbose=0, optimizer="adam"),
    )
    return config, spec


def _rounds(png_data, run_dir, **semi):
    from lungnet.studies.segmentation import build_study_segmenter
    from lungnet.studies.semi_inf_net import pseudo_label_rounds

    config, spec = _round_config(png_data, **semi)
    labelled, unlabelled = split_label_budget(png_data.split("train"), LabelBudgetConfig(fraction=0.5))
    model = build_study_segmenter(spec.model, config, png_data)
    return pseudo_label_rounds(spec, model, config, png_data, labelled, unlabelled, run_dir, progress=False)


def test_a_pseudo_label_round_writes_native_masks_logs_and_resumes(png_data, tmp_path):
    run_dir = tmp_path / "run"
    summary, rounds = _rounds(png_data, run_dir, group_size=2, rounds=1, final_epochs=1)
    assert list(rounds["round"]) == [1] and rounds["group_images"].iloc[0] == 2
    table = pd.read_csv(run_dir / "pseudo_labels" / "semi" / "round001.csv")
    assert len(table) == 2 and set(table.columns) >= {"pseudo_mask", "confidence", "kept", "dice_vs_hidden"}
    # kept exactly where the confidence is positive (threshold 0: the reference keeps every prediction)
    assert list(table["kept"]) == list(table["confidence"] > 0)
    mask = cv2.imread(table["pseudo_mask"].iloc[0], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}  # the image's native size
    assert (run_dir / "logs" / "semi_rounds.csv").is_file()
    phases = json.loads((run_dir / "phases.json").read_text())
    assert {"semi_round001", "semi_final"} <= set(phases)
    assert summary["rounds"] == 1 and summary["pseudo_labels_made"] == 2

    # a second run with one more round: round 1 is read back, not redone, and its phase is skipped
    stamp = (run_dir / "pseudo_labels" / "semi" / "round001.csv").stat().st_mtime_ns
    _, rounds = _rounds(png_data, run_dir, group_size=2, rounds=2, final_epochs=1)
    assert list(rounds["round"]) == [1, 2]
    assert (run_dir / "pseudo_labels" / "semi" / "round001.csv").stat().st_mtime_ns == stamp
    assert "semi_round002" in json.loads((run_dir / "phases.json").read_text())


def _constant_map_model(probability: float, size: int = 32):
    """A segmenter whose map is `probability` everywhere: a 1x1 conv with zero weights and the logit as bias."""
    import keras

    inputs = keras.Input((size, size, 1), name="image")
    logit = float(np.log(probability / (1 - probability)))
    conv = keras.layers.Conv2D(
        1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(logit)
    )
    return keras.Model(inputs, keras.layers.Activation("sigmoid", name="probabilities")(conv(inputs)))


@pytest.mark.parametrize("threshold, kept", [(0.85, True), (0.95, False)])
def test_a_confidence_threshold_keeps_only_confident_pseudo_labels(png_data, tmp_path, threshold, kept):
    from lungnet.studies.semi_inf_net import round_table

    group = png_data.split("train").iloc[:3].reset_index(drop=True)
    semi = SemiConfig(confidence_threshold=threshold)
    table = round_table(_constant_map_model(0.9), group, 1, tmp_path, semi, png_data, 0.5)
    np.testing.assert_allclose(table["confidence"], 0.9, atol=1e-5)  # every pixel is nodule at p = 0.9
    assert list(table["kept"]) == [kept] * 3
    mask = cv2.imread(table["pseudo_mask"].iloc[0], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and (mask == 255).all()
    # no nodule pixel at all: confidence 0, never kept, even at threshold 0
    table = round_table(_constant_map_model(0.2), group, 2, tmp_path, SemiConfig(), png_data, 0.5)
    assert (table["confidence"] == 0).all() and not table["kept"].any()
    # the compute-matched control: the same confident maps are predicted and logged, none is kept
    control = SemiConfig(confidence_threshold=threshold, pseudo_labels=False)
    table = round_table(_constant_map_model(0.9), group, 3, tmp_path, control, png_data, 0.5)
    np.testing.assert_allclose(table["confidence"], 0.9, atol=1e-5)
    assert not table["kept"].any()


# ------------------------------------------------------------------------------------------------ radiomics SVM
def test_radiomics_svm_learns_size_and_self_trains(tmp_path):
    from lungnet.evaluation.radiomics_baseline import RadiomicsBaselineConfig, radiomics_baselines

    manifest = write_png_dataset(tmp_path / "png", n_patients=24, seed=3)
    frame = pd.read_csv(manifest)
    root = manifest.parent
    frame["image_ref"] = [str(root / p) for p in frame["image"]]
    frame["mask_ref"] = [str(root / p) for p in frame["mask"]]
    # malignant = the larger discs: radiomics shape features carry the label
    frame["label"] = np.where(frame["diameter_mm"] > frame["diameter_mm"].median(), "malignant", "benign")
    patients = sorted(frame["patient_id"].unique())
    train_labelled = frame[frame["patient_id"].isin(patients[:8])].reset_index(drop=True)
    train_unlabelled = frame[frame["patient_id"].isin(patients[8:16])].reset_index(drop=True)
    test = frame[frame["patient_id"].isin(patients[16:])].reset_index(drop=True)
    predicted = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) > 0 for p in test["mask_ref"]]
    # a one-pixel region: some of its features are undefined (NaN), which the SVM must survive
    one_pixel = np.zeros((64, 64), np.uint8)
    one_pixel[32, 32] = 255
    cv2.imwrite(str(root / train_labelled["mask"].iloc[0]), one_pixel)
    out = radiomics_baselines(
        train_labelled, train_unlabelled, test, RadiomicsBaselineConfig(), predicted_masks=predicted
    )
    models = out["models"]
    assert set(models) == {
        "radiomics SVM (labelled only), consensus mask",
        "radiomics SVM, self-training, consensus mask",
        "radiomics SVM (labelled only), predicted mask",
        "radiomics SVM, self-training, predicted mask",
        "size-only (diameter)",
    }
    assert models["radiomics SVM (labelled only), consensus mask"]["auc"] > 0.9
    assert "nodule" in models["size-only (diameter)"]["levels"]
    assert out["n_train_unlabelled"] == len(train_unlabelled) and out["n_problems"] == 0


def test_radiomics_svm_with_one_class_is_refused(tmp_path):
    from lungnet.evaluation.radiomics_baseline import RadiomicsBaselineConfig, radiomics_baselines

    manifest = write_png_dataset(tmp_path / "png", n_patients=4)
    frame = pd.read_csv(manifest)
    frame["image_ref"] = [str(manifest.parent / p) for p in frame["image"]]
    frame["mask_ref"] = [str(manifest.parent / p) for p in frame["mask"]]
    with pytest.raises(DataError, match="one class"):
        radiomics_baselines(frame, frame.iloc[:0], frame, RadiomicsBaselineConfig())


# ----------------------------------------------------------------------------------------- the study, end to end
# The smoke run takes about 4 minutes on 2 cores (each phase of a deeply supervised model traces its graph):
# its tests run with `make test-slow`. The fast suite covers its parts: rounds, confidence, radiomics, the
# Inf-Net wiring (tests/test_inf_net.py) and its export round trip (tests/test_zoo_harness.py).
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_phantom_config):
    out = tmp_path_factory.mktemp("infnet") / "run"
    cache = str(tiny_phantom_config.cache_dir)
    args = ["reproduce", "inf-net", "--profile", "smoke", "--out", str(out)]
    assert main([*args, "--set", f"data.phantom.cache_dir={cache}"]) == 0
    return out


@pytest.mark.slow
def test_smoke_run_writes_every_artefact(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"inf_net", "semi_inf_net"}
    for name in metrics["models"]:
        scores = metrics["models"][name]["inf_net"]
        assert {"s_measure", "e_measure", "mae", "dice", "sensitivity", "specificity"} <= set(scores)
        assert 0 <= scores["s_measure"] <= 1 and scores["detection"]["n_slices"] == metrics["n_test"]
        # the study's phantom has nodule-free slices, so both halves of the accuracy are measured
        assert scores["detection"]["accuracy_covers"] == "positives and negatives"
    assert metrics["label_budget"]["fraction"] == 0.5 and metrics["label_budget"]["unlabelled_images"] > 0
    rounds = metrics["semi_rounds"]["semi_inf_net"]
    assert [r["round"] for r in rounds] == [1] and rounds[0]["group_images"] == 2
    assert metrics["models"]["semi_inf_net"]["training"]["started_from"] == "inf_net"
    assert "size-only (diameter)" in metrics["radiomics"]["models"]
    assert (smoke_run / "semi_rounds_semi_inf_net.csv").is_file()
    figures = smoke_run / "figures"
    assert list(figures.glob("side_outputs_inf_net_*.png")) and list(
        figures.glob("reverse_attention_inf_net_*.png")
    )
    assert (figures / "semi_rounds.png").is_file()
    html = (smoke_run / "report.html").read_text()
    assert "Inf-Net&#x27;s evaluation set" in html and "Semi-Inf-Net: pseudo-label rounds" in html


@pytest.mark.slow
def test_compare_runs_reads_an_inf_net_record(smoke_run, tmp_path):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    spread = check_spread_of_copies(smoke_run, tmp_path, "Dice, all slices").set_index(["model", "metric"])
    assert {(name, "Dice, all slices") for name in metrics["models"]} <= set(spread.index)
    svms = metrics["radiomics"]["models"]  # the smoke profile keeps the radiomics baselines on
    assert svms and {(f"malignancy: {name}", "slice AUC") for name in svms} <= set(spread.index)


def test_report_renders_with_every_figure(smoke_run, tmp_path):
    check_report(smoke_run / "report.html", tmp_path)


@pytest.mark.slow
def test_export_serves_the_final_map(smoke_run):
    images = np.random.default_rng(0).uniform(-1000, 400, (2, 48, 48)).astype(np.float32)
    out = assert_export_matches_keras(smoke_run, smoke_run / "saved_model", images)
    assert out.shape == (2, 48, 48) and np.all((out >= 0) & (out <= 1))


@pytest.mark.slow
def test_evaluate_adds_inf_nets_evaluation_set(smoke_run, tmp_path):
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(smoke_run), "--data", "lidc-phantom", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    scores = metrics["inf_net"]
    assert {"s_measure", "e_measure", "mae"} <= set(scores) and 0 <= scores["s_measure"] <= 1
    assert scores["detection"]["n_slices"] == metrics["n_images"]
    assert "detection accuracy" in (out / "report.html").read_text()


@pytest.mark.slow  # a second study run (~1 min); the skipping rule is one line of run_inf_net_study
def test_a_full_label_budget_skips_semi_inf_net(tmp_path, tiny_phantom_config):
    out = tmp_path / "run"
    models = _smoke_models(start_from="a")
    code = main(
        [
            "train",
            "inf-net",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--set",
            f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}",
            "--set",
            "labels.fraction=1.0",
            "--set",
            "baselines.radiomics.enabled=false",
            "--set",
            f"models={json.dumps(models)}",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"a"} and "b" in metrics["skipped"]
    assert Path(out / "report.html").is_file()


@pytest.mark.slow
def test_compare_budgets_tabulates_runs_at_two_budgets(smoke_run, tmp_path):
    import shutil

    other = tmp_path / "full-budget"  # the smoke run's record, as if it had been trained at 100 %
    shutil.copytree(smoke_run, other, ignore=shutil.ignore_patterns("saved_model", "models", "checkpoints"))
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["label_budget"]["fraction"] = 1.0
    (other / "metrics.json").write_text(json.dumps(metrics))
    assert main(["compare-budgets", str(smoke_run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "label_budget.csv")
    assert sorted(table["labelled_fraction"].unique()) == [0.5, 1.0]
    assert set(table["model"]) == {"inf_net", "semi_inf_net"}
    assert table["dice_all_slices"].between(0, 1).all()
    assert (tmp_path / "cmp" / "label_budget.png").is_file()
    assert main(["compare-budgets", str(tmp_path / "cmp"), "--out", str(tmp_path / "bad")]) != 0
