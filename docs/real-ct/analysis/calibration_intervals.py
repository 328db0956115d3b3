"""Test ECE before and after each row's recorded calibration, with 95 % patient-bootstrap intervals, for a
classification run finished before the study wrote `ece_*_ci95` (the same `calibration_summary`, on the
run's saved test predictions). Usage: .venv/bin/python docs/real-ct/analysis/calibration_intervals.py RUN"""

import json
import sys
from pathlib import Path

import pandas as pd

from lungnet.evaluation import Calibration, calibration_summary

run = Path(sys.argv[1])
metrics = json.loads((run / "metrics.json").read_text())
names = metrics["class_names"]
cnn = pd.read_csv(run / "predictions.csv").set_index("image")
y = cnn["label"].astype(str).map({n: i for i, n in enumerate(names)}).to_numpy()
probs = {"selected": cnn[[f"prob_{n}" for n in names]].to_numpy()}
records = {"selected": metrics["models"][metrics["selected_model"]]["calibration"]}
measured_csv = run / "measured_nodule_predictions.csv"
if measured_csv.is_file():
    measured = pd.read_csv(measured_csv).set_index("image").loc[cnn.index]
    probs["measured_nodule"] = measured[[f"prob_{n}" for n in names]].to_numpy()
    probs["mean"] = (probs["selected"] + probs["measured_nodule"]) / 2
    records["measured_nodule"] = metrics["image_only"]["measured_nodule"]["calibration"]
    records["mean"] = next(v["calibration"] for k, v in metrics["image_only"].items() if k.startswith("mean"))
for row, p in probs.items():
    s = calibration_summary(Calibration.from_dict(records[row]), y, p, patients=cnn["patient_id"].to_numpy())
    low_b, high_b = s["ece_before_ci95"]
    low_a, high_a = s["ece_after_ci95"]
    print(
        f"{row}: ECE {s['ece_before']:.3f} ({low_b:.3f} .. {high_b:.3f}) -> {s['ece_after']:.3f} "
        f"({low_a:.3f} .. {high_a:.3f}), {len(y)} slices, {cnn['patient_id'].nunique()} patients"
    )
