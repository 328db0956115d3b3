"""Does a fold ensemble's calibration, fitted on single members' out-of-fold predictions, fit the average of
five members? Checked on held-out validation patients, never on the test split.

Usage: .venv/bin/python docs/real-ct/analysis/ensemble_calibration.py RUN

RUN is a finished `cpu-real-training-folds` run: its members trained on folds of the training patients only,
so the validation split is outside every member, and test-time predictions there are the members' mean, as
on the test split. Each member's kept weights predict its own fold (the out-of-fold rows) and the validation
split, without test-time augmentation. Calibrations (temperature, with or without the training prior,
`lungnet.evaluation.fit_calibration`), scored by the ECE of the validation split's members' mean, with 95 %
patient-bootstrap intervals:
  - none;
  - pooled: one calibration fitted on every member's out-of-fold rows, applied to the members' mean (what a
    `cpu-real-folds` run does);
  - per member: member i's calibration fitted on its own fold, applied to its own predictions, then averaged;
  - pooled, applied to each member before averaging;
  - validation itself, cross-fitted over 5 patient folds of it (a reference: what the mean's own held-out
    predictions would give).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from lungnet.data.dataset import classification_pipeline, image_column, prepare_data
from lungnet.evaluation import expected_calibration_error, fit_calibration
from lungnet.evaluation.calibration import as_probs, ece_interval
from lungnet.models import build_classifier
from lungnet.runs import load_run_config
from lungnet.studies.classification import input_shape


def member_probs(model, frame: pd.DataFrame, config, n_classes: int) -> np.ndarray:
    images = classification_pipeline(frame, config.data, n_classes).map(lambda x, y: x)
    out = model.predict(images, verbose=0)
    return as_probs(np.asarray(out["probabilities"] if isinstance(out, dict) else out))


def main(run: Path) -> None:
    config = load_run_config(run)
    [spec] = [m for m in config.models if m.ensemble_validation == "training-folds"]
    data = prepare_data(config.data, progress=False)
    n = len(data.class_names)
    train, val = data.split("train"), data.split("val").reset_index(drop=True)
    column = image_column(data.manifest, config.data.view)
    folds = pd.read_csv(run / "out_of_fold_custom_cnn.csv").set_index("image")["member"]
    train = train.assign(member=folds.loc[train[column].astype(str)].to_numpy())
    y_train, y_val = train["target"].to_numpy(), val["target"].to_numpy()
    members = sorted(train["member"].unique())
    oof, on_val = [], []
    for i in members:
        model = build_classifier(spec.model, input_shape(config), n)
        model.load_weights(run / "checkpoints" / f"{spec.name}_member{i}-final.weights.h5")
        rows = train["member"].to_numpy() == i
        oof.append((rows, member_probs(model, train[rows], config, n)))
        on_val.append(member_probs(model, val, config, n))
    held = np.zeros((len(train), n))
    for rows, probs in oof:
        held[rows] = probs
    mean = np.mean(on_val, axis=0)
    pooled = fit_calibration(held, y_train, y_train, "out of fold")
    per_member = [
        fit_calibration(p, y_train[r], y_train, f"fold {i}") for i, (r, p) in zip(members, oof, strict=True)
    ]
    cross_fitted = np.zeros_like(mean)
    patients = val["patient_id"].astype(str).to_numpy()
    for fit, out in GroupKFold(5).split(mean, y_val, patients):
        cross_fitted[out] = fit_calibration(mean[fit], y_val[fit], y_train).apply(mean[out])
    variants = {
        "none": mean,
        f"pooled ({pooled.describe()})": pooled.apply(mean),
        "per member, then averaged": np.mean(
            [c.apply(p) for c, p in zip(per_member, on_val, strict=True)], axis=0
        ),
        "pooled, applied to each member, then averaged": np.mean([pooled.apply(p) for p in on_val], axis=0),
        "validation, cross-fitted (reference)": cross_fitted,
    }
    print(
        f"{run} (grouping {config.data.grouping}): {len(train)} out-of-fold rows, {len(val)} validation rows"
    )
    print(
        f"  out-of-fold ECE of single members {expected_calibration_error(y_train, held):.3f};"
        f" validation AUC of the members' mean {roc_auc_score(y_val, mean[:, 1]):.3f} (no test-time augmentation)"
    )
    for name, probs in variants.items():
        low, high = ece_interval(y_val, probs, patients)
        ece = expected_calibration_error(y_val, probs)
        print(f"  validation members' mean, calibration {name}: ECE {ece:.3f} ({low:.3f} .. {high:.3f})")


if __name__ == "__main__":
    for arg in sys.argv[1:] or sys.exit(__doc__):
        main(Path(arg))
