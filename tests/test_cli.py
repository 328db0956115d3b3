"""The `lungnet` command: data info and build on the phantom and on a manifest, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lungnet.cli import main


def _write_manifest(tmp_path, n=24):
    import cv2

    rows = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), np.full((40, 40), 10 * (i % 20), np.uint8))
        rows.append({"image": path.name, "patient_id": f"P{i // 2}", "malignancy": 1 + i % 5})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def test_data_info_json_on_a_manifest(tmp_path, capsys):
    csv = _write_manifest(tmp_path)
    assert main(["data", "info", str(csv), "--json", "--grouping", "5class"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_samples"] == 24 and info["n_patients"] == 12
    assert info["label_counts"] == {"1": 5, "2": 5, "3": 5, "4": 5, "5": 4}
    assert info["images"]["image"]["sizes"] == {"40x40": 24}
    assert info["images"]["image"]["intensity_max"] == 190


def test_data_info_tables_on_the_phantom(tiny_phantom_config, capsys):
    args = [
        "data",
        "info",
        "lidc-phantom",
        "--cache-dir",
        tiny_phantom_config.cache_dir,
        "--max-patients",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "phantom rendered from real LIDC-IDRI annotations" in out
    assert "benign" in out and "malignant" in out and "512x512" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lungnet: error:") and "missing.csv" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("image,patient\nx.png,1\n")
    assert main(["data", "info", str(bad)]) == 2
    assert "patient_id" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "lungnet.cli", "data", "build", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--exclude-patients" in out and "lidc-phantom" in out


@pytest.mark.realdata
def test_data_info_on_the_real_crops(lidc_crops_dir, capsys):
    assert (
        main(
            [
                "data",
                "info",
                str(lidc_crops_dir / "manifest.csv"),
                "--json",
                "--grouping",
                "exclude-indeterminate",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["label_counts"] == {"benign": 2004, "malignant": 983}
    assert info["n_patients"] <= 545
