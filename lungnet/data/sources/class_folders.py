"""A folder per class: ``root/<class>/<image>``; the folder name is the label.

Usage::

    from lungnet.data.sources.class_folders import load_class_folders

    df = load_class_folders("data/nodules")          # data/nodules/benign/*.png, data/nodules/malignant/*.png
    df = load_class_folders("data/nodules", patient_pattern=r"^(P\\d+)_")   # patient id = P123 from P123_4.png

The patient id comes from `patient_pattern` searched in the image's path below its class folder (its first
group if it has one, else the whole match). Images without a match fall back to their file name (without suffix), with a warning:
then splits are per image, and slices of one patient can land in both training and test sets.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pandas as pd

from lungnet.data.io import IMAGE_SUFFIXES, file_suffix
from lungnet.data.manifest import validate_manifest
from lungnet.errors import DataError

LIDC_PATIENT_PATTERN = r"LIDC-IDRI-\d{4}"


def load_class_folders(
    root: str | os.PathLike, *, patient_pattern: str | None = LIDC_PATIENT_PATTERN, recursive: bool = False
) -> pd.DataFrame:
    """One manifest row per image file under ``root/<class>/`` (hidden files and folders are ignored).

    `recursive=True` also collects images in sub-folders of each class folder (e.g. one per patient, which a
    `patient_pattern` can then match).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: class folder root not found")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.is_file() and file_suffix(p.name) in IMAGE_SUFFIXES]
        hint = (
            f" (found {len(loose)} image(s) directly in it: put them in one folder per class)"
            if loose
            else ""
        )
        raise DataError(f"{root}: no class folders; expected root/<class>/<image files>{hint}")
    pattern = re.compile(patient_pattern) if patient_pattern else None

    rows = []
    unmatched = 0
    for folder in classes:
        files = _image_files(folder, recursive)
        if not files:
            raise DataError(
                f"{folder}: class folder '{folder.name}' has no image files "
                f"({', '.join(IMAGE_SUFFIXES)}){'' if recursive else '; sub-folders are read with recursive=True'}"
            )
        for path in files:
            relative = path.relative_to(folder).as_posix()
            match = pattern.search(relative) if pattern else None
            if match:
                patient = match.group(1) if pattern.groups else match.group(0)
            else:
                patient = _strip_suffix(relative)
                unmatched += 1
            rows.append(
                {
                    "image": str(path.absolute()),
                    "patient_id": patient,
                    "label": folder.name,
                    "source": root.name,
                }
            )
    if unmatched:
        warnings.warn(
            f"{root}: {unmatched} of {len(rows)} image(s) have no patient id matching {patient_pattern!r}; "
            "using each file name as its patient id, so splits are per image and one patient's images can "
            "fall into both training and test sets (pass patient_pattern= to extract real ids)",
            UserWarning,
            stacklevel=2,
        )
    return validate_manifest(pd.DataFrame(rows), str(root))


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for path in candidates:
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if file_suffix(path.name) in IMAGE_SUFFIXES:
            files.append(path)
    return sorted(files)


def _strip_suffix(name: str) -> str:
    # "a/b.nii.gz" -> "a/b": sub-folder names stay, so 001.png of two patient folders do not merge.
    suffix = file_suffix(name)
    return name[: -len(suffix)] if suffix else name
