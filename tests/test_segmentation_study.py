"""The segmentation study end to end: data preparation, bad input, a smoke run, evaluate and export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.cli import main
from lungnet.data.segmentation import SegmentationDataConfig, prepare_segmentation_data
from lungnet.errors import ConfigError, DataError
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.runs import load_run_config
from tests.export_checks import assert_export_matches_keras
from tests.report_checks import check_report
from tests.test_run_spread import check_spread_of_copies


def write_png_dataset(root: Path, n_patients: int = 8, size: int = 64, empty_rows=(), seed: int = 0) -> Path:
    """8-bit PNG crops of bright discs with their masks, two slices per patient, and a manifest CSV."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for p in range(n_patients):
        for _ in range(2):
            k = len(rows)
            radius = int(rng.integers(3, 12))
            yy, xx = np.mgrid[:size, :size]
            mask = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius**2).astype(np.uint8)
            if k in empty_rows:
                mask[:] = 0
            image = np.clip(20 + 100 * mask + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "images" / f"{k}.png"), image)
            cv2.imwrite(str(root / "masks" / f"{k}.png"), mask * 255)
            rows.append(
                {
                    "image": f"images/{k}.png",
                    "mask": f"masks/{k}.png",
                    "patient_id": f"P{p:03d}",
                    "nodule_id": f"P{p:03d}/nodule-0",
                    "label": "benign",
                    "diameter_mm": 2 * radius * 0.7,
                    "pixel_spacing_mm": 0.7,
                }
            )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def png_config(manifest: Path, **overrides) -> SegmentationDataConfig:
    values = {"source": str(manifest), "image_size": 32, "batch_size": 4, "split": (0.5, 0.25, 0.25)}
    return SegmentationDataConfig(**{**values, **overrides})


def test_8bit_source_is_zscored_per_image(tmp_path):
    data = prepare_segmentation_data(png_config(write_png_dataset(tmp_path)), progress=False)
    assert data.intensity == "8bit"
    assert data.preprocess.hu_window is None and data.preprocess.zscore_mean is None
    images, masks = next(iter(data.val))
    assert images.shape[1:] == (32, 32, 1) and masks.shape[1:] == (32, 32, 1)
    per_image_mean = tf.reduce_mean(images, axis=[1, 2, 3]).numpy()
    np.testing.assert_allclose(per_image_mean, 0.0, atol=1e-4)
    assert set(np.unique(masks.numpy())) <= {0.0, 1.0}
    # patient-level split, and the pixel spacing follows the resize (64 px at 0.7 mm -> 32 px at 1.4 mm)
    assert data.manifest.groupby("patient_id")["split"].nunique().max() == 1
    np.testing.assert_allclose(data.manifest["eval_spacing_mm"], 1.4)


def test_ct_source_uses_dataset_statistics_after_the_hu_clip(tiny_phantom_config):
    config = SegmentationDataConfig(
        source="lidc-phantom", view="crop", image_size=32, batch_size=4, phantom=tiny_phantom_config
    )
    data = prepare_segmentation_data(config, progress=False)
    assert data.intensity == "ct"
    assert data.preprocess.hu_window == (-1000.0, 400.0)
    # lung parenchyma dominates a clipped CT crop: the mean sits well below 0 HU, the std is hundreds of HU
    assert -1000 < data.preprocess.zscore_mean < 0 and 100 < data.preprocess.zscore_std < 700
    assert data.split("test")["eval_spacing_mm"].notna().all()


def test_empty_masks_are_kept_dropped_or_refused(tmp_path):
    manifest = write_png_dataset(tmp_path, empty_rows=(3,))
    kept = prepare_segmentation_data(png_config(manifest), progress=False)
    assert kept.n_empty_masks == 1 and len(kept.manifest) == 16
    dropped = prepare_segmentation_data(png_config(manifest, empty_masks="drop"), progress=False)
    assert len(dropped.manifest) == 15
    with pytest.raises(DataError, match=r"row 3: mask \S*masks/3\.png is empty"):
        prepare_segmentation_data(png_config(manifest, empty_masks="error"), progress=False)


def test_mask_with_other_values_is_named(tmp_path):
    manifest = write_png_dataset(tmp_path)
    bad = np.zeros((64, 64), np.uint8)
    bad[10:20, 10:20] = 7
    cv2.imwrite(str(tmp_path / "masks" / "5.png"), bad)
    with pytest.raises(DataError, match=r"masks/5\.png: mask values must be 0/1 or 0/255, found \[0, 7\]"):
        prepare_segmentation_data(png_config(manifest), progress=False)


def test_image_and_mask_of_different_sizes_are_named(tmp_path):
    manifest = write_png_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "masks" / "2.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(
        DataError, match=r"row 2: \S*masks/2\.png: mask shape \(48, 48\) does not match its image"
    ):
        prepare_segmentation_data(png_config(manifest), progress=False)


def test_segmentation_experiment_validates():
    config = load_experiment(resolve_experiment_path("attention-unet"), profile="default")
    assert config.task == "segmentation"
    assert [m.name for m in config.models] == ["unet", "attention_res_unet"]
    assert config.loss.name == "hybrid" and config.training.optimizer == "adam"
    with pytest.raises(ConfigError, match="postprocess.threshold"):
        load_experiment(
            resolve_experiment_path("attention-unet"),
            profile="smoke",
            overrides={"postprocess": {"threshold": 2}},
        )
    with pytest.raises(ConfigError, match="task"):
        load_experiment(resolve_experiment_path("attention-unet"), overrides={"task": "detection"})


def test_crf_without_pydensecrf2_fails_before_training(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("pydensecrf")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf2", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    out = tmp_path / "run"
    code = main(["train", "attention-unet", "--profile", "smoke", "--out", str(out)])
    assert code == 2
    assert not (out / "checkpoints").exists()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_phantom_config):
    out = tmp_path_factory.mktemp("seg") / "run"
    cache = str(tiny_phantom_config.cache_dir)
    code = main(
        [
            "reproduce",
            "attention-unet",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--set",
            f"data.phantom.cache_dir={cache}",
        ]
    )
    assert code == 0
    return out


def test_smoke_run_writes_every_artefact(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in (
        "dice",
        "iou",
        "precision",
        "sensitivity",
        "f_score",
        "accuracy",
        "small_tumour_recall",
        "intensity_std",
    ):
        assert key in metrics and key in metrics["crf"]
    assert set(metrics["models"]) == {"unet", "attention_res_unet"}
    tuning = metrics["models"]["unet"]["crf_tuning"]  # chosen on validation, from the whole grid
    assert len(tuning["grid"]) == 9 and tuning["val_dice_crf"] == max(r["val_dice"] for r in tuning["grid"])
    assert 0 <= metrics["dice"] <= 1
    predictions = pd.read_csv(smoke_run / "predictions.csv")
    assert {"image", "patient_id", "dice", "iou", "predicted_mask", "dice_crf"} <= set(predictions.columns)
    assert len(predictions) == 2 * metrics["n_test"]
    mask = cv2.imread(str(smoke_run / predictions["predicted_mask"].iloc[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
    assert (smoke_run / "report.html").stat().st_size > 10_000
    assert (smoke_run / "figures" / "overlays.png").is_file()
    assert (smoke_run / "figures" / "learning_curves.png").is_file()
    assert list((smoke_run / "figures").glob("attention_attention_res_unet_*.png"))
    assert load_run_config(smoke_run).task == "segmentation"


def test_compare_runs_reads_a_real_segmentation_record(smoke_run, tmp_path):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    spread = check_spread_of_copies(smoke_run, tmp_path, "Dice, all slices").set_index(["model", "metric"])
    for name, model in metrics["models"].items():
        assert spread.loc[(name, "Dice, all slices"), "mean"] == pytest.approx(model["raw"]["dice"])
    selected = metrics["models"][metrics["selected_model"]]["raw"]["dice"]
    assert spread.loc[("recommended", "Dice, all slices"), "mean"] == pytest.approx(selected)


def test_report_renders_with_every_figure(smoke_run, tmp_path):
    check_report(smoke_run / "report.html", tmp_path)


def test_export_returns_the_probability_map_at_input_size(smoke_run):
    images = np.random.default_rng(0).uniform(-1000, 400, (2, 40, 40)).astype(np.float32)
    out = assert_export_matches_keras(smoke_run, smoke_run / "saved_model", images)
    assert out.shape == (2, 40, 40) and np.all((out >= 0) & (out <= 1))


def test_evaluate_a_segmentation_run_on_another_source(smoke_run, tmp_path, tiny_phantom_config):
    out = tmp_path / "eval"
    assert main(["evaluate", str(smoke_run), "--data", "lidc-phantom", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] > 0 and 0 <= metrics["dice"] <= 1
    assert (out / "report.html").is_file() and (out / "predictions.csv").is_file()
    check_report(out / "report.html", tmp_path)
    # a CT-trained run refuses 8-bit images instead of mis-normalising them
    manifest = write_png_dataset(tmp_path / "png")
    code = main(["evaluate", str(smoke_run), "--data", str(manifest), "--out", str(tmp_path / "bad")])
    assert code == 2


def test_segmentation_tta_maps_every_view_back():
    import keras

    from lungnet.studies.segmentation import segment

    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32))
    identity = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Identity()])
    # an equivariant model: every transformed view maps back onto the same map
    np.testing.assert_allclose(segment(identity, x, tta=True), x.numpy()[..., 0], atol=1e-6)
    # a model that is not (it reads the image shifted by a row): TTA averages the five mapped-back views
    shifted = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: tf.roll(t, 1, axis=1))])
    plain = segment(shifted, x)
    np.testing.assert_allclose(plain, np.roll(x.numpy(), 1, axis=1)[..., 0], atol=1e-6)
    assert not np.allclose(segment(shifted, x, tta=True), plain)


def write_ct_npy_dataset(root: Path, phantom_config, size: int, n: int = 6, masks: bool = True) -> Path:
    """`n` of the phantom's CT crops resized to `size` px as .npy files (with their masks as PNGs, or
    without any mask or label), and a manifest."""
    from lungnet.data.io import read_image
    from lungnet.data.registry import load_source

    source = load_source("lidc-phantom", phantom_config, progress=False)
    rows = []
    (root / "images").mkdir(parents=True)
    for k, (_, row) in enumerate(source.manifest.head(n).iterrows()):
        image = read_image(str(row["crop_image"])).astype(np.float32)
        scale = image.shape[0] / size
        np.save(root / "images" / f"{k}.npy", cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        entry = {
            "image": f"images/{k}.npy",
            "patient_id": row["patient_id"],
            "nodule_id": row["nodule_id"],
            "pixel_spacing_mm": float(row["crop_pixel_spacing_mm"]) * scale,
        }
        if masks:
            mask = read_image(str(row["crop_mask"])) > 0
            resized = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / f"mask{k}.png"), resized * 255)
            entry["mask"] = f"mask{k}.png"
        rows.append(entry)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_predict_writes_the_masks_evaluate_scores_on_each_images_own_pixels(
    smoke_run, tmp_path, tiny_phantom_config, capsys
):
    # at the model's own size the masks are the ones `lungnet evaluate` writes, raw and after the CRF
    labelled = write_ct_npy_dataset(tmp_path / "ct32", tiny_phantom_config, size=32)
    assert main(["evaluate", str(smoke_run), "--data", str(labelled), "--out", str(tmp_path / "eval")]) == 0
    assert main(["predict", str(smoke_run), "--data", str(labelled), "--out", str(tmp_path / "pred")]) == 0
    assert "unet: a mask on" in capsys.readouterr().out
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert list(predicted["image"]) == list(evaluated["image"])
    for ours, theirs in (("mask", "predicted_mask"), ("mask_crf", "predicted_mask_crf")):
        for mine, reference in zip(predicted[ours], evaluated[theirs], strict=True):
            a = cv2.imread(str(tmp_path / "pred" / mine), cv2.IMREAD_GRAYSCALE)
            b = cv2.imread(str(tmp_path / "eval" / reference), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(a, b)
    assert predicted["area_px"].sum() > 0  # equal masks, not merely equally empty ones

    # on larger images without masks or labels: one mask of each image's size, areas in mm²
    unlabelled = write_ct_npy_dataset(tmp_path / "ct48", tiny_phantom_config, size=48, masks=False)
    assert main(["predict", str(smoke_run), "--data", str(unlabelled), "--out", str(tmp_path / "p48")]) == 0
    out = tmp_path / "p48"
    table = pd.read_csv(out / "predictions.csv")
    spacing = pd.read_csv(unlabelled)["pixel_spacing_mm"].to_numpy()
    for row, mm in zip(table.itertuples(), spacing, strict=True):
        mask = cv2.imread(str(out / row.mask), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
        assert row.area_px == int((mask > 0).sum())
        np.testing.assert_allclose(row.area_mm2, row.area_px * mm**2)
    nodules = pd.read_csv(out / "nodules.csv")
    assert nodules["slices"].sum() == len(table)
    largest = table.groupby("nodule_id")["area_mm2"].max()
    np.testing.assert_allclose(nodules.set_index("nodule_id")["max_area_mm2"], largest)
    written = json.loads((out / "prediction.json").read_text())
    assert written["model"] == "unet" and written["images"] == len(table) and written["crf"] is not None
    assert (out / "masks.png").stat().st_size > 0

    # an 8-bit source on this CT-trained run is refused with the reason, before anything is written
    manifest = write_png_dataset(tmp_path / "png")
    assert main(["predict", str(smoke_run), "--data", str(manifest), "--out", str(tmp_path / "bad")]) == 2
    assert "trained on ct images" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_predictions_mark_the_readers_slices(tmp_path):
    from types import SimpleNamespace

    from lungnet.studies.segmentation import write_predictions

    frame = pd.DataFrame(
        {
            "image_ref": [f"s{i}.png" for i in range(4)],
            "patient_id": ["A", "A", "B", "B"],
            "nodule_id": ["A/0", "A/0", "B/0", "B/1"],
            "is_central": [1, 0, 1, 1],
            "n_readers": [4, 4, 3, 2],  # B/1 has 2 readers: not a slice the readers' agreement is on
        }
    )
    scores = pd.DataFrame({"dice": [0.9, 0.8, 0.7, 0.6], "iou": [0.8, 0.7, 0.6, 0.5]})
    result = SimpleNamespace(
        name="unet",
        test=SimpleNamespace(probs=np.zeros((4, 8, 8, 1))),
        crf_probs=None,
        per_image={"raw": scores},
    )
    table = write_predictions(tmp_path, frame, [result], threshold=0.5)
    assert list(table["readers_slice"]) == [True, False, True, False]
    assert list(pd.read_csv(tmp_path / "predictions.csv")["readers_slice"]) == [True, False, True, False]
    without = write_predictions(tmp_path, frame.drop(columns="is_central"), [result], threshold=0.5)
    assert "readers_slice" not in without.columns
