"""Two patient-fold runs of the same split compared, out of fold first, then on test; each CNN ensemble also
as the mean with a measured-nodule classifier.

Usage: .venv/bin/python docs/real-ct/analysis/compare_fold_runs.py NEW BASE MEASURED_RUN

NEW and BASE are finished `cpu-real-folds` runs (the CNNs; the measured classifier may be off in them).
NEW may join several runs with the same folds by ``+`` (``RUN_A+RUN_B``): their CNNs' probabilities averaged,
one larger ensemble whose every out-of-fold row still comes from members that never saw it.
MEASURED_RUN is a run of the same split with the measured classifier (it may be BASE): its segmenter
outlines every slice again (minutes) and its classifier is refitted, so that the training and validation
rows have held-out measured probabilities (cross-fitted on training, fitted on training for validation) and
the mean of each ensemble with it can be judged on the pooled rows, as the run itself judges it. Printed:
AUC / macro F1 at 0.5 at slice, nodule and patient level; NEW - BASE with patient-bootstrap 95 % intervals,
on the pooled out-of-fold rows (the decision) and then on the test split (reported, not decided on).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.dataset import image_column, prepare_data
from lungnet.evaluation import classification_metrics
from lungnet.evaluation.aggregation import level_metrics
from lungnet.evaluation.measured_nodule import fit_measured
from lungnet.evaluation.paired import paired_bootstrap_classification
from lungnet.runs import load_run_config
from lungnet.studies.classification import measured_calibration_data, measured_split_features


def held_out_measured(config, frames: dict, features: dict):
    """``(fitted, probs)``: the measured classifier fitted on training as the run fits it, and its malignancy
    probabilities of the training rows (cross-fitted over patient folds), then the validation rows (from
    that fit): the held-out rows the run calibrates it on."""
    fitted = fit_measured(features["train"], frames["train"]["target"], config.measured_nodule.C)
    val = fitted.predict(features["val"], 2)
    y_val = frames["val"]["target"].to_numpy()
    held = measured_calibration_data(config.measured_nodule, features["train"], frames["train"], y_val, val)
    if held is None:
        raise SystemExit("the run's measured classifier is not calibrated on cross-fitted training rows")
    return fitted, held[0][:, 1]


def two_columns(p):
    return np.c_[1 - p, p]


def scores(y, p, frame, names) -> str:
    probs = two_columns(p)
    levels = {"slice": classification_metrics(y, probs, names), **level_metrics(y, probs, frame, names)}
    return ", ".join(f"{k} {v['auc']:.3f} / {v['f1_macro']:.3f}" for k, v in levels.items())


def difference(y, a, b, frame, names) -> str:
    out = paired_bootstrap_classification(y, two_columns(a), two_columns(b), frame, names)
    parts = []
    for level in ("slice", "nodule", "patient"):
        auc, f1 = out[level]["auc"], out[level]["f1_macro"]
        parts.append(
            f"{level} AUC {auc['difference']:+.3f} ({auc['ci95'][0]:+.3f} .. {auc['ci95'][1]:+.3f}),"
            f" macro F1 {f1['difference']:+.3f} ({f1['ci95'][0]:+.3f} .. {f1['ci95'][1]:+.3f})"
        )
    return "; ".join(parts)


def main(new: list[Path], base: Path, measured_run: Path) -> None:
    config = load_run_config(measured_run)
    data = prepare_data(config.data, progress=False)
    names = data.class_names
    frames, features, _ = measured_split_features(
        data, config.data.view, measured_run / "segmenter", config.measured_nodule.tta, progress=False
    )
    column = image_column(data.manifest, config.data.view)
    pool = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    test = frames["test"].reset_index(drop=True)
    fitted, pooled_measured = held_out_measured(config, frames, features)
    measured = {
        "pooled": pooled_measured,
        "test": fitted.predict(features["test"], 2)[:, 1],
    }

    def cnn_probs(run: Path) -> dict:
        out_of_fold = pd.read_csv(run / "out_of_fold_custom_cnn.csv").set_index("image")
        on_test = pd.read_csv(run / "predictions.csv").set_index("image")
        return {
            "pooled": out_of_fold.loc[pool[column].astype(str), "prob_malignant"].to_numpy(),
            "test": on_test.loc[test[column].astype(str), "prob_malignant"].to_numpy(),
        }

    joined = [cnn_probs(run) for run in new]
    cnn = {
        "new": {part: np.mean([j[part] for j in joined], axis=0) for part in ("pooled", "test")},
        "base": cnn_probs(base),
    }
    print(
        f"NEW {' + '.join(map(str, new))}\nBASE {base}\nmeasured classifier of {measured_run} (grouping {config.data.grouping})"
    )
    for part, frame in (("pooled", pool), ("test", test)):
        y = frame["target"].to_numpy()
        print(
            f"== {part} ({'out of fold' if part == 'pooled' else 'the averaged ensembles'}): {len(frame)} slices, {frame['patient_id'].nunique()} patients"
        )
        rows = {
            "measured classifier": measured[part],
            **{f"{n} CNNs": cnn[n][part] for n in cnn},
            **{f"mean of measured and {n} CNNs": (measured[part] + cnn[n][part]) / 2 for n in cnn},
        }
        for label, p in rows.items():
            print(f"  {label:32s} {scores(y, p, frame, names)}")
        print(f"  CNNs, new - base: {difference(y, cnn['new'][part], cnn['base'][part], frame, names)}")
        new_mean, base_mean = rows["mean of measured and new CNNs"], rows["mean of measured and base CNNs"]
        print(f"  means, new - base: {difference(y, new_mean, base_mean, frame, names)}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1].split("+")], Path(sys.argv[2]), Path(sys.argv[3]))
