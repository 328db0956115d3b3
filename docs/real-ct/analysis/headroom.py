"""How much is left for an image-only model? The readers' own descriptors, calcification, and three
ways of combining the models, for a finished binary `cpu-real-folds` run with the measured classifier.

Usage: .venv/bin/python docs/real-ct/analysis/headroom.py RUN [RUN ...]

1. Readers' descriptors (not image-only: the readers' median texture, calcification, spiculation and
   subtlety ratings beside the log diameter, class-balanced logistic regression): patient-grouped 5-fold
   cross-validation on the training + validation patients, and fitted on training and scored on test, as
   the size-only baseline is. A reference for what the readers' own reading of the image adds to size.
2. By calcification (readers' median calcification below 6, "absent"): AUC of the diameter and the fold
   CNNs for calcified benign slices against malignant ones, and for non-calcified benign against malignant.
3. Three learned combinations against the fixed mean of the measured classifier and the fold CNNs, on the
   pooled held-out rows (CNN out-of-fold; measured classifier cross-fitted on training, fitted on training
   for validation; each combination cross-fitted over the CNN's patient folds).
4. Bright-pixel features (share of the predicted region at >= 200 and >= 230 of 255, whether it holds a
   pixel >= 250, and each one's nodule maximum) added to the measured classifier, patient-grouped 5-fold
   cross-validation on the pooled rows.
5. Macro F1 against the decision threshold (0.20 to 0.80) on the pooled rows: the fixed mean against the
   size-only baseline cross-fitted over the CNN's folds.
Parts 3 to 5 (the choices) read no test row; the run's own test scores of the mean are printed with part 3. The segmenter outlines every slice once (minutes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score

from lungnet.data.dataset import image_column, prepare_data
from lungnet.data.io import read_image
from lungnet.evaluation.aggregation import nodule_level
from lungnet.evaluation.baselines import cross_fitted_size_only
from lungnet.evaluation.measured_nodule import (
    central_region,
    cross_fitted_probs,
    fit_measured,
    mean_row,
    measured_classifier,
)
from lungnet.runs import load_run_config
from lungnet.studies.classification import measured_split_features

sys.path.insert(0, str(Path(__file__).parent))
from compare_fold_runs import held_out_measured  # noqa: E402

DESCRIPTORS = ("texture", "calcification", "spiculation", "subtlety")
CALCIFICATION_ABSENT = 6  # LIDC's calcification rating 6 is "absent"; 1-5 name a pattern


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def aucs_and_f1(y, p, frame) -> str:
    """Slice and nodule AUC / macro F1 at 0.5 of malignancy probabilities `p`."""
    ny, nprobs, _, _ = nodule_level(y, np.c_[1 - p, p], frame)
    levels = ((y, p), (ny, nprobs[:, 1]))
    return "  ".join(
        f"{name} {roc_auc_score(t, q):.3f} / {f1_score(t, q >= 0.5, average='macro'):.3f}"
        for name, (t, q) in zip(("slice", "nodule"), levels, strict=True)
    )


def bright_features(frame: pd.DataFrame, column: str, masks: dict) -> pd.DataFrame:
    rows = []
    for path in frame[column].astype(str):
        values = read_image(path)[central_region(masks[path])]  # the PNG's own 0-255 values
        if values.size == 0:
            rows.append({})
            continue
        rows.append(
            {
                "bright_200": float((values >= 200).mean()),
                "bright_230": float((values >= 230).mean()),
                "holds_250": float(values.max() >= 250),
            }
        )
    table = pd.DataFrame(rows, index=frame.index).reindex(columns=["bright_200", "bright_230", "holds_250"])
    nodules = frame["nodule_id"].astype(str)
    for name in list(table.columns):
        table[f"nodule_max_{name}"] = table[name].groupby(nodules).transform("max")
    return table


def main(run: Path) -> None:
    config = load_run_config(run)
    data = prepare_data(config.data, progress=False)
    frames, features, masks = measured_split_features(
        data, config.data.view, run / "segmenter", config.measured_nodule.tta, progress=False
    )
    column = image_column(data.manifest, config.data.view)
    pool = pd.concat([frames["train"], frames["val"]], ignore_index=True)
    pool_x = pd.concat([features["train"], features["val"]], ignore_index=True)
    test, y_test = frames["test"].reset_index(drop=True), frames["test"]["target"].to_numpy()
    y, patients = pool["target"].to_numpy(), pool["patient_id"].astype(str).to_numpy()
    print(f"{run} (grouping {config.data.grouping}): pooled {len(pool)} slices, test {len(test)}")

    # 1. the readers' descriptors
    def descriptors(frame, with_ratings=True):
        x = pd.DataFrame({"log_diameter": np.log(frame["diameter_mm"].astype(float))})
        for name in DESCRIPTORS if with_ratings else ():
            x[name] = frame[name].astype(float)
        return x

    for label, ratings in (("diameter", False), ("diameter + readers' descriptors", True)):
        cv = cross_fitted_probs(descriptors(pool, ratings), y, patients, 1.0, 2)[:, 1]
        fitted = fit_measured(descriptors(frames["train"], ratings), frames["train"]["target"], 1.0)
        on_test = fitted.predict(descriptors(test, ratings), 2)[:, 1]
        print(
            f"  1. {label:32s} pooled CV {aucs_and_f1(y, cv, pool)} | test {aucs_and_f1(y_test, on_test, test)}"
        )

    # the run's held-out predictions: fold CNNs out of fold, measured classifier cross-fitted / on validation
    out_of_fold = pd.read_csv(run / "out_of_fold_custom_cnn.csv").set_index("image")
    cnn = out_of_fold.loc[pool[column].astype(str), "prob_malignant"].to_numpy()
    cnn_fold = out_of_fold.loc[pool[column].astype(str), "member"].to_numpy() - 1
    cnn_test = pd.read_csv(run / "predictions.csv").set_index("image")
    cnn_test = cnn_test.loc[test[column].astype(str), "prob_malignant"].to_numpy()
    _, measured = held_out_measured(config, frames, features)

    # 2. calcified and non-calcified benign nodules against the malignant ones
    for label, frame, p_cnn, yy in (("pooled", pool, cnn, y), ("test", test, cnn_test, y_test)):
        calcified = frame["calcification"].astype(float).to_numpy() < CALCIFICATION_ABSENT
        for name, benign in (("calcified", calcified), ("non-calcified", ~calcified)):
            rows = (yy == 1) | ((yy == 0) & benign)
            d = frame["diameter_mm"].to_numpy(float)
            if name == "calcified":
                share = calcified[yy == 1].mean()
                print(f"  2. {label}: {share:.1%} of malignant slices calcified")
            print(
                f"  2. {label} {name} benign ({int(((yy == 0) & benign).sum())} slices) vs malignant:"
                f" diameter {roc_auc_score(yy[rows], d[rows]):.3f}, CNNs {roc_auc_score(yy[rows], p_cnn[rows]):.3f}"
            )

    # 3. learned combinations against the fixed mean, cross-fitted over the CNN folds
    size = np.log(pool_x[["nodule_max_shape_area_mm2", "nodule_max_shape_major_axis_mm"]].clip(lower=0.5))
    designs = {
        "logits of both": pd.DataFrame({"cnn": logit(cnn), "measured": logit(measured)}),
        "CNN logit + measured size": pd.concat([pd.Series(logit(cnn), name="cnn"), size], axis=1),
        "CNN logit + measured features": pd.concat([pd.Series(logit(cnn), name="cnn"), pool_x], axis=1),
    }
    mean = (cnn + measured) / 2
    recorded = json.loads((run / "metrics.json").read_text())["image_only"][mean_row("custom_cnn")]
    on_test = ", ".join(
        f"{k} {v['auc']:.3f} / {v['f1_macro']:.3f}"
        for k, v in (("slice", recorded), *recorded["levels"].items())
    )
    print(f"  3. fixed mean                         {aucs_and_f1(y, mean, pool)} | the run's test: {on_test}")
    for name, x in designs.items():
        combined = np.zeros(len(y))
        for fold in np.unique(cnn_fold):
            held = cnn_fold == fold
            model = measured_classifier(1.0).fit(x[~held].to_numpy(float), y[~held])
            combined[held] = model.predict_proba(x[held].to_numpy(float))[:, 1]
        print(f"  3. {name:34s} {aucs_and_f1(y, combined, pool)}")

    # 4. bright-pixel features for the measured classifier
    bright = bright_features(pool, column, masks)
    for label, x in (
        ("measured features", pool_x),
        ("+ bright-pixel features", pd.concat([pool_x, bright], axis=1)),
    ):
        print(f"  4. {label:34s} {aucs_and_f1(y, cross_fitted_probs(x, y, patients, 1.0, 2)[:, 1], pool)}")

    # 5. macro F1 against the threshold
    size_only = cross_fitted_size_only(pool["diameter_mm"], y, cnn_fold, data.class_names)[:, 1]
    for label, p in (("fixed mean", mean), ("size-only", size_only)):
        curve = {t: f1_score(y, p >= t, average="macro") for t in np.round(np.arange(0.2, 0.81, 0.05), 2)}
        best = max(curve, key=curve.get)
        print(f"  5. {label:10s} macro F1 at 0.5 {curve[0.5]:.3f}, best {curve[best]:.3f} at {best:.2f}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(Path(arg))
