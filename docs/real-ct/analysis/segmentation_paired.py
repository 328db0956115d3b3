"""Two segmenters of one run compared on the same test slices: a paired patient bootstrap of Dice on the
readers' slices (central slices of nodules with 3-4 readers), on all slices, and per nodule.

Usage: .venv/bin/python docs/real-ct/analysis/segmentation_paired.py RUN MANIFEST [MODEL_A MODEL_B]

RUN is a finished segmentation run on lidc-crops; MANIFEST its manifest.csv (for ``is_central`` and
``n_readers``, joined by image file name: runs made before ``predictions.csv`` carried ``readers_slice``
need it). MODEL_A and MODEL_B default to attention_res_unet and unet. Runs made since can use
``lungnet compare-models RUN A B --readers-slices`` for the first line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lungnet.evaluation.paired import describe, paired_bootstrap
from lungnet.evaluation.segmentation import readers_slices


def main(run: str, manifest: str, model_a: str = "attention_res_unet", model_b: str = "unet") -> None:
    predictions = pd.read_csv(Path(run) / "predictions.csv")
    rows = pd.read_csv(manifest)
    rows["readers_slice"] = readers_slices(rows)
    by_name = rows.assign(name=rows["image"].map(lambda p: Path(p).name)).set_index("name")
    names = predictions["image"].map(lambda p: Path(p).name)
    missing = sorted(set(names) - set(by_name.index))
    if missing:
        raise SystemExit(f"{manifest}: {len(missing)} test images of {run} are not in it, e.g. {missing[0]}")
    predictions["readers_slice"] = by_name.loc[names, "readers_slice"].to_numpy()
    readers = predictions[predictions["readers_slice"]]
    print("readers' slices:", describe(paired_bootstrap(readers, model_a, model_b)))
    print("all slices:     ", describe(paired_bootstrap(predictions, model_a, model_b)))
    nodules = (  # each nodule's mean Dice over its slices, one row per nodule and model
        predictions.dropna(subset=["nodule_id"])
        .groupby(["nodule_id", "patient_id", "model"], as_index=False)["dice"]
        .mean()
        .rename(columns={"nodule_id": "image"})
    )
    print("per nodule:     ", describe(paired_bootstrap(nodules, model_a, model_b)))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 5):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
