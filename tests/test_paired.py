"""The paired patient bootstrap behind `lungnet compare-models`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lungnet.cli import main
from lungnet.errors import DataError
from lungnet.evaluation.aggregation import level_metrics
from lungnet.evaluation.paired import (
    describe_levels,
    paired_bootstrap,
    paired_bootstrap_classification,
)


def _predictions(shift: float, noise: float, n_patients: int = 30, per_patient: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            base = rng.uniform(0.3, 0.9)
            image = f"P{p}_s{k}.png"
            rows.append({"image": image, "patient_id": f"P{p}", "model": "b", "dice": base})
            rows.append(
                {
                    "image": image,
                    "patient_id": f"P{p}",
                    "model": "a",
                    "dice": base + shift + rng.normal(0, noise),
                }
            )
    return pd.DataFrame(rows)


def test_a_constant_gain_is_found_exactly():
    result = paired_bootstrap(_predictions(shift=0.1, noise=0.0), "a", "b")
    assert result["mean_difference"] == pytest.approx(0.1)
    assert result["ci95"] == pytest.approx([0.1, 0.1])
    assert result["n_patients"] == 30 and result["n_images"] == 120
    assert result["share_of_resamples_a_better"] == 1.0


def test_pure_noise_gives_an_interval_around_zero_and_the_order_flips_the_sign():
    table = _predictions(shift=0.0, noise=0.05)
    forward = paired_bootstrap(table, "a", "b", seed=1)
    low, high = forward["ci95"]
    assert low < 0 < high
    backward = paired_bootstrap(table, "b", "a", seed=1)
    assert backward["mean_difference"] == pytest.approx(-forward["mean_difference"])


def test_patients_not_images_are_resampled():
    # one patient carries the whole gain: resampling patients makes the interval wide, not tight
    table = _predictions(shift=0.0, noise=0.0, n_patients=20)
    table.loc[(table["model"] == "a") & (table["patient_id"] == "P0"), "dice"] += 0.5
    low, high = paired_bootstrap(table, "a", "b")["ci95"]
    assert low == pytest.approx(0.0) and high > 0.05


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ("a", "c", {}, r"no model 'c'; the predictions hold \['a', 'b'\]"),
        ("a", "a", {}, "against itself"),
        ("a", "b", {"metric": "hd95"}, "no column 'hd95'"),
        ("a", "b", {"samples": 10}, "samples 10"),
    ],
)
def test_bad_requests_are_named(a, b, kwargs, message):
    with pytest.raises(DataError, match=message):
        paired_bootstrap(_predictions(0.1, 0.0, n_patients=3), a, b, **kwargs)


def test_the_command_reads_a_run_and_writes_json(tmp_path, capsys):
    _predictions(shift=0.1, noise=0.0).to_csv(tmp_path / "predictions.csv", index=False)
    out = tmp_path / "paired.json"
    assert main(["compare-models", str(tmp_path), "a", "b", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "a - b on all test images: mean dice difference +0.1000" in printed
    assert printed.rstrip().endswith("a difference")
    assert json.loads(out.read_text())["mean_difference"] == pytest.approx(0.1)
    assert main(["compare-models", str(tmp_path / "nowhere"), "a", "b"]) == 2
    assert "predictions.csv: not found" in capsys.readouterr().err


def test_the_command_compares_on_the_readers_slices_alone(tmp_path, capsys):
    table = _predictions(shift=0.0, noise=0.0)
    table["readers_slice"] = table["image"].str.endswith("_s0.png")  # one slice per patient
    table.loc[(table["model"] == "a") & table["readers_slice"], "dice"] += 0.2
    table.to_csv(tmp_path / "predictions.csv", index=False)
    out = tmp_path / "paired.json"
    assert main(["compare-models", str(tmp_path), "a", "b", "--readers-slices", "--out", str(out)]) == 0
    assert "a - b on readers' slices: mean dice difference +0.2000" in capsys.readouterr().out
    assert json.loads(out.read_text())["n_images"] == 30
    assert main(["compare-models", str(tmp_path), "a", "b"]) == 0  # all 120 images: a quarter of the gain
    assert "on all test images: mean dice difference +0.0500" in capsys.readouterr().out
    table.drop(columns="readers_slice").to_csv(tmp_path / "predictions.csv", index=False)
    assert main(["compare-models", str(tmp_path), "a", "b", "--readers-slices"]) == 2
    assert "no 'readers_slice' column" in capsys.readouterr().err


def _labelled_nodules(n_patients: int = 40, seed: int = 0):
    """Three slices per nodule, one or two nodules per patient; a's score follows the label, b's is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for n in range(1 + p % 2):
            label = int(rng.integers(0, 2))
            for _ in range(3):
                rows.append({"patient_id": f"P{p}", "nodule_id": f"P{p}/{n}", "y": label})
    frame = pd.DataFrame(rows)
    y = frame["y"].to_numpy()
    a = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.15, len(y)), 0, 1)
    b = rng.random(len(y))
    return frame, y, np.c_[1 - a, a], np.c_[1 - b, b]


def test_classification_bootstrap_finds_the_better_classifier_at_every_level():
    frame, y, a, b = _labelled_nodules()
    result = paired_bootstrap_classification(y, a, b, frame, ["benign", "malignant"], samples=200)
    levels = (("slice", len(frame)), ("nodule", frame["nodule_id"].nunique()), ("patient", 40))
    for level, n in levels:
        assert result[level]["n"] == n and result[level]["n_patients"] == 40
        auc = result[level]["auc"]
        assert auc["a"] > 0.9 and abs(auc["b"] - 0.5) < 0.15
        assert auc["difference"] == pytest.approx(auc["a"] - auc["b"])
        assert 0 < auc["ci95"][0] <= auc["difference"] <= auc["ci95"][1]
        assert auc["share_of_resamples_a_better"] == 1.0
        assert result[level]["f1_macro"]["ci95"][0] > 0
    # the patient level is the one the run reports: a patient's highest nodule probability of malignancy
    for probs, side in ((a, "a"), (b, "b")):
        patient = level_metrics(y, probs, frame, ["benign", "malignant"])["patient"]
        assert result["patient"]["auc"][side] == pytest.approx(patient["auc"])
        assert result["patient"]["f1_macro"][side] == pytest.approx(patient["f1_macro"])
    lines = describe_levels(result)  # what the analysis scripts print
    assert [line.split(" ")[0] for line in lines] == ["slice", "nodule", "patient"]
    assert f"{result['patient']['auc']['difference']:+.3f}" in lines[2]
    swapped = paired_bootstrap_classification(y, b, a, frame, ["benign", "malignant"], samples=200)
    assert swapped["nodule"]["auc"]["difference"] == pytest.approx(-result["nodule"]["auc"]["difference"])
    assert swapped["nodule"]["auc"]["ci95"][1] < 0


def test_classification_bootstrap_of_a_classifier_against_itself_is_zero():
    frame, y, a, _ = _labelled_nodules(seed=1)
    result = paired_bootstrap_classification(y, a, a, frame, ["benign", "malignant"], samples=100)
    assert result["slice"]["auc"]["ci95"] == [0.0, 0.0]
    assert result["nodule"]["f1_macro"]["difference"] == 0.0


def test_classification_bootstrap_checks_its_input():
    frame, y, a, b = _labelled_nodules()
    with pytest.raises(DataError, match="probabilities"):
        paired_bootstrap_classification(y[:-1], a, b, frame, ["benign", "malignant"])
    with pytest.raises(DataError, match="samples"):
        paired_bootstrap_classification(y, a, b, frame, ["benign", "malignant"], samples=10)


def test_classification_bootstrap_reports_an_undefined_auc_without_an_interval():
    frame, y, a, b = _labelled_nodules()
    only_benign = np.zeros_like(y)  # AUC needs both classes; macro F1 is still defined
    result = paired_bootstrap_classification(only_benign, a, b, frame, ["benign", "malignant"], samples=100)
    auc = result["slice"]["auc"]
    assert auc["difference"] is None and auc["ci95"] is None and auc["valid_resamples"] == 0
    assert result["slice"]["f1_macro"]["ci95"] is not None
