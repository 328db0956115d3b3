"""A finished fold-ensemble run's rows against the diameter on every training and validation patient.

Usage: .venv/bin/python docs/real-ct/analysis/image_only_out_of_fold.py RUN

For a run of profile `cpu-real-folds` with the measured-nodule classifier on. Runs made since commit 67dd3a1
write these records to ``metrics.json`` (``out_of_fold_against_size_only`` under the fold ensemble and under
each image-only row); this script computes the same with the same functions for runs made before. It
predicts the nodule masks of the training and validation slices again with the run's own segmenter (a few
minutes on a CPU), rebuilds the measured classifier's held-out predictions (cross-fitted on the training
patients, fitted on the training split for validation) and prints, for the fold ensemble's members, the
measured classifier and their mean, AUC and macro F1 against the size-only regression cross-fitted over the
fold ensemble's patient folds, with 95 % patient-bootstrap intervals, at slice, nodule and patient level.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lungnet.data.dataset import prepare_data
from lungnet.evaluation.measured_nodule import load_fitted
from lungnet.evaluation.paired import describe_levels
from lungnet.runs import load_run_config
from lungnet.studies.classification import (
    HeldOut,
    held_out_against_size_only,
    mean_calibration_data,
    measured_calibration_data,
    measured_split_features,
    out_of_fold_against_size_only,
)


def main(run: Path) -> None:
    config = load_run_config(run)
    data = prepare_data(config.data, progress=False)
    name = next(s.name for s in config.models if s.ensemble_validation == "patient-folds")
    pool = data.manifest[data.manifest["split"].isin(["train", "val"])].reset_index(drop=True)
    network = HeldOut.from_table(pool, pd.read_csv(run / f"out_of_fold_{name}.csv"), data.class_names)

    settings = config.measured_nodule
    frames, features, _ = measured_split_features(
        data, config.data.view, run / "segmenter", settings.tta, splits=("train", "val")
    )
    y_val = frames["val"]["target"].to_numpy()
    val_probs = load_fitted(run).predict(features["val"], len(data.class_names))
    measured = measured_calibration_data(settings, features["train"], frames["train"], y_val, val_probs)
    rows = {
        f"{name} (members, out of fold)": out_of_fold_against_size_only(data, network),
        "measured_nodule (held out)": held_out_against_size_only(data, measured, network),
        f"mean of measured_nodule and {name}": held_out_against_size_only(
            data, mean_calibration_data(measured, network), network
        ),
    }
    print(f"{run}: {pool['patient_id'].nunique()} pooled patients, {len(pool)} slices")
    for row, paired in rows.items():
        print(f"{row}: {paired['predictions']}")
        for line in describe_levels(paired):
            print(f"   {line}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
