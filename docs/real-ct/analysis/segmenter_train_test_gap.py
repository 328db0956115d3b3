"""Usage: .venv/bin/python docs/real-ct/analysis/segmenter_train_test_gap.py RUN (a measured-nodule classification run).
Segmenter Dice on its own training patients vs validation/test (clean-repro run): is the measured
classifier fitted on features from better masks than it sees at test time?"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.io import read_image
from lungnet.evaluation.measured_nodule import central_region
from lungnet.studies.mask_prediction import predict_masks

run = Path(sys.argv[1])
m = pd.read_csv(run / "segmenter_manifest.csv")
masks = predict_masks(run / "segmenter", m, "image", tta=False, progress=False)
rows = []
for _, r in m.iterrows():
    gt = read_image(r["mask"]) > 0
    pr = central_region(masks[r["image"]])
    inter = (gt & pr).sum()
    s = gt.sum() + pr.sum()
    area_gt = gt.sum()
    area_pr = pr.sum()
    rows.append(
        {
            "split": r["split"],
            "dice": 2 * inter / s if s else 1.0,
            "agt": area_gt,
            "apr": area_pr,
            "central": r["is_central"],
        }
    )
t = pd.DataFrame(rows)
t["log_area_ratio"] = np.log((t.apr + 1) / (t.agt + 1))
print(
    t.groupby("split")
    .agg(
        n=("dice", "size"),
        dice=("dice", "mean"),
        dice_med=("dice", "median"),
        found=("apr", lambda a: (a > 0).mean()),
        abs_log_area=("log_area_ratio", lambda a: a.abs().mean()),
        bias_log_area=("log_area_ratio", "mean"),
    )
    .round(3)
)
print(t[t.central == 1].groupby("split").dice.mean().round(3))
