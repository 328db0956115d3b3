"""Medical Segmentation Decathlon, Task06_Lung (``msd-lung:ROOT``): NIfTI CTs with tumour masks.

Layout (as downloaded)::

    Task06_Lung/dataset.json  # "labels": {"0": "background", "1": "cancer"}, "training": [...], "test": [...]
    Task06_Lung/imagesTr/lung_001.nii.gz
    Task06_Lung/labelsTr/lung_001.nii.gz
    Task06_Lung/imagesTs/lung_002.nii.gz

ROOT is the ``Task06_Lung`` folder or its parent. Cases are the ``training`` entries of ``dataset.json``; the
``test`` images come without labels, so they are not tasks. Every case is a non-small-cell lung cancer, so
each lesion slice is labelled ``"malignant"``; its mask is label value 1 (the tumour). The case name
(``lung_001``) is both the volume id and the patient id (one CT per patient). Entries named ``._*`` are the
AppleDouble junk of archives made on macOS and are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lungnet.data.sources.volumes import (
    Collection,
    Skipped,
    SliceSample,
    VolumeTask,
    read_sitk_volume,
    register_collection,
)
from lungnet.errors import DataError

NAME = "msd-lung"
TASK_FOLDER = "Task06_Lung"
INDEX_FILE = "dataset.json"
LABEL = "malignant"  # every Task06 case is a non-small-cell lung cancer
_EXPECTED_LABELS = {"0", "1"}


def task_folder(root: str | Path) -> Path:
    """The folder holding ``dataset.json``: ROOT itself or ``ROOT/Task06_Lung``."""
    root = Path(root)
    for folder in (root, root / TASK_FOLDER):
        if (folder / INDEX_FILE).is_file():
            return folder
    raise DataError(
        f"{root / INDEX_FILE}: not found (nor {root / TASK_FOLDER / INDEX_FILE}); give the Task06_Lung "
        "folder of the Medical Segmentation Decathlon, or its parent"
    )


def case_name(path: str) -> str:
    """``./imagesTr/lung_001.nii.gz`` -> ``lung_001``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: could not be read ({exc})") from None
    if not isinstance(index, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(index).__name__}")
    labels = index.get("labels")
    # Another Decathlon task (liver: 0/1/2) pointed at by mistake would be read as lung tumours without this.
    if labels is not None and (not isinstance(labels, dict) or set(labels) != _EXPECTED_LABELS):
        raise DataError(
            f'{path}: "labels" is {labels!r}; Task06_Lung has exactly 0 (background) and 1 (cancer)'
        )
    if not isinstance(index.get("training"), list):
        raise DataError(f'{path}: needs a "training" list of {{"image": ..., "label": ...}} entries')
    return index


def list_volumes(root: str | Path) -> tuple[list[VolumeTask], list[Skipped]]:
    """One task per ``training`` entry of ``dataset.json`` whose image and label files both exist."""
    folder = task_folder(root)
    index_path = folder / INDEX_FILE
    index = _read_index(index_path)
    tasks, skipped = [], []
    for i, entry in enumerate(index["training"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)):
            raise DataError(
                f'{index_path}: training[{i}] must be {{"image": ..., "label": ...}}, got {entry!r}'
            )
        if Path(entry["image"]).name.startswith("._"):
            continue
        case = case_name(entry["image"])
        if not isinstance(entry.get("label"), str):
            raise DataError(f'{index_path}: training[{i}] ({case}) has no "label" file name')
        image, label = folder / entry["image"], folder / entry["label"]
        missing = [p for p in (image, label) if not p.is_file()]
        if missing:
            what = " and ".join(str(p) for p in missing)
            skipped.append(Skipped(NAME, case, f"listed in {index_path} but {what} not found"))
            continue
        tasks.append(
            VolumeTask(
                dataset=NAME,
                volume_id=case,
                patient_id=case,
                paths=(str(image), str(label)),
                info={"image": str(image), "label": str(label)},
            )
        )
    return tasks, skipped


def read_volume(task: VolumeTask) -> list[SliceSample]:
    """Every axial slice of the case whose label has tumour voxels, with its HU and tumour mask."""
    image_path, label_path = task.info["image"], task.info["label"]
    ct = read_sitk_volume(image_path)
    label = read_sitk_volume(label_path).hu
    if label.shape != ct.hu.shape:
        raise DataError(
            f"{label_path}: label shape {label.shape} (z, y, x) does not match its image {image_path} "
            f"{ct.hu.shape}"
        )
    if not ((label == 0) | (label == 1)).all():  # np.unique only on failure: it sorts the whole volume
        values = [int(v) if float(v).is_integer() else float(v) for v in np.unique(label)[:10]]
        raise DataError(f"{label_path}: label values must be 0 (background) or 1 (cancer), found {values}")
    pixel_spacing = float(np.mean(ct.spacing_xyz[:2]))  # square in-plane pixels in practice
    tumour = label == 1
    samples = []
    for z in np.flatnonzero(tumour.any(axis=(1, 2))):
        samples.append(
            SliceSample(
                hu=ct.hu[z],
                mask=tumour[z].astype(np.uint8),
                slice_index=int(z),
                label=LABEL,
                mask_kind="contour",
                pixel_spacing_mm=pixel_spacing,
                extra={"msd_case": task.volume_id},
            )
        )
    return samples


register_collection(
    Collection(
        name=NAME,
        description="Medical Segmentation Decathlon Task06_Lung (NSCLC tumour masks, all malignant)",
        list_volumes=list_volumes,
        read_volume=read_volume,
    )
)
