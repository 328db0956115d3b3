"""Which data should calibrate the measured-nodule classifier? Validation alone, or cross-fitted training too.

Usage: .venv/bin/python docs/real-ct/analysis/measured_calibration_data.py RUN

For a finished `cpu-real-measured` run: its segmenter outlines every slice, the run's features are computed,
and the logistic regression is refitted on the training split (as the run did). Out-of-fold probabilities on
the training split come from patient-grouped 5-fold cross-fitting. Calibrations compared (temperature, with
or without the training prior, whichever gives the lower NLL on the calibration data):
  - validation: the run's own (about 70 patients);
  - cross-fitted training: held-out predictions of about 380 patients, judged on validation, which it never
    saw (the decision rule: no test number is read to choose);
  - cross-fitted training + validation.
The decision is made on the training patients: each fold's held-out predictions, calibrated by the other
folds' or by validation's calibration, or not at all. Test ECEs of each are printed after the decision's numbers, with 95 % patient-bootstrap intervals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold

from lungnet.data.dataset import prepare_data
from lungnet.evaluation import calibration_summary, expected_calibration_error, fit_calibration
from lungnet.evaluation.measured_nodule import (
    CALIBRATION_FOLDS,
    cross_fitted_probs,
    fit_measured,
)
from lungnet.runs import load_run_config
from lungnet.studies.classification import measured_split_features


def main(run: Path) -> None:
    config = load_run_config(run)
    data = prepare_data(config.data, progress=False)
    frames, feats, _ = measured_split_features(
        data, config.data.view, run / "segmenter", config.measured_nodule.tta, progress=False
    )
    y = {s: f["target"].to_numpy() for s, f in frames.items()}
    n = len(data.class_names)
    C = config.measured_nodule.C
    fitted = fit_measured(feats["train"], y["train"], C)
    probs = {s: fitted.predict(feats[s], n) for s in ("val", "test")}
    groups = frames["train"]["patient_id"].astype(str).to_numpy()
    oof = cross_fitted_probs(feats["train"], y["train"], groups, C, n)  # the folds below
    calibrations = {
        "validation": fit_calibration(probs["val"], y["val"], y["train"]),
        "cross-fitted training": fit_calibration(oof, y["train"], y["train"]),
        "cross-fitted training + validation": fit_calibration(
            np.concatenate([oof, probs["val"]]), np.concatenate([y["train"], y["val"]]), y["train"]
        ),
    }
    print(f"{run} (grouping {config.data.grouping}); slices train/val/test", [len(y[s]) for s in y])
    print(f"  validation ECE, uncalibrated: {expected_calibration_error(y['val'], probs['val']):.3f}")
    held_out = calibrations["cross-fitted training"]
    print(
        f"  validation ECE after the cross-fitted training calibration ({held_out.describe()}), never fitted on"
        f" validation: {expected_calibration_error(y['val'], held_out.apply(probs['val'])):.3f}"
    )
    # the decision, on training patients only: each fold's held-out predictions calibrated by the other
    # folds' (about 300 patients), by validation's (about 70), or not at all, pooled over the folds
    pooled = {"uncalibrated": oof, "validation": calibrations["validation"].apply(oof)}
    pooled["the other folds"] = np.zeros_like(oof)
    for rest, held in GroupKFold(CALIBRATION_FOLDS).split(feats["train"], y["train"], groups):
        others = fit_calibration(oof[rest], y["train"][rest], y["train"])
        pooled["the other folds"][held] = others.apply(oof[held])
    for name, calibrated in pooled.items():
        ece = expected_calibration_error(y["train"], calibrated)
        print(f"  training patients' held-out predictions, calibrated on {name}: ECE {ece:.3f}")
    patients = frames["test"]["patient_id"].to_numpy()
    for name, calibration in calibrations.items():
        s = calibration_summary(calibration, y["test"], probs["test"], patients=patients)
        (lb, hb), (la, ha) = s["ece_before_ci95"], s["ece_after_ci95"]
        print(
            f"  test, calibrated on {name} ({calibration.describe()}): ECE {s['ece_before']:.3f}"
            f" ({lb:.3f} .. {hb:.3f}) -> {s['ece_after']:.3f} ({la:.3f} .. {ha:.3f})"
        )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(Path(arg))
