"""How far can the measured-nodule classifier's features go? Training and validation splits only.

Usage: .venv/bin/python docs/real-ct/analysis/measured_feature_ceiling.py RUN [RUN ...]

For a finished `cpu-real-measured` run: its own segmenter outlines every training and validation slice, the
features of `lungnet.evaluation.measured_nodule` are computed, and each variant below is scored by
patient-grouped 5-fold cross-validation on the training split and by a fit on training scored on
validation. The test split is never read. Variants: the readers' diameter alone (the reference); the
measured features with a logistic regression at several C; a gradient-boosted tree model; the same plus
calcification-sensitive intensity features (share of bright pixels in the region; crops are min-max scaled
per crop, so calcium is near 255) and their nodule maximum; and, as the reference a perfect segmenter would
give (not image-only), the same features inside the readers' consensus masks, and the largest consensus
area of each nodule alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from lungnet.data.dataset import image_column, prepare_data
from lungnet.data.io import read_image, read_mask
from lungnet.evaluation.measured_nodule import central_region, measured_classifier, measured_features
from lungnet.runs import load_run_config
from lungnet.studies.mask_prediction import predict_masks


def bright_features(frame: pd.DataFrame, column: str, masks: dict) -> pd.DataFrame:
    rows = []
    for path in frame[column].astype(str):
        image = read_image(path).astype(float)
        region = central_region(masks[path])
        if not region.any():
            rows.append({})
            continue
        values = image[region]
        top = max(image.max(), 1.0)
        rows.append(
            {
                "bright_share": float((values >= 200).mean()),
                "p90_of_max": float(np.percentile(values, 90) / top),
            }
        )
    table = pd.DataFrame(rows, index=frame.index)
    table["nodule_max_bright_share"] = (
        table["bright_share"].groupby(frame["nodule_id"].astype(str)).transform("max")
    )
    return table


def scores(make, x_train, y_train, groups, x_val, y_val) -> str:
    x_train, x_val = np.asarray(x_train, float), np.asarray(x_val, float)
    out_of_fold = np.zeros(len(y_train))
    for fit_rows, held_rows in GroupKFold(5).split(x_train, y_train, groups):
        out_of_fold[held_rows] = (
            make().fit(x_train[fit_rows], y_train[fit_rows]).predict_proba(x_train[held_rows])[:, 1]
        )
    val = make().fit(x_train, y_train).predict_proba(x_val)[:, 1]
    return f"training 5-fold AUC {roc_auc_score(y_train, out_of_fold):.3f}, validation AUC {roc_auc_score(y_val, val):.3f}"


def main(run: Path) -> None:
    config = load_run_config(run)
    data = prepare_data(config.data, progress=False)
    frames = {s: data.split(s) for s in ("train", "val")}
    column = image_column(data.manifest, config.data.view)
    rows = pd.concat(frames.values())
    masks = predict_masks(run / "segmenter", rows, column, config.measured_nodule.tta, progress=False)
    feats = {s: measured_features(f, column, masks) for s, f in frames.items()}
    extra = {s: pd.concat([feats[s], bright_features(f, column, masks)], axis=1) for s, f in frames.items()}
    y = {s: f["target"].to_numpy() for s, f in frames.items()}
    groups = frames["train"]["patient_id"].astype(str).to_numpy()
    print(f"{run} (grouping {config.data.grouping})")
    diameter = {s: frames[s][["diameter_mm"]] for s in frames}
    print(
        "  readers' diameter (not image-only):",
        scores(
            lambda: measured_classifier(1.0), diameter["train"], y["train"], groups, diameter["val"], y["val"]
        ),
    )
    ratings = {s: frames[s][["diameter_mm", "calcification"]] for s in frames}
    print(
        "  readers' diameter + calcification rating (not image-only):",
        scores(
            lambda: measured_classifier(1.0), ratings["train"], y["train"], groups, ratings["val"], y["val"]
        ),
    )
    for C in (0.01, 0.1, 1.0, 10.0):
        print(
            f"  measured features, logistic C={C}:",
            scores(
                lambda C=C: measured_classifier(C), feats["train"], y["train"], groups, feats["val"], y["val"]
            ),
        )

    def boosted():
        return HistGradientBoostingClassifier(
            max_depth=3, learning_rate=0.05, max_iter=150, class_weight="balanced", random_state=0
        )

    print(
        "  measured features, gradient boosting:",
        scores(boosted, feats["train"], y["train"], groups, feats["val"], y["val"]),
    )
    extra_val = extra["val"][extra["train"].columns]
    print(
        "  + bright-pixel features, logistic:",
        scores(lambda: measured_classifier(1.0), extra["train"], y["train"], groups, extra_val, y["val"]),
    )
    print(
        "  + bright-pixel features, boosting:",
        scores(boosted, extra["train"], y["train"], groups, extra_val, y["val"]),
    )
    readers = {
        s: measured_features(
            f, column, {str(p): read_mask(str(m)) for p, m in zip(f[column], f["mask"], strict=True)}
        )
        for s, f in frames.items()
    }
    area = {s: readers[s][["nodule_max_shape_area_mm2"]] for s in frames}
    print(
        "  readers' consensus mask, largest area per nodule (not image-only):",
        scores(lambda: measured_classifier(1.0), area["train"], y["train"], groups, area["val"], y["val"]),
    )
    print(
        "  readers' consensus mask, measured features, logistic C=1 (not image-only):",
        scores(
            lambda: measured_classifier(1.0),
            readers["train"],
            y["train"],
            groups,
            readers["val"][readers["train"].columns],
            y["val"],
        ),
    )
    calcified = (frames["train"]["calcification"] < 6).to_numpy()  # LIDC: 6 = absent
    share = extra["train"]["nodule_max_bright_share"].fillna(0)
    print(
        f"  bright share (nodule max) against the readers' calcification rating: AUC {roc_auc_score(calcified, share):.3f}"
    )


if __name__ == "__main__":
    for path in sys.argv[1:]:
        main(Path(path))
