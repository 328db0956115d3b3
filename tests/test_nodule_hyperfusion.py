"""The nodule-fusion study: the seven channels against hand-worked values, the mask-weighted pooling, the
config's checks, and a tiny lidc-crops-style run (segmenter on the training patients, two phases, image-only
scores beside the readers' masks and the diameter, the SavedModel with a mask input, external evaluation)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.cli import main
from lungnet.data.io import read_image
from lungnet.data.preprocessing import preprocess_image, preprocess_mask
from lungnet.errors import ConfigError, DataError
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.models.layers.nodule_channels import CHANNEL_NAMES, MaskedAveragePool, NoduleChannels
from lungnet.reports.run_spread import DIAMETER, RECOMMENDED, fusion_scores
from lungnet.runs import load_run_config
from lungnet.serving.client import parse_rest_response, rest_request
from lungnet.studies.runner import seed_overrides
from tests.report_checks import check_report
from tests.test_physical_scale_and_neighbours import write_crops


def _channels(image: np.ndarray, mask: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    out = NoduleChannels(**kwargs)([image[None, ..., None], mask[None, ..., None]])
    return {name: np.asarray(out)[0, ..., i] for i, name in enumerate(CHANNEL_NAMES)}


def test_the_seven_channels_by_hand():
    image = np.full((9, 9), 0.5, np.float32)
    mask = np.zeros((9, 9), np.float32)
    mask[4, 4] = 1.0
    c = _channels(image, mask, ring_px=1, proximity_px=3)
    np.testing.assert_allclose(c["ct"], image)
    np.testing.assert_allclose(c["mask"], mask)
    np.testing.assert_allclose(c["nodule"], 0.5 * mask)
    ring = np.zeros((9, 9))
    ring[3:6, 3:6] = 0.5  # the 3 x 3 neighbourhood of the nodule pixel, without it
    ring[4, 4] = 0.0
    np.testing.assert_allclose(c["surround"], ring, atol=1e-6)
    # a flat image has no edges and no texture, also at its borders (mirrored, not zero-padded)
    np.testing.assert_allclose(c["edges"], 0.0, atol=1e-4)
    np.testing.assert_allclose(c["texture"], 0.0, atol=1e-4)
    # proximity: 1 on the nodule, 2/3 one pixel away (chessboard), 1/3 two away, 0 from three on
    rows, cols = np.indices((9, 9))
    distance = np.maximum(abs(rows - 4), abs(cols - 4))
    np.testing.assert_allclose(c["proximity"], np.clip(1 - distance / 3, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match=r"NoduleChannels takes .*got image \(1, 9, 9\)"):
        NoduleChannels()([image[None], mask[None, ..., None]])  # an image without its channel axis


def test_edges_and_texture_by_hand():
    step = np.zeros((9, 9), np.float32)
    step[:, 5:] = 1.0  # a vertical step: Sobel gives 4 on both columns beside it, 0 elsewhere
    edges = _channels(step, np.zeros_like(step))["edges"]
    np.testing.assert_allclose(edges[:, 4:6], 1.0, atol=1e-4)
    np.testing.assert_allclose(edges[:, :3], 0.0, atol=1e-4)
    np.testing.assert_allclose(edges[:, 7:], 0.0, atol=1e-4)
    checker = (np.indices((11, 11)).sum(axis=0) % 2).astype(np.float32)
    texture = _channels(checker, np.zeros_like(checker))["texture"]
    # every 5 x 5 window holds 13 of one value and 12 of the other: std = sqrt(13 * 12) / 25
    np.testing.assert_allclose(texture[2:-2, 2:-2], 2 * np.sqrt(13 * 12) / 25, atol=1e-4)
    # values stay in [0, 1] on random images
    noise = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    for name, channel in _channels(noise, (noise > 0.7).astype(np.float32)).items():
        assert channel.min() >= 0 and channel.max() <= 1 + 1e-6, name


def test_masked_average_pool_by_hand():
    features = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    mask = np.zeros((1, 8, 8, 1), np.float32)
    mask[0, :2, :2] = 1.0  # covers feature cell (0, 0) fully
    mask[0, 2, 2] = 1.0  # a quarter of cell (1, 1)
    pooled = np.asarray(MaskedAveragePool()([features, mask]))
    np.testing.assert_allclose(pooled, [[(0 * 1 + 5 * 0.25) / 1.25]], rtol=1e-5)
    empty = np.asarray(MaskedAveragePool()([features, np.zeros_like(mask)]))
    np.testing.assert_allclose(empty, [[0.0]])


def test_compare_runs_reads_a_fusion_record():
    levels = {"nodule": {"auc": 0.7, "f1_macro": 0.6}, "patient": {"auc": 0.8, "f1_macro": 0.65}}
    record = {"auc": 0.75, "f1_macro": 0.7, "f1": 0.6, "levels": levels, "calibration": {"ece_after": 0.05}}
    metrics = {
        "selected_model": "hf",
        "models": {"hf": {**record, "with_readers_masks": {"auc": 0.9, "f1_macro": 0.8, "levels": levels}}},
        "baselines": {"size_only": {"auc": 0.85, "f1_macro": 0.78, "levels": levels}},
    }
    scores = fusion_scores(metrics)
    assert scores["hf"]["slice AUC"] == 0.75 and scores["hf"]["patient AUC"] == 0.8
    assert scores["hf"]["ECE after calibration"] == 0.05
    assert scores["hf (readers' masks)"]["slice AUC"] == 0.9
    assert scores[RECOMMENDED] == scores["hf"] and scores[DIAMETER]["slice AUC"] == 0.85


def reproduce_smoke(manifest: str, run_dir: Path, overrides: list[str]) -> None:
    """`lungnet reproduce nodule-hyperfusion --profile smoke` on `manifest` with `--set` `overrides`."""
    args = [
        "reproduce",
        "nodule-hyperfusion",
        "--profile",
        "smoke",
        "--data",
        manifest,
        "--out",
        str(run_dir),
    ]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0


def serving_benchmark():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "serving_latency.py"
    spec = importlib.util.spec_from_file_location("serving_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _experiment(profile="smoke", **overrides):
    return load_experiment(
        resolve_experiment_path("nodule_hyperfusion"), profile=profile, overrides=overrides
    )


def test_config_is_checked():
    config = _experiment()
    assert config.task == "nodule_fusion" and config.models[0].phases == ("readers", "predicted")
    with pytest.raises(ConfigError, match=r"reads no nodule mask.*nodule_hyperfusion"):
        _experiment(models=[{"name": "cnn", "model": {"name": "custom_cnn"}}])
    with pytest.raises(ConfigError, match=r"models\[hf\].phases"):
        _experiment(
            models=[{"name": "hf", "model": {"name": "nodule_hyperfusion"}, "phases": ["readers", "x"]}]
        )
    with pytest.raises(ConfigError, match="view: crop"):
        _experiment(data={"view": "full"})
    with pytest.raises(ConfigError, match="neighbour_slices"):
        _experiment(data={"neighbour_slices": True, "preprocess": {"channels": 3}})
    with pytest.raises(ConfigError, match="random initialisation"):
        _experiment(models=[{"name": "hf", "model": {"name": "nodule_hyperfusion", "weights": "imagenet"}}])
    # --seed reaches the study's own segmenter, never its split
    seeds = seed_overrides(config, 7)
    assert seeds["segmenter"]["overrides"]["training"]["seed"] == 7 and "split_seed" not in seeds["data"]


@pytest.mark.slow  # three segmenters for an option no shipped profile uses: `make test-slow`
def test_cross_fitted_training_masks_come_from_segmenters_that_never_saw_their_patients(tmp_path):
    manifest = write_crops(tmp_path, 12)
    run_dir = tmp_path / "run"
    overrides = [
        "data.preprocess={hu_window: null, normalize: minmax, zscore_mean: null, zscore_std: null, "
        "image_size: 32}",
        "segmenter.overrides={data: {image_size: 32}, postprocess: {crf: {enabled: false}}, "
        "evaluation: {intensity_test: false}}",
        "segmenter.cross_fit_folds=2",
        "models=[{name: predicted_only, model: {name: nodule_hyperfusion, filters: [4], embedding_units: 4}, "
        "phases: [predicted]}]",
    ]
    reproduce_smoke(manifest, run_dir, overrides)
    segmenter = json.loads((run_dir / "metrics.json").read_text())["segmenter"]
    assert segmenter["fold_runs"] == ["segmenter-fold-1", "segmenter-fold-2"]
    assert segmenter["training_masks"].startswith("cross-fitted: 2 segmenters")
    main_split = pd.read_csv(run_dir / "segmenter_manifest.csv").groupby("patient_id")["split"].first()
    training = set(main_split[main_split == "train"].index)
    held_out_by_fold = []
    for folder in segmenter["fold_runs"]:
        fold_split = pd.read_csv(run_dir / f"{folder}_manifest.csv").groupby("patient_id")["split"].first()
        # the fold's own patients and the test patients are held out; validation still early-stops it
        held = set(fold_split[fold_split == "test"].index) & training
        assert held and set(fold_split[fold_split == "train"].index) == training - held
        assert set(fold_split[fold_split == "val"].index) == set(main_split[main_split == "val"].index)
        assert (run_dir / folder / "run.json").is_file()
        held_out_by_fold.append(held)
    assert held_out_by_fold[0].isdisjoint(held_out_by_fold[1])
    assert held_out_by_fold[0] | held_out_by_fold[1] == training
    # every training slice's mask is a fold's; the run's segmenter drew only validation and test masks
    images_per_patient = 3
    fold_masks = [
        len(list((run_dir / "predicted_masks_cross_fitted" / f"fold-{i}").glob("*.png"))) for i in (1, 2)
    ]
    assert fold_masks == [images_per_patient * len(h) for h in held_out_by_fold]
    own = len(list((run_dir / "predicted_masks").glob("*.png")))
    assert own == images_per_patient * (12 - len(training))
    assert segmenter["by_split"]["train"]["slices"] == images_per_patient * len(training)
    assert "cross-fitted" in (run_dir / "report.html").read_text()


def test_a_run_reads_the_segmenters_masks_and_serves_with_or_without_one(tmp_path, capsys):
    manifest = write_crops(tmp_path, 12)
    frame = pd.read_csv(manifest)
    unmarked = {"P0", "P1"}  # patients without an outline, as LungCT-Diagnosis in the harmonised collections
    frame.loc[frame["patient_id"].isin(unmarked), "mask"] = ""
    frame.to_csv(manifest, index=False)
    run_dir = tmp_path / "run"
    overrides = [
        "data.preprocess={hu_window: null, normalize: minmax, zscore_mean: null, zscore_std: null, "
        "pixel_spacing_mm: 0.75, center_crop: 32, image_size: 32}",
        "segmenter.overrides={data: {image_size: 32}, postprocess: {crf: {enabled: false}}, "
        "evaluation: {intensity_test: false}}",
        "models=[{name: hyperfusion, model: {name: nodule_hyperfusion, filters: [4, 8], embedding_units: 8}}, "
        "{name: predicted_only, model: {name: nodule_hyperfusion, filters: [4, 8], embedding_units: 8}, "
        "phases: [predicted]}]",
    ]
    reproduce_smoke(manifest, run_dir, overrides)
    printed = capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"selected model {metrics['selected_model']} on the segmenter's masks" in printed
    assert "the diameter: AUC" in printed
    row = metrics["models"]["hyperfusion"]
    assert 0 <= row["auc"] <= 1 and {"nodule", "patient"} <= set(row["levels"])
    assert 0 <= row["with_readers_masks"]["auc"] <= 1 and {"slice", "patient"} <= set(
        row["against_size_only"]
    )
    # the masks of each phase, in training order (JSON objects are written with sorted keys)
    assert row["phases"] == ["readers", "predicted"]
    assert set(row["training"]) == {"hyperfusion_readers", "hyperfusion_predicted"}
    assert metrics["models"]["predicted_only"]["phases"] == ["predicted"]
    phases = set(json.loads((run_dir / "phases.json").read_text()))
    assert phases == {*row["training"], "predicted_only_predicted"}
    [pair] = metrics["pairs"]  # the two-phase model against the segmenter's masks alone, same patients
    assert (pair["a"], pair["b"]) == ("hyperfusion", "predicted_only")
    test_patients = pd.read_csv(run_dir / "predictions.csv")["patient_id"].nunique()
    assert pair["patient"]["n_patients"] == test_patients
    assert "size_only" in metrics["baselines"] and 0 <= metrics["segmenter"]["dice_mean"] <= 1
    by_split = metrics["segmenter"]["by_split"]  # the same Dice on each split (training: in-sample masks)
    outlined_rows = pd.read_csv(run_dir / "segmenter_manifest.csv")["split"].value_counts()
    assert [by_split[s]["slices"] for s in ("train", "val")] == [outlined_rows["train"], outlined_rows["val"]]
    assert all(0 <= by_split[s]["dice_mean"] <= 1 for s in ("train", "val"))
    # the segmenter trained on training patients only; every image has its predicted mask on disk; the
    # readers' masks are read where they exist
    seg = pd.read_csv(run_dir / "segmenter_manifest.csv")
    tested_rows = pd.read_csv(run_dir / "predictions.csv")
    tested = set(tested_rows["patient_id"])
    outlined_tests = int((~tested_rows["patient_id"].isin(unmarked)).sum())
    assert row["with_readers_masks"]["n"] == metrics["segmenter"]["slices"] == outlined_tests
    assert not set(seg["patient_id"]) & unmarked
    assert set(seg.loc[seg["split"] == "train", "patient_id"]).isdisjoint(tested)
    assert len(list((run_dir / "predicted_masks").glob("*.png"))) == 36
    report = (run_dir / "report.html").read_text()
    assert "segmenter&#x27;s masks: image-only" in report and "seven channels" in report
    assert "hyperfusion against predicted_only" in report
    assert (run_dir / "figures" / "channels.png").is_file()

    # the SavedModel takes a raw image, its mask and its spacing, and matches Keras
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    config = load_run_config(run_dir)
    shown = frame[~frame["patient_id"].isin(unmarked)].head(2)
    images = np.stack([read_image(str(tmp_path / name)) for name in shown["image"]])
    masks = np.stack([read_image(str(tmp_path / name)) for name in shown["mask"]])
    spacing = shown["pixel_spacing_mm"].to_numpy(np.float32)
    out = serve(images=tf.constant(images), masks=tf.constant(masks), pixel_spacing_mm=tf.constant(spacing))
    grey = config.data.preprocess
    x = {
        "image": preprocess_image(images[..., None], grey, spacing),
        "mask": preprocess_mask((masks > 0).astype(np.float32)[..., None], grey, spacing),
    }
    exported = run_dir / "models" / f"{metrics['selected_model']}.keras"
    p = keras.models.load_model(exported).predict(x, verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(), np.concatenate([1 - p, p], axis=1), atol=1e-5)
    # the REST body the client builds is what the signature takes (masks as 0/1 of the images' type)
    body = rest_request(images, spacing, masks=masks)
    served = serve(**{k: tf.constant(np.asarray(v), tf.float32) for k, v in body["inputs"].items()})
    np.testing.assert_allclose(served["probabilities"].numpy(), out["probabilities"].numpy(), atol=1e-6)
    with pytest.raises(DataError, match="one mask per image"):
        rest_request(images, spacing, masks=masks[:1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one mask of each image"):
        serve(images=tf.constant(images), masks=tf.constant(masks[:1]), pixel_spacing_mm=tf.constant(spacing))

    # the segmenter whose masks it expects exports as any segmentation run does
    assert main(["export", str(run_dir / "segmenter"), "--out", str(tmp_path / "segmenter_saved")]) == 0
    assert json.loads((tmp_path / "segmenter_saved" / "lungnet.json").read_text())["task"] == "segmentation"

    # another labelled set: the run's segmenter outlines it, then the classifier reads slice and mask
    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--data", manifest, "--out", str(out_dir)]) == 0
    evaluated = json.loads((out_dir / "metrics.json").read_text())
    assert evaluated["n"] == 36 and evaluated["levels"]["nodule"]["n"] == 12
    assert 0 <= evaluated["with_readers_masks"]["auc"] <= 1 and "against_size_only" in evaluated
    assert "report.html" in capsys.readouterr().out  # the files it names are the files it wrote
    evaluation_report = (out_dir / "report.html").read_text()
    assert (
        "segmenter&#x27;s masks: image-only" in evaluation_report
        and "diameter (the run&#x27;s fit)" in evaluation_report
    )
    assert {"roc.png", "confusion_matrix.png", "outlines.png"} <= {p.name for p in out_dir.iterdir()}
    evaluated_rows = pd.read_csv(out_dir / "predictions.csv")
    predicted = evaluated_rows["predicted_mask"]
    assert all(cv2.imread(p, cv2.IMREAD_GRAYSCALE) is not None for p in predicted)
    # the segmenter's Dice on the set: its written masks against the outlines, image by image (P0 and P1
    # have none)
    folder = Path(manifest).parent
    outline_of = {
        str(folder / i): str(folder / m) for i, m in frame[["image", "mask"]].fillna("").to_numpy() if m
    }
    dice = []
    for image, drawn in zip(evaluated_rows["image"], predicted, strict=True):
        if image in outline_of:
            a = cv2.imread(drawn, cv2.IMREAD_GRAYSCALE) > 0
            b = cv2.imread(outline_of[image], cv2.IMREAD_GRAYSCALE) > 0
            dice.append(2 * (a & b).sum() / (a.sum() + b.sum()) if a.any() or b.any() else 1.0)
    assert evaluated["segmenter"] == {"slices": 30, "dice_mean": pytest.approx(np.mean(dice))}
    assert f"outlined slices: Dice {np.mean(dice):.3f}" in evaluation_report

    # image-only serving: the SavedModel's segmenter draws the masks `lungnet evaluate` drew, and the
    # classifier reads them as it reads masks sent to `serving_default`
    saved = tf.saved_model.load(str(run_dir / "saved_model"))
    drawn_by_study = dict(zip(evaluated_rows["image"].astype(str), predicted, strict=True))
    study_masks = np.stack([read_image(drawn_by_study[str(tmp_path / name)]) > 0 for name in shown["image"]])
    image_only = saved.signatures["image_only"]
    alone = image_only(images=tf.constant(images), pixel_spacing_mm=tf.constant(spacing))
    assert alone["masks"].dtype == tf.uint8 and alone["masks"].shape == images.shape
    np.testing.assert_array_equal(alone["masks"].numpy() == 1, study_masks)
    with_drawn = serve(
        images=tf.constant(images),
        masks=tf.constant(study_masks, tf.float32),
        pixel_spacing_mm=tf.constant(spacing),
    )
    np.testing.assert_allclose(alone["probabilities"].numpy(), with_drawn["probabilities"].numpy(), atol=1e-6)
    eight_bit = saved.signatures["image_only_uint8"](
        images=tf.constant(images.astype(np.uint8)), pixel_spacing_mm=tf.constant(spacing)
    )
    np.testing.assert_array_equal(eight_bit["masks"].numpy(), alone["masks"].numpy())
    as_uint8 = rest_request(images.astype(np.uint8), spacing, signature="image_only")
    assert as_uint8["signature_name"] == "image_only_uint8" and set(as_uint8["inputs"]) == {
        "images",
        "pixel_spacing_mm",
    }
    reply = {"outputs": {k: v.numpy().tolist() for k, v in alone.items()}}  # TF Serving's columnar reply
    np.testing.assert_array_equal(parse_rest_response(reply, "masks"), alone["masks"].numpy())
    empty = image_only(images=tf.zeros([0, 40, 40]), pixel_spacing_mm=tf.zeros([0]))
    assert empty["probabilities"].shape == (0, 2) and empty["masks"].shape == (0, 40, 40)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one spacing"):
        image_only(images=tf.constant(images), pixel_spacing_mm=tf.constant(spacing[:1]))
    assert "image_only" in json.loads((run_dir / "saved_model" / "lungnet.json").read_text())["image_only"]
    # the serving benchmark sends each signature what it names: image_only gets no masks
    timing = serving_benchmark().measure(
        image_only,
        config,
        config.data.preprocess,
        argparse.Namespace(image_size=40, warmup=1, calls=2, batches=1),
    )
    assert timing["input"] == {"images": [1, 40, 40], "pixel_spacing_mm": [1]}
    assert timing["throughput_images_per_s_batch32"] > 0

    # images without labels: masks from the run's segmenter, calibrated probabilities per slice and patient
    predictions = tmp_path / "predictions"
    assert main(["predict", str(run_dir), "--data", manifest, "--out", str(predictions)]) == 0
    slices = pd.read_csv(predictions / "predictions.csv")
    assert len(slices) == 36 and slices["predicted_mask"].map(lambda p: cv2.imread(p) is not None).all()
    assert np.allclose(slices[["prob_benign", "prob_malignant"]].sum(axis=1), 1.0)
    assert len(pd.read_csv(predictions / "patients.csv")) == 12
    predicted_record = json.loads((predictions / "prediction.json").read_text())
    assert predicted_record["model"] == metrics["selected_model"]
    assert "outlines.png" in predicted_record["files"] and (predictions / "outlines.png").is_file()
    capsys.readouterr()
    check_report(run_dir / "report.html", tmp_path)  # last: skips where Chromium is missing
    check_report(out_dir / "report.html", tmp_path)
