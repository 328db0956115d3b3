"""A binary run's recommended model, and `lungnet predict` checked against the run on its own test patients.

Prints the recommendation (validation F1 of every image-only candidate) and the candidates' test AUC /
macro F1 at each level; then writes an unlabelled manifest of the test patients' slices (every slice of
theirs, indeterminate nodules included), runs `lungnet predict` on it with its wall time, and reports the
largest difference between predict's uncalibrated probabilities and the run's own test probabilities of
the same model on the slices the run scored. Usage:
.venv/bin/python docs/real-ct/analysis/recommended_and_predict.py RUN MANIFEST OUT"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.evaluation.measured_nodule import MEASURED_ROW
from lungnet.evaluation.recommended import candidates, recommended_model
from lungnet.studies.predict import predict_classification_run

run, manifest, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
metrics = json.loads((run / "metrics.json").read_text())
chosen = recommended_model(metrics)
print("recommended:", chosen["model"], {k: round(v, 3) for k, v in chosen["validation_f1"].items()})
for name, record in candidates(metrics).items():
    levels = {"slice": record, **record["levels"]}
    print(f"  {name}: " + ", ".join(f"{k} {v['auc']:.3f} / {v['f1_macro']:.3f}" for k, v in levels.items()))

network = pd.read_csv(run / "predictions.csv")  # the selected network on the run's test slices
tested = set(network["patient_id"])
source = pd.read_csv(manifest)
keep = ["image", "patient_id", "nodule_id", "slice_index", "is_central", "pixel_spacing_mm"]
unlabelled = source.loc[source["patient_id"].isin(tested), [c for c in keep if c in source.columns]].copy()
unlabelled["image"] = [str((manifest.parent / p).resolve()) for p in unlabelled["image"]]
out.mkdir(parents=True, exist_ok=True)
unlabelled.to_csv(out / "unlabelled.csv", index=False)
start = time.perf_counter()
folder = predict_classification_run(run, str(out / "unlabelled.csv"), out / "predicted")
print(f"predict: {len(unlabelled)} slices of {len(tested)} patients in {time.perf_counter() - start:.0f} s")

run_probs = network["prob_malignant"].to_numpy()
if chosen["model"] != metrics["selected_model"]:
    measured = pd.read_csv(run / "measured_nodule_predictions.csv")["prob_malignant"].to_numpy()
    run_probs = measured if chosen["model"] == MEASURED_ROW else (measured + run_probs) / 2
ours = pd.read_csv(folder / "predictions.csv").set_index("image")["uncalibrated_prob_malignant"]
images = [str((manifest.parent / p).resolve()) for p in network["image"]]
print(
    f"largest difference from the run's own probabilities: {np.max(np.abs(ours.loc[images] - run_probs)):.1e}"
)
