"""Fixed physical scale (resampling from each image's pixel spacing) and 2.5-D input (neighbouring slices as
channels): preprocessing, pipelines, bad input, and a tiny lidc-crops-style run through export and evaluate."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.cli import main
from lungnet.data.neighbours import NEIGHBOUR_COLUMNS, add_neighbour_columns
from lungnet.data.pipelines import classification_dataset, sample_spacings
from lungnet.data.preprocessing import PreprocessConfig, preprocess_image, preprocess_mask
from lungnet.errors import ConfigError, DataError

PHYSICAL = PreprocessConfig(pixel_spacing_mm=0.75, center_crop=32, image_size=32, sigmoid_gain=None)


def square(side: int, size: int = 64) -> np.ndarray:
    image = np.zeros((size, size), np.float32)
    lo = (size - side) // 2
    image[lo : lo + side, lo : lo + side] = 1.0
    return image


@pytest.mark.parametrize("spacing", [0.5, 0.75, 1.0])
def test_a_nodule_keeps_its_size_in_millimetres(spacing):
    # a 12 px square at `spacing` mm is 12 * spacing mm wide; at 0.75 mm per pixel it is 16 * spacing px
    mask = preprocess_mask(square(12), PHYSICAL, spacing).numpy()
    assert mask.shape == (32, 32, 1)
    assert abs(np.sqrt(mask.sum()) - 12 * spacing / 0.75) <= 1.0


def test_smaller_images_are_padded_and_batches_take_one_spacing_each():
    # 64 px at 0.25 mm is 16 mm: 21 px at 0.75 mm, padded with zeros to the 32 px field of view
    out = preprocess_image(square(60) * 255, PHYSICAL, 0.25).numpy()
    assert out.shape == (32, 32, 3) and out[0, 0, 0] == 0 and out[16, 16, 0] == pytest.approx(1.0)
    batch = np.stack([square(12), square(12)])[..., None] * 255
    out = preprocess_image(batch, PHYSICAL, np.array([0.5, 1.0], np.float32)).numpy()
    sides = np.sqrt((out[..., 0] > 0.5).sum(axis=(1, 2)))
    np.testing.assert_allclose(sides, [8, 16], atol=1)
    with pytest.raises(ValueError, match="needs its own pixel spacing"):
        preprocess_image(batch, PHYSICAL)


def test_physical_scale_needs_a_field_of_view_and_a_positive_spacing():
    with pytest.raises(ConfigError, match="needs a center_crop"):
        PreprocessConfig(pixel_spacing_mm=0.75)
    with pytest.raises(ConfigError, match=r"pixel_spacing_mm: -1.0 must be > 0"):
        PreprocessConfig(pixel_spacing_mm=-1.0, center_crop=32)


def test_spacings_are_checked_per_row():
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "pixel_spacing_mm": [0.7, 0.0]})
    with pytest.raises(DataError, match=r"row 1: pixel_spacing_mm 0.0 is not a positive"):
        sample_spacings(frame, PHYSICAL)
    with pytest.raises(DataError, match="no 'pixel_spacing_mm' column"):
        sample_spacings(frame.drop(columns="pixel_spacing_mm"), PHYSICAL)
    assert not sample_spacings(frame, PreprocessConfig()).any()  # unused: not read at all


def test_neighbours_are_the_same_nodules_adjacent_slices():
    frame = pd.DataFrame(
        {
            "image": ["a1", "a2", "a3", "b5", "b6"],
            "nodule_id": ["A", "A", "A", "B", "B"],
            "slice_index": [1, 2, 3, 5, 6],
        }
    )
    out = add_neighbour_columns(frame, "image")
    assert out["image_below"].tolist() == ["a1", "a1", "a2", "b5", "b5"]  # a missing one repeats the slice
    assert out["image_above"].tolist() == ["a2", "a3", "a3", "b6", "b6"]
    with pytest.raises(DataError, match=r"need the columns \['nodule_id', 'slice_index'\]; missing"):
        add_neighbour_columns(frame.drop(columns="slice_index"), "image", "m.csv")
    with pytest.raises(DataError, match="row 1: slice_index 'x' is not an integer"):
        add_neighbour_columns(frame.assign(slice_index=[1, "x", 3, 5, 6]), "image")


def write_crops(folder, n_patients: int = 12) -> str:
    """A lidc-crops-style manifest: three slices per nodule, a bright disc whose size says the class."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        malignant = p % 2 == 1
        spacing = 0.5 + 0.1 * (p % 4)
        for s in range(3):
            image = rng.integers(0, 30, (48, 48)).astype(np.uint8)
            radius = (10 if malignant else 4) + s
            cv2.circle(image, (24, 24), radius, 200, -1)
            mask = np.zeros((48, 48), np.uint8)
            cv2.circle(mask, (24, 24), radius, 255, -1)
            name = f"P{p}_s{s}.png"
            cv2.imwrite(str(folder / name), image)
            cv2.imwrite(str(folder / f"mask_{name}"), mask)
            rows.append(
                {
                    "image": name,
                    "mask": f"mask_{name}",
                    "patient_id": f"P{p}",
                    "nodule_id": f"P{p}/n0",
                    "slice_index": s,
                    "malignancy": 5 if malignant else 1,
                    "diameter_mm": 2 * radius * spacing,
                    "pixel_spacing_mm": spacing,
                }
            )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_stacked_channels_are_below_slice_above(tmp_path):
    manifest = pd.read_csv(write_crops(tmp_path, 2))
    manifest["image"] = [str(tmp_path / i) for i in manifest["image"]]
    manifest["target"] = (manifest["malignancy"] > 3).astype(int)
    frame = add_neighbour_columns(manifest, "image")
    pre = dataclasses_replace(PHYSICAL, sigmoid_gain=None)
    ds = classification_dataset(
        frame, pre, num_classes=2, training=False, batch_size=8, neighbour_columns=NEIGHBOUR_COLUMNS
    )
    images = next(iter(ds))[0].numpy()
    assert images.shape == (6, 32, 32, 3)
    # row 1 is slice 1: its channels are slices 0, 1, 2 of the same nodule, each preprocessed on its own
    for channel, row in enumerate((0, 1, 2)):
        alone = preprocess_image(cv2.imread(frame["image"][row], 0), pre, frame["pixel_spacing_mm"][row])
        np.testing.assert_allclose(images[1, ..., channel], alone.numpy()[..., 0], atol=1e-5)
    np.testing.assert_allclose(images[0, ..., 0], images[0, ..., 1])  # slice 0 has nothing below
    with pytest.raises(ConfigError, match="set channels to 3"):
        classification_dataset(
            frame,
            dataclasses_replace(pre, channels=1),
            num_classes=2,
            training=False,
            neighbour_columns=NEIGHBOUR_COLUMNS,
        )


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_a_physical_scale_2_5d_run_trains_exports_and_evaluates(tmp_path, capsys):
    from lungnet.runs import load_run_config
    from lungnet.serving.export import export_run

    manifest = write_crops(tmp_path)
    run_dir = tmp_path / "run"
    overrides = [
        "data.neighbour_slices=true",
        "data.preprocess.pixel_spacing_mm=0.75",
        "data.preprocess.center_crop=32",
        "data.preprocess.image_size=32",
        "data.split=[0.5,0.25,0.25]",
        "evaluation.explain=false",
    ]
    args = ["train", "binary_nodule", "--profile", "smoke", "--data", manifest, "--out", str(run_dir)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    capsys.readouterr()
    [run] = [p for p in run_dir.iterdir() if p.is_dir()] if not (run_dir / "run.json").exists() else [run_dir]
    config = load_run_config(run)
    assert config.data.neighbour_slices and config.data.preprocess.pixel_spacing_mm == 0.75

    served = tf.saved_model.load(str(export_run(run, out=tmp_path / "saved")))
    serve = served.signatures["serving_default"]
    rng = np.random.default_rng(1)
    stacks = rng.uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    spacing = np.array([0.5, 0.8], np.float32)
    out = serve(images=tf.constant(stacks), pixel_spacing_mm=tf.constant(spacing))["probabilities"].numpy()
    grey = dataclasses_replace(config.data.preprocess, channels=1)
    x = tf.concat([preprocess_image(stacks[..., c : c + 1], grey, spacing) for c in range(3)], -1)
    model = keras.models.load_model(run / "models" / "custom_cnn.keras")
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(out, np.concatenate([1 - p, p], axis=1), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one spacing"):
        serve(images=tf.constant(stacks), pixel_spacing_mm=tf.constant([0.5], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be > 0 mm"):
        serve(images=tf.constant(stacks), pixel_spacing_mm=tf.constant([0.5, 0.0], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected \[batch, height, width, 3\]"):
        serve(images=tf.constant(stacks[..., 0]), pixel_spacing_mm=tf.constant(spacing))
    assert "pixel_spacing_mm" in json.loads((tmp_path / "saved" / "lungnet.json").read_text())["input"]

    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", manifest, "--out", str(out_dir)]) == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["n"] == 36 and metrics["levels"]["nodule"]["n"] == 12
    capsys.readouterr()
