"""The image-only measured-nodule classifier: the segmenter's split, the region it describes, its features,
and a tiny lidc-crops-style run that trains the segmenter on training patients only and scores the rows."""

from __future__ import annotations

import html
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from lungnet.cli import main
from lungnet.data.segmentation import prepare_segmentation_data
from lungnet.errors import ConfigError, DataError, LungnetError
from lungnet.evaluation import Calibration
from lungnet.evaluation.measured_nodule import (
    MeasuredNoduleConfig,
    central_region,
    cross_fitted_probs,
    fit_measured,
    measured_features,
    segmenter_dice_by_split,
    segmenter_manifest,
)
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.runs import load_run_config
from lungnet.studies.predict import predict_classification_run
from tests.test_physical_scale_and_neighbours import write_crops


def test_segmenter_split_follows_the_classification_patients():
    source = pd.DataFrame(
        {
            "image": ["a", "b", "c", "d"],
            "mask": ["ma", "mb", "mc", ""],
            "patient_id": ["P1", "P2", "P3", "P1"],
        }
    )
    split = pd.DataFrame({"patient_id": ["P1", "P2"], "split": ["test", "val"]})
    out = segmenter_manifest(source, split)
    # the row without a mask is left out; P3 (not in the grouping's split) can only train
    assert out["image"].tolist() == ["a", "b", "c"]
    assert out["split"].tolist() == ["test", "val", "train"]
    with pytest.raises(DataError, match="no 'mask' column"):
        segmenter_manifest(source.drop(columns="mask"), split)


def test_the_segmenter_learns_the_crops_where_the_source_has_both_views():
    # the phantom: a whole slice with its mask, and the nodule's crop with its own mask, on every row
    source = pd.DataFrame(
        {
            "image": ["s0", "s0", "s1"],
            "mask": ["m0", "m0", "m1"],
            "crop_image": ["c0", "c1", "c2"],
            "crop_mask": ["cm0", "", "cm2"],
            "patient_id": ["P1", "P1", "P2"],
        }
    )
    split = pd.DataFrame({"patient_id": ["P1", "P2"], "split": ["train", "test"]})
    crops = segmenter_manifest(source, split, "crop")
    assert crops["crop_mask"].tolist() == ["cm0", "cm2"]  # rows without a crop mask are left out
    assert crops["split"].tolist() == ["train", "test"]
    assert len(segmenter_manifest(source, split, "full")) == 3
    with pytest.raises(DataError, match="no row of the source has a 'crop_mask'"):
        segmenter_manifest(source.assign(crop_mask=""), split, "crop")


def test_the_region_nearest_the_centre_is_described():
    mask = np.zeros((32, 32), bool)
    mask[2:6, 2:6] = True  # a vessel at the corner, larger than the nodule
    mask[2:10, 24:30] = True
    mask[14:18, 14:18] = True
    region = central_region(mask)
    assert region.sum() == 16 and region[15, 15]


def test_features_measure_millimetres_and_mark_missed_slices(tmp_path):
    image = np.full((40, 40), 10, np.uint8)
    cv2.circle(image, (20, 20), 8, 200, -1)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    frame = pd.DataFrame(
        {
            "image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
            "pixel_spacing_mm": [0.5, 0.5],
            "nodule_id": ["n", "n"],
        }
    )
    disc = image > 100
    masks = {str(tmp_path / "a.png"): disc, str(tmp_path / "b.png"): np.zeros_like(disc)}
    table = measured_features(frame, "image", masks)
    assert table["found"].tolist() == [1.0, 0.0]
    assert table["shape_area_mm2"].iloc[0] == pytest.approx(disc.sum() * 0.25)
    assert np.isnan(table["shape_area_mm2"].iloc[1])
    # the nodule's largest area reaches the slice where nothing was found
    assert table["nodule_max_shape_area_mm2"].tolist() == [disc.sum() * 0.25] * 2


def test_the_segmenters_dice_is_measured_per_split_on_outlined_slices(tmp_path):
    truth = np.zeros((20, 30), np.uint8)
    truth[5:10, 5:15] = 255  # 50 pixels
    cv2.imwrite(str(tmp_path / "m.png"), truth)
    half = np.zeros((20, 30), bool)
    half[5:10, 5:10] = True  # 25 of them: Dice 2 * 25 / 75
    frames = {
        "train": pd.DataFrame({"image": ["a", "b"], "mask": [str(tmp_path / "m.png")] * 2}),
        "test": pd.DataFrame({"image": ["c", "d"], "mask": [str(tmp_path / "m.png"), ""]}),
    }
    masks = {"a": truth > 0, "b": half, "c": np.zeros((20, 30), bool), "d": half}
    dice = segmenter_dice_by_split(frames, "image", "mask", masks)
    assert dice["train"] == {"slices": 2, "dice_mean": pytest.approx((1 + 2 / 3) / 2)}
    assert dice["test"] == {"slices": 1, "dice_mean": 0.0}  # "d" has no outline
    no_outlines = segmenter_dice_by_split({"val": frames["train"][["image"]]}, "image", "mask", masks)
    assert no_outlines == {"val": {"slices": 0, "dice_mean": None}}
    with pytest.raises(DataError, match="m.png.*does not match"):
        segmenter_dice_by_split(frames, "image", "mask", {**masks, "a": np.zeros((8, 8), bool)})


def test_the_classifier_learns_size_and_tolerates_empty_features():
    rng = np.random.default_rng(0)
    area = rng.uniform(10, 100, 200)
    train = pd.DataFrame({"shape_area_mm2": area, "found": 1.0, "never": np.nan})
    y = (area > 55).astype(int)
    probs = fit_measured(train, y, 1.0).predict(pd.DataFrame({"shape_area_mm2": [15.0, 95.0]}), 2)
    assert probs.shape == (2, 2) and probs[0, 1] < 0.2 < 0.8 < probs[1, 1]


def test_cross_fitted_probabilities_never_come_from_the_rows_own_patient():
    # 30 features of pure noise: fitted on all rows the classifier separates them (it memorises), but
    # each row's cross-fitted probability comes from a fit without its patient, so it is near chance
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 5)
    y = patients % 2
    features = pd.DataFrame(rng.normal(size=(200, 30)) + rng.normal(size=(40, 30))[patients])
    in_sample = fit_measured(features, y, 100.0).predict(features, 2)[:, 1]
    held_out = cross_fitted_probs(features, y, patients, 100.0, 2)
    assert held_out.shape == (200, 2) and np.allclose(held_out.sum(axis=1), 1)
    assert roc_auc_score(y, in_sample) > 0.9 and roc_auc_score(y, held_out[:, 1]) < 0.7
    # five classes (the 5-class study): one probability per class, from the classes each fit saw
    ratings = patients % 5
    size = pd.DataFrame({"area": ratings * 10.0 + rng.normal(size=200)})
    five = cross_fitted_probs(size, ratings, patients, 1.0, 5)
    assert five.shape == (200, 5) and np.allclose(five.sum(axis=1), 1)
    assert (five.argmax(axis=1) == ratings).mean() > 0.9
    # too few patients for five folds, or a fold's rest with one class: no cross-fitting
    assert cross_fitted_probs(features.iloc[:20], y[:20], patients[:20], 1.0, 2) is None
    assert cross_fitted_probs(features, np.zeros(200, int), patients, 1.0, 2) is None


def test_config_is_checked():
    with pytest.raises(ConfigError, match="measured_nodule.C"):
        MeasuredNoduleConfig(C=0)
    with pytest.raises(ConfigError, match="measured_nodule.calibration: 'test'"):
        MeasuredNoduleConfig(calibration="test")
    # the nodule is the region nearest the centre: a full slice is refused, naming the key
    with pytest.raises(ConfigError, match="measured_nodule.enabled needs data.view: crop"):
        load_experiment(
            resolve_experiment_path("binary_full"), overrides={"measured_nodule": {"enabled": True}}
        )
    for name in ("binary_full", "five_class_full"):
        path = resolve_experiment_path(name)
        assert not load_experiment(path, profile="cpu-real-measured").measured_nodule.enabled


def test_a_run_trains_its_segmenter_on_training_patients_and_scores_image_only(tmp_path, capsys):
    manifest = write_crops(tmp_path, 16)
    run_dir = tmp_path / "run"
    overrides = [
        "data.split=[0.5,0.25,0.25]",
        # a fold ensemble, so the image-only rows are also judged on every training and validation patient
        "models=[{name: custom_cnn, model: {name: custom_cnn, filters: [4, 4, 8, 8], dense_units: 8}, "
        "ensemble: 2, ensemble_validation: patient-folds}]",
        "evaluation.explain=false",
        "evaluation.tta=false",
        "measured_nodule.enabled=true",
        "measured_nodule.profile=smoke",
        "measured_nodule.overrides={data: {image_size: 32}, postprocess: {crf: {enabled: false}}}",
    ]
    args = ["train", "binary_nodule", "--profile", "smoke", "--data", manifest, "--out", str(run_dir)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    measured = metrics["image_only"]["measured_nodule"]
    assert 0 <= measured["auc"] <= 1 and measured["levels"]["nodule"]["n"] == 4
    assert "mean of measured_nodule and custom_cnn" in metrics["image_only"]
    pooled = pd.read_csv(run_dir / "out_of_fold_custom_cnn.csv")
    for row in metrics["image_only"].values():
        assert {"slice", "nodule", "patient"} <= set(row["against_size_only"])
        against = row["out_of_fold_against_size_only"]
        assert against["slice"]["n"] == len(pooled)
        assert against["patient"]["n_patients"] == pooled["patient_id"].nunique() == 12
    assert metrics["image_only"]["measured_nodule"]["out_of_fold_against_size_only"]["predictions"] == (
        "cross-fitted training (5 patient folds) + validation"
    )
    report = (run_dir / "report.html").read_text()
    out_of_fold_table = report.split("Out of fold, on every")[1].split("</table>")[0]
    assert "image-only: measured_nodule" in out_of_fold_table
    assert "Against the diameter" in (run_dir / "report.html").read_text()
    calibration = measured["calibration"]
    assert calibration["temperature"] > 0 and isinstance(calibration["prior_correction"], bool)
    assert 0 <= calibration["ece_after"] <= 1
    # its 8 training patients are cross-fitted in 5 folds, and validation joins them
    assert calibration["fitted_on"] == "cross-fitted training (5 patient folds) + validation"
    assert "cross-fitted training" in (run_dir / "report.html").read_text()
    seg = pd.read_csv(run_dir / "segmenter_manifest.csv")
    cls = pd.read_csv(run_dir / "predictions.csv")  # the test split's rows
    trained_on = set(seg.loc[seg["split"] == "train", "patient_id"])
    assert trained_on.isdisjoint(set(cls["patient_id"]))
    # every crop has an outline: the segmenter's Dice per split covers each split's slices
    dice = measured["segmenter"]["dice_by_split"]
    assert {s: d["slices"] for s, d in dice.items()} == seg["split"].value_counts().to_dict()
    assert all(0 <= d["dice_mean"] <= 1 for d in dice.values())
    assert f"training patients {dice['train']['dice_mean']:.3f} ({dice['train']['slices']} slices)" in report
    assert json.loads((run_dir / "segmenter" / "run.json").read_text())["status"] == "finished"
    assert "image-only: measured_nodule" in (run_dir / "report.html").read_text()
    # the recommended model: the best validation F1 of the network and the image-only rows
    validation_f1 = {"custom_cnn": metrics["models"]["custom_cnn"]["val"]["f1"]}
    validation_f1.update({k: v["val"]["f1"] for k, v in metrics["image_only"].items()})
    recommended = metrics["recommended"]
    assert recommended["validation_f1"] == validation_f1
    assert validation_f1[recommended["model"]] == max(f for f in validation_f1.values() if f is not None)
    assert "Recommended model" in (run_dir / "report.html").read_text()
    assert f"recommended model {recommended['model']}" in printed, printed[-800:]

    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--data", manifest, "--out", str(out_dir)]) == 0
    assert json.loads((out_dir / "metrics.json").read_text())["recommended"] == recommended["model"]
    assert f"The run recommends {recommended['model']}" in (out_dir / "report.html").read_text()
    # the run's own thresholds, chosen on its held-out predictions, applied to the external set
    network = json.loads((out_dir / "metrics.json").read_text())
    threshold = metrics["models"]["custom_cnn"]["threshold_from_val"]["threshold"]
    assert network["at_run_threshold"]["threshold"] == threshold
    called = int((pd.read_csv(out_dir / "predictions.csv")["prob_malignant"] >= threshold).sum())
    assert np.asarray(network["at_run_threshold"]["confusion_matrix"])[:, 1].sum() == called
    assert f"threshold {threshold:.3f}" in (out_dir / "report.html").read_text()
    external = json.loads((out_dir / "metrics.json").read_text())["image_only"]["measured_nodule"]
    assert external["at_run_threshold"]["threshold"] == measured["threshold_from_val"]["threshold"]
    assert external["n"] == 48 and external["levels"]["nodule"]["n"] == 16
    assert external["calibration"]["temperature"] == calibration["temperature"]
    assert external["calibration"]["fitted_on"] == calibration["fitted_on"]
    assert {"slice", "nodule", "patient"} <= set(external["against_size_only"])
    # the same 48 outlined crops, split or not: the external Dice is the split means weighted by slices
    on_set = external["segmenter"]
    weighted = sum(d["dice_mean"] * d["slices"] for d in dice.values()) / 48
    # (a pixel on the threshold may flip between the two predictions: batches differ)
    assert on_set["slices"] == 48 and on_set["dice_mean"] == pytest.approx(weighted, abs=2e-3)
    report = (out_dir / "report.html").read_text()
    said = f"on this set's 48 outlined slices its Dice against their outlines is {on_set['dice_mean']:.3f}"
    assert html.escape(said) in report
    assert html.escape(f"(on the run's test split: {dice['test']['dice_mean']:.3f})") in report
    capsys.readouterr()
    check_predictions_without_labels(tmp_path, run_dir, manifest, out_dir, recommended["model"], capsys)


def check_predictions_without_labels(tmp_path, run_dir, manifest, evaluated, recommended, capsys):
    """`lungnet predict` on the same crops with every label column removed: the recommended model by
    default, its calibration applied, nodules and patients aggregated, a network's raw probabilities
    the ones `lungnet evaluate` computed, and an unknown model a clear error."""
    frame = pd.read_csv(manifest)
    unlabelled = tmp_path / "unlabelled.csv"
    keep = ["image", "mask", "patient_id", "nodule_id", "slice_index", "is_central", "pixel_spacing_mm"]
    frame[[c for c in keep if c in frame.columns]].to_csv(unlabelled, index=False)
    out = tmp_path / "predicted"
    assert main(["predict", str(run_dir), "--data", str(unlabelled), "--out", str(out)]) == 0
    assert f"{recommended} (best validation F1" in capsys.readouterr().out
    record = json.loads((out / "prediction.json").read_text())
    assert record["model"] == recommended and (record["slices"], record["nodules"]) == (48, 16)
    slices = pd.read_csv(out / "predictions.csv")
    calibration = Calibration.from_dict(record["calibration"])
    raw = slices[["uncalibrated_prob_benign", "uncalibrated_prob_malignant"]].to_numpy()
    np.testing.assert_allclose(slices[["prob_benign", "prob_malignant"]], calibration.apply(raw), atol=1e-6)
    nodules = pd.read_csv(out / "nodules.csv").set_index("nodule_id")
    mean = slices.groupby("nodule_id")["prob_malignant"].mean()
    np.testing.assert_allclose(nodules.loc[mean.index, "prob_malignant"], mean, atol=1e-6)
    patients = pd.read_csv(out / "patients.csv").set_index("patient_id")
    highest = nodules.groupby("patient_id")["prob_malignant"].max()
    np.testing.assert_allclose(patients.loc[highest.index, "prob_malignant"], highest, atol=1e-6)

    network = tmp_path / "predicted_network"
    assert (
        main(
            [
                "predict",
                str(run_dir),
                "--data",
                str(unlabelled),
                "--out",
                str(network),
                "--model",
                "custom_cnn",
            ]
        )
        == 0
    )
    ours = pd.read_csv(network / "predictions.csv")["uncalibrated_prob_malignant"]
    theirs = pd.read_csv(evaluated / "predictions.csv")["prob_malignant"]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(LungnetError, match="no such model.*measured_nodule"):
        predict_classification_run(run_dir, str(unlabelled), tmp_path / "p3", model_name="nope")
    capsys.readouterr()


def test_on_the_phantom_the_segmenter_outlines_the_crops_the_classifier_reads(
    tmp_path, tiny_phantom_config, capsys
):
    run_dir = tmp_path / "run"
    overrides = [
        f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}",
        "data.phantom.max_patients=12",
        "evaluation.explain=false",
        "evaluation.tta=false",
        "measured_nodule.enabled=true",
        # the real recipe, whose view is the whole slice, shrunk to a few steps
        "measured_nodule.overrides={data: {image_size: 32, batch_size: 4}, training: {epochs: 1, "
        "steps_per_epoch: 2}, evaluation: {intensity_test: false, tta: false}}",
    ]
    args = ["train", "binary_nodule", "--profile", "smoke", "--out", str(run_dir)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    capsys.readouterr()
    seg_config = load_run_config(run_dir / "segmenter")
    assert seg_config.data.view == "crop"
    # what the segmenter trained on: the crops and their masks, not the 512 px slices
    trained = pd.read_csv(run_dir / "segmenter_manifest.csv")
    assert trained["crop_mask"].str.contains("crop_masks.npy#").all()
    segmented = prepare_segmentation_data(seg_config.data, progress=False)
    assert segmented.manifest["image_ref"].str.contains("crops.npy#").all()
    measured = json.loads((run_dir / "metrics.json").read_text())["image_only"]["measured_nodule"]
    assert 0 <= measured["auc"] <= 1 and measured["segmenter"]["test_slices_without_region"] >= 0
