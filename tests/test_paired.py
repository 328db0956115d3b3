"""The paired patient bootstrap behind `lungnet compare-models`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lungnet.cli import main
from lungnet.errors import DataError
from lungnet.evaluation.paired import paired_bootstrap


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
    assert "a - b: mean dice difference +0.1000" in printed and printed.rstrip().endswith("a difference")
    assert json.loads(out.read_text())["mean_difference"] == pytest.approx(0.1)
    assert main(["compare-models", str(tmp_path / "nowhere"), "a", "b"]) == 2
    assert "predictions.csv: not found" in capsys.readouterr().err
