"""How well do a fold ensemble's out-of-fold predictions calibrate the averaged ensemble?

Usage: .venv/bin/python docs/real-ct/analysis/fold_ensemble_calibration.py RUN [MODEL]

For a finished run whose model (default: the selected one) is an `ensemble_validation: patient-folds`
ensemble. Its out-of-fold predictions are read from ``out_of_fold_<model>.csv``, or rebuilt for runs made
before that file existed (the run's folds, each member predicting its own fold). Printed, in this order:
  0. out of fold, the ensemble's members against the readers' diameter on the same slices: AUC (macro
     one-vs-rest for 5 classes) and macro F1 at argmax, with the size-only logistic regression cross-fitted
     over the same patient folds (fitted on the other four, applied to each), and the difference with its
     95 % patient-bootstrap interval at slice, nodule and patient level (slightly flattering the members: each
     member's epoch was chosen on its own fold), as new runs write it to ``metrics.json``
     (``out_of_fold_against_size_only``, the same function);
  1. on the out-of-fold predictions only (what a decision may use): ECE uncalibrated, with the calibration
     fitted on all of them (as the run does), and cross-fitted over members (fitted on the other folds'
     predictions, applied to each fold's);
  2. without labels, on the test images: how much less sure the members' mean is than one member (mean
     distance of the malignant probability from 0.5), which a calibration fitted on single members cannot
     see;
  3. after those, the test split: ECE of the mean uncalibrated, with the run's calibration applied to the
     mean, and the mean of the members each calibrated, with 95 % patient-bootstrap intervals and the
     direction of the error (mean confidence minus accuracy: positive is over-confident).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from lungnet.data.dataset import classification_pipeline, prepare_data
from lungnet.data.splits import patient_folds
from lungnet.evaluation import expected_calibration_error, fit_calibration
from lungnet.evaluation.calibration import ece_interval
from lungnet.evaluation.paired import describe_levels
from lungnet.inference import predict_proba
from lungnet.models.ensemble import ensemble_members
from lungnet.runs import load_run_config
from lungnet.runs.artifacts import load_run_model
from lungnet.studies.classification import HeldOut, out_of_fold_against_size_only


def out_of_fold(run: Path, name: str, data, members) -> HeldOut:
    """The pooled training and validation slices with their out-of-fold probabilities and folds."""
    pool = data.manifest[data.manifest["split"].isin(["train", "val"])].reset_index(drop=True)
    saved = run / f"out_of_fold_{name}.csv"
    if saved.is_file():
        return HeldOut.from_table(pool, pd.read_csv(saved), data.class_names)
    folds = patient_folds(pool, len(members), seed=data.config.split_seed)
    probs = np.zeros((len(pool), len(data.class_names)))
    for i, member in enumerate(members):
        frame = pool[folds == i].reset_index(drop=True)
        ds = classification_pipeline(frame, data.config, len(data.class_names))
        probs[folds == i] = predict_proba(member, ds)
    return HeldOut(pool, probs, folds)


def overconfidence(y, probs) -> float:
    return float(probs.max(axis=1).mean() - (probs.argmax(axis=1) == y).mean())


def main(run: Path, name: str | None) -> None:
    config = load_run_config(run)
    data = prepare_data(config.data, progress=False)
    model, name = load_run_model(run, name)
    members = ensemble_members(model)
    held = out_of_fold(run, name, data, members)
    probs, y, fold, pool = held.probs, held.frame["target"].to_numpy(), held.fold, held.frame
    print(f"{name}: {len(members)} members, {len(y)} out-of-fold slices")
    print("0. out of fold, the members (a) against size-only cross-fitted over the same folds (b):")
    for line in describe_levels(out_of_fold_against_size_only(data, held)):
        print(f"   {line}")
    if probs.shape[1] == 2:  # the diameter needs no fit to be ranked
        test = data.split("test")
        print(
            f"   the readers' diameter's AUC on the same slices {roc_auc_score(y, pool['diameter_mm']):.3f}, "
            f"on test {roc_auc_score(test['target'], test['diameter_mm']):.3f}"
        )

    fitted = fit_calibration(probs, y, y, "out-of-fold")
    crossed = np.zeros_like(probs)
    for i in range(len(members)):
        rest = fold != i
        crossed[~rest] = fit_calibration(probs[rest], y[rest], y[rest]).apply(probs[~rest])
    print("1. out-of-fold ECE (over-confidence):")
    for label, p in (
        ("uncalibrated", probs),
        (f"calibrated on all of them ({fitted.describe()})", fitted.apply(probs)),
        ("calibrated on the other folds'", crossed),
    ):
        print(f"   {label}: {expected_calibration_error(y, p):.3f} ({overconfidence(y, p):+.3f})")

    test = data.split("test")
    ds = classification_pipeline(test, data.config, len(data.class_names))
    member_probs = np.stack([predict_proba(m, ds) for m in members])
    mean = member_probs.mean(axis=0)
    print("2. test images, no labels: mean |p(malignant) - 0.5|")
    print(f"   one member (average over members): {np.abs(member_probs[..., -1] - 0.5).mean():.3f}")
    print(f"   the members' mean:                  {np.abs(mean[:, -1] - 0.5).mean():.3f}")

    y_test, patients = test["target"].to_numpy(), test["patient_id"].to_numpy()
    print("3. test ECE (95 % patient-bootstrap interval; over-confidence):")
    for label, p in (
        ("the mean, uncalibrated", mean),
        ("the run's calibration applied to the mean", fitted.apply(mean)),
        ("the mean of the members each calibrated", np.mean([fitted.apply(m) for m in member_probs], 0)),
    ):
        low, high = ece_interval(y_test, p, patients)
        ece = expected_calibration_error(y_test, p)
        print(f"   {label}: {ece:.3f} ({low:.3f} .. {high:.3f}; {overconfidence(y_test, p):+.3f})")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else None)
