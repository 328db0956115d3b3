"""`lungnet compare-runs`: runs of one split side by side, their spread over seeds, and how often a model
beat the study's simple reference; runs of different splits are refused with the setting named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.image import imread

from lungnet.cli import main
from lungnet.errors import LungnetError
from lungnet.reports.run_spread import DIAMETER, RADIOLOGISTS, RECOMMENDED, compare_runs, flat_config

AUC = {0: 0.88, 5: 0.86, 10: 0.87}  # the network's slice AUC per seed
DIAMETER_AUC = 0.87


def _levels(auc: float, f1: float) -> dict:
    return {level: {"auc": auc, "f1_macro": f1} for level in ("nodule", "patient")}


def _write_run(path, seed: int, split_seed: int = 0, n_test: int = 40, finished: bool = True):
    path.mkdir(parents=True)
    config = {
        "name": "binary_nodule",
        "task": "classification",
        "data": {"source": "lidc.csv", "grouping": "paper", "split": [0.7, 0.15, 0.15], "split_seed": split_seed,
                 "seed": seed},
        "models": [{"name": "custom_cnn", "model": {"name": "custom_cnn", "filters": [8, 16]}}],
        "training": {"seed": seed, "epochs": 3},
    }  # fmt: skip
    auc = AUC[seed]
    network = {"auc": auc, "f1": 0.7, "f1_macro": 0.8 + seed / 1000}
    metrics = {
        "selected_model": "custom_cnn",
        "n_test": n_test,
        "levels": _levels(auc - 0.01, 0.79),
        "models": {"custom_cnn": {"test": network, "val": {"f1": 0.6}, "calibration": {"ece_after": 0.05}}},
        "image_only": {
            "measured": {"auc": 0.9, "f1": 0.72, "f1_macro": 0.81, "val": {"f1": 0.65 if seed else 0.5},
                         "levels": _levels(0.9, 0.8), "calibration": {"ece_after": 0.04}},
        },  # fmt: skip
        "baselines": {"size_only": {"auc": DIAMETER_AUC, "f1": 0.7, "f1_macro": 0.79, "levels": _levels(0.87, 0.8)}},
    }  # fmt: skip
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "run.json").write_text(json.dumps({"status": "finished" if finished else "running"}))
    return path


@pytest.fixture
def three_runs(tmp_path):
    return [_write_run(tmp_path / f"seed{s}", s) for s in AUC]


def test_the_spread_of_each_model_and_metric_and_how_often_it_beat_the_diameter(three_runs, tmp_path):
    record = compare_runs(three_runs, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "spread.csv").set_index(["model", "metric"])
    row = summary.loc[("custom_cnn", "slice AUC")]
    values = np.array(list(AUC.values()))
    assert row["runs"] == 3 and row["mean"] == pytest.approx(values.mean())
    assert row["sd"] == pytest.approx(values.std(ddof=1)) and row["min"] == 0.86 and row["max"] == 0.88
    assert row["ahead_of_reference"] == "1 of 3"  # only seed 0's 0.88 is above the diameter's 0.87
    assert summary.loc[("measured", "slice AUC")]["ahead_of_reference"] == "3 of 3"
    assert summary.loc[("custom_cnn", "nodule AUC")]["runs"] == 3  # the selected network has every level
    assert summary.loc[(DIAMETER, "slice AUC")]["sd"] == 0 and pd.isna(
        summary.loc[(DIAMETER, "slice AUC")]["ahead_of_reference"]
    )
    # seed 0's validation F1 favours the network, the others' the measured classifier
    assert record["recommended"] == ["custom_cnn", "measured", "measured"]
    recommended = summary.loc[(RECOMMENDED, "slice AUC")]
    assert recommended["mean"] == pytest.approx((0.88 + 0.9 + 0.9) / 3)
    assert record["differences"] == {"data.seed": [0, 5, 10], "training.seed": [0, 5, 10]}
    per_run = pd.read_csv(tmp_path / "out" / "spread_runs.csv")
    assert set(per_run["run"]) == {str(r) for r in three_runs}
    assert json.loads((tmp_path / "out" / "spread.json").read_text())["reference"] == DIAMETER
    image = imread(tmp_path / "out" / "spread.png")
    assert image.shape[0] > 100 and image.std() > 0


def test_runs_of_different_test_rows_or_unfinished_runs_are_refused(tmp_path, three_runs):
    other_split = _write_run(tmp_path / "split1", 5, split_seed=1)
    with pytest.raises(LungnetError, match="data.split_seed"):
        compare_runs([three_runs[0], other_split], tmp_path / "out")
    smaller = _write_run(tmp_path / "smaller", 5, n_test=39)
    with pytest.raises(LungnetError, match="test splits differ in size"):
        compare_runs([three_runs[0], smaller], tmp_path / "out")
    unfinished = _write_run(tmp_path / "running", 5, finished=False)
    with pytest.raises(LungnetError, match="running"):
        compare_runs([three_runs[0], unfinished], tmp_path / "out")
    with pytest.raises(LungnetError, match="at least two"):
        compare_runs(three_runs[:1], tmp_path / "out")
    with pytest.raises(LungnetError, match="twice"):
        compare_runs([three_runs[0], three_runs[0]], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for refused runs


def test_segmentation_runs_are_compared_with_the_radiologists(tmp_path):
    runs = []
    for seed, dice in ((0, 0.86), (5, 0.80)):
        path = tmp_path / f"seg{seed}"
        path.mkdir()
        config = {"name": "attention_unet", "task": "segmentation", "data": {"seed": seed}}
        raw = {
            "dice": 0.75,
            "iou": 0.64,
            "levels": {"readers_slices": {"dice": dice}, "nodule": {"dice": 0.74}},
        }
        metrics = {
            "selected_model": "unet",
            "n_test": 10,
            "models": {"unet": {"raw": raw}},
            "reader_agreement": {"mean_dice": 0.804},
            "radiomics": {
                "models": {"radiomics SVM, consensus mask": {"auc": 0.7 + seed / 100, "f1_macro": 0.6}}
            },
        }
        (path / "config.yaml").write_text(yaml.safe_dump(config))
        (path / "metrics.json").write_text(json.dumps(metrics))
        (path / "run.json").write_text(json.dumps({"status": "finished"}))
        runs.append(path)
    record = compare_runs(runs, tmp_path / "out")
    summary = pd.DataFrame(record["summary"]).set_index(["model", "metric"])
    assert summary.loc[("unet", "Dice, readers' slices")]["ahead_of_reference"] == "1 of 2"
    assert summary.loc[("unet", "Dice, readers' slices")]["mean"] == pytest.approx(0.83)
    assert ("unet", "Dice, per patient") not in summary.index  # not recorded: left out, not zero
    assert record["reference"] == RADIOLOGISTS and record["recommended"] == ["unet", "unet"]
    assert summary.loc[(RECOMMENDED, "Dice, readers' slices")]["mean"] == pytest.approx(0.83)  # the selected
    svm = summary.loc[("malignancy: radiomics SVM, consensus mask", "slice AUC")]  # Inf-Net's SVM baselines
    assert svm["mean"] == pytest.approx(0.725) and svm["ahead_of_reference"] == ""  # no reader AUC to beat


def _write_segmentation_run(path, seed: int, attention: float, unet: float) -> Path:
    path.mkdir()
    config = {"name": "attention_unet", "task": "segmentation", "data": {"seed": seed}}
    models = {
        name: {"raw": {"dice": 0.75, "iou": 0.6, "levels": {"readers_slices": {"dice": dice}}}}
        for name, dice in (("attention_res_unet", attention), ("unet", unet))
    }
    metrics = {
        "selected_model": "unet",
        "n_test": 10,
        "models": models,
        "reader_agreement": {"mean_dice": 0.8},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "run.json").write_text(json.dumps({"status": "finished"}))
    return path


def test_a_pair_of_models_is_compared_within_each_run(tmp_path, capsys):
    scores = {0: (0.86, 0.84), 5: (0.83, 0.85), 10: (0.85, 0.84)}  # (attention, U-Net) Dice per seed
    runs = [_write_segmentation_run(tmp_path / f"seg{s}", s, *scores[s]) for s in scores]
    record = compare_runs(runs, tmp_path / "out", pairs=[("attention_res_unet", "unet")])
    pairs = pd.read_csv(tmp_path / "out" / "spread_pairs.csv").set_index("metric")
    diff = np.array([a - u for a, u in scores.values()])
    row = pairs.loc["Dice, readers' slices"]
    assert row["mean"] == pytest.approx(diff.mean()) and row["sd"] == pytest.approx(diff.std(ddof=1))
    assert row["min"] == pytest.approx(-0.02) and row["max"] == pytest.approx(0.02)
    assert row["first_ahead"] == "2 of 3" and row["runs"] == 3
    assert (
        pairs.loc["Dice, all slices"]["mean"] == pytest.approx(0)
        and pairs.loc["Dice, all slices"]["first_ahead"] == "0 of 3"
    )  # level is not ahead
    assert {r["metric"] for r in record["pairs"]} == set(pairs.index)
    argv = [
        "compare-runs",
        *map(str, runs),
        "--out",
        str(tmp_path / "cli"),
        "--pair",
        "attention_res_unet",
        "unet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "attention_res_unet − unet, Dice, readers' slices: +0.003 ± 0.021 (-0.020 .. +0.020)" in out
    assert "ahead in 2/3 runs" in out
    with pytest.raises(LungnetError, match="no model 'unet_plus'.*attention_res_unet, unet"):
        compare_runs(runs, tmp_path / "bad", pairs=[("unet_plus", "unet")])
    with pytest.raises(LungnetError, match="given twice"):
        compare_runs(runs, tmp_path / "bad", pairs=[("unet", "unet")])
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_the_command_prints_the_spread_and_names_bad_runs(three_runs, tmp_path, capsys):
    assert main(["compare-runs", *map(str, three_runs), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "differ in data.seed: 0, 5, 10" in out
    row = next(line for line in out.splitlines() if line.startswith("slice AUC"))
    assert row.split()[2:7] == ["0.870", "±", "0.010", "[1/3]", "0.900"]  # custom_cnn, then measured
    assert (tmp_path / "cli" / "spread.png").is_file()
    assert (
        main(["compare-runs", str(three_runs[0]), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert "nowhere: run folder not found" in err and "Traceback" not in err


def test_the_config_is_flattened_with_list_positions(three_runs):
    flat = flat_config(three_runs[0])
    assert flat["data.split_seed"] == 0 and flat["data.split"] == [0.7, 0.15, 0.15]
    assert flat["models[0].model.filters"] == [8, 16] and flat["models[0].name"] == "custom_cnn"


def seed_copies(run_dir, parent, seeds=(1, 2)) -> list:
    """Copies of a finished run whose configs differ in ``data.seed`` only (same scores: spread 0)."""
    copies = []
    for seed in seeds:
        copy = parent / f"seed{seed}"
        copy.mkdir(parents=True)
        for name in ("config.yaml", "metrics.json", "run.json", "report.html"):  # a run is finished by either
            if (run_dir / name).is_file():
                (copy / name).write_bytes((run_dir / name).read_bytes())
        config = yaml.safe_load((copy / "config.yaml").read_text())
        config["data"]["seed"] = seed
        (copy / "config.yaml").write_text(yaml.safe_dump(config))
        copies.append(copy)
    return copies


def check_spread_of_copies(run_dir, tmp_path, metric: str) -> pd.DataFrame:
    """compare-runs on two seed copies of a real run: every recorded score is read, with no spread."""
    record = compare_runs(seed_copies(run_dir, tmp_path), tmp_path / "spread")
    summary = pd.DataFrame(record["summary"])
    assert record["differences"] == {"data.seed": [1, 2]}
    assert (summary["sd"] == 0).all() and (summary["runs"] == 2).all()
    assert metric in set(summary["metric"])
    return summary


STUB = """#!/bin/bash
echo "$@" >> "{log}"
if [ "$1" = reproduce ]; then
  out="${{@: -1}}"; mkdir -p "$out"; echo '{{"status": "finished"}}' > "$out/run.json"
fi
"""


def test_make_seed_spread_runs_each_seed_once_then_compares(tmp_path):
    """The Makefile's sweep, with a stand-in `lungnet` that records its calls: each seed's run gets --seed and
    its own folder, a finished seed is kept when the sweep is run again, and compare-runs reads them all."""
    root = Path(__file__).resolve().parents[1]
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "lungnet").write_text(STUB.format(log=log))
    (venv / "bin" / "lungnet").chmod(0o755)
    (venv / ".installed").touch()  # newer than the requirements: no set-up
    spread = tmp_path / "spread"

    def sweep(seeds: str) -> str:
        args = ["make", "-s", "-C", str(root), "seed-spread", f"VENV={venv}", f"SPREAD={spread}"]
        args += ["STUDY=attention-unet", "PROFILE=smoke", f"SEEDS={seeds}", "SET=training.epochs=1"]
        args += ["PAIR=attention_res_unet unet"]
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        return done.stdout

    sweep("1 2")
    assert log.read_text().splitlines() == [
        f"reproduce attention-unet --data lidc-phantom --profile smoke --set training.epochs=1 --seed 1 --out {spread}/seed-1",
        f"reproduce attention-unet --data lidc-phantom --profile smoke --set training.epochs=1 --seed 2 --out {spread}/seed-2",
        f"compare-runs {spread}/seed-1 {spread}/seed-2 --out {spread} --pair attention_res_unet unet",
    ]
    log.unlink()
    assert "seed 1: finished before, kept" in sweep("1 2 3")
    calls = log.read_text().splitlines()
    assert [c.split(" --out ")[0].split()[-1] for c in calls[:-1]] == ["3"]  # only seed 3 trained
    assert calls[-1] == (
        f"compare-runs {spread}/seed-1 {spread}/seed-2 {spread}/seed-3 --out {spread} --pair attention_res_unet unet"
    )
