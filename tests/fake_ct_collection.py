"""A tiny CT collection for the harmonize engine's tests: `fake-ct:ROOT` reads ROOT/index.csv.

index.csv columns: volume_id, patient_id, label (malignant / benign / empty), slices (lesion slices to emit),
broken (1: reading the volume fails, as a corrupt file would). Registered on import, so a spawned worker
process or a Dask worker that imports this module finds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.sources.volumes import Collection, SliceSample, VolumeTask, register_collection
from lungnet.errors import DataError


def list_volumes(root: Path):
    index = pd.read_csv(Path(root) / "index.csv", dtype={"patient_id": str, "label": str}).fillna("")
    tasks = [
        VolumeTask(
            "fake-ct",
            str(r.volume_id),
            r.patient_id,
            (str(root),),
            {"label": r.label, "slices": int(r.slices), "broken": int(r.broken)},
        )
        for r in index.itertuples()
    ]
    return tasks, []


def read_volume(task: VolumeTask) -> list[SliceSample]:
    if task.info["broken"] or (Path(task.paths[0]) / f"{task.volume_id}.broken").exists():
        raise DataError(f"{task.paths[0]}/{task.volume_id}.mhd: truncated file")
    out = []
    for k in range(task.info["slices"]):
        hu = np.full((16, 16), -1000.0, np.float32)
        mask = np.zeros((16, 16), np.uint8)
        mask[4 : 8 + k, 4:8] = 1
        hu[mask > 0] = 40.0
        out.append(SliceSample(hu, mask, k, task.info["label"] or None, "contour", 0.7, {"lesion": k}))
    return out


register_collection(Collection("fake-ct", "a fake collection for tests", list_volumes, read_volume))
