"""`lungnet predict` on a segmentation run, on real CT: the test patients' slices without their masks.

Usage: python docs/real-ct/analysis/predict_masks_real.py SEG_RUN SOURCE_MANIFEST OUT

SEG_RUN is a segmentation run trained with a manifest-given split (a measured-nodule classifier's
``RUN/segmenter``); its ``test`` patients never trained it. Their slices go to `lungnet predict` with only
``image``, ``patient_id``, ``nodule_id`` and ``pixel_spacing_mm``; the masks it writes (at each image's own
size) are then compared with the radiologists' consensus masks of SOURCE_MANIFEST: Dice per slice (all
slices; central slices of nodules with 3-4 readers), and each nodule's largest-slice diameter (a circle of
equal area) from the predicted masks against the same from the consensus masks. Prints the numbers and the
wall time of the prediction.
"""

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lungnet.studies.runner import predict_run

seg_run, source_manifest, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
split = pd.read_csv(seg_run.parent / "segmenter_manifest.csv")
test_patients = set(split.loc[split["split"] == "test", "patient_id"])
source = pd.read_csv(source_manifest)
test = source[source["patient_id"].isin(test_patients)].reset_index(drop=True)
test["image"] = [str((source_manifest.parent / p).resolve()) for p in test["image"]]
out.mkdir(parents=True, exist_ok=True)
unlabelled = out / "unlabelled.csv"
test[["image", "patient_id", "nodule_id", "pixel_spacing_mm"]].to_csv(unlabelled, index=False)

start = time.perf_counter()
folder = predict_run(seg_run, str(unlabelled), out=out / "predicted")
seconds = time.perf_counter() - start
predicted = pd.read_csv(folder / "predictions.csv")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


rows = []
for row, pred in zip(test.itertuples(), predicted.itertuples(), strict=True):
    truth = cv2.imread(str(source_manifest.parent / row.mask), cv2.IMREAD_GRAYSCALE) > 0
    mask = cv2.imread(str(folder / pred.mask), cv2.IMREAD_GRAYSCALE) > 0
    assert mask.shape == truth.shape, (mask.shape, truth.shape)
    area_mm2 = truth.sum() * row.pixel_spacing_mm**2
    rows.append(
        {
            "nodule_id": row.nodule_id,
            "central_3_4_readers": bool(row.is_central) and row.n_readers >= 3,
            "dice": dice(mask, truth),
            "predicted_diameter_mm": pred.diameter_mm,
            "consensus_diameter_mm": 2 * np.sqrt(area_mm2 / np.pi),
        }
    )
table = pd.DataFrame(rows)
nodules = table.groupby("nodule_id")[["predicted_diameter_mm", "consensus_diameter_mm"]].max()
error = nodules["predicted_diameter_mm"] - nodules["consensus_diameter_mm"]
central = table[table["central_3_4_readers"]]
print(f"predict: {len(test)} slices of {test['nodule_id'].nunique()} nodules, {len(test_patients)} patients")
print(f"wall time of lungnet predict: {seconds:.0f} s ({len(test) / seconds:.1f} slices/s)")
print(f"mean Dice against the consensus: all slices {table['dice'].mean():.3f} (n={len(table)}), ", end="")
print(f"central slices of nodules with 3-4 readers {central['dice'].mean():.3f} (n={len(central)})")
print(
    f"largest-slice equivalent diameter, predicted - consensus: mean {error.mean():+.2f} mm, "
    f"median absolute {error.abs().median():.2f} mm, Pearson r {nodules.corr().iloc[0, 1]:.3f} "
    f"(n={len(nodules)} nodules)"
)
table.to_csv(out / "dice_per_slice.csv", index=False)
nodules.to_csv(out / "diameters.csv")
