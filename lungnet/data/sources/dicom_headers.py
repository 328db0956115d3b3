"""DICOM headers of a collection laid out as patient folders of series (LungCT-Diagnosis, Lung-PET-CT-Dx).

Headers are read without pixels (`read_header` stops where pydicom's ``stop_before_pixels`` would), grouped
into series (`walk_series`), and checked before any pixel is decoded (`series_problem`, `patient_mismatch`),
so a listing of hundreds of series reads no image data and a bad series becomes a Skipped entry naming it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungnet.data.io import read_dicom_hu
from lungnet.errors import DataError

# The elements pydicom's stop_before_pixels stops at: (7FE0,0010) Pixel Data and its float variants.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


@dataclass(frozen=True)
class SliceHeader:
    """What the loaders need from one DICOM file's header (no pixels read)."""

    path: str
    series_uid: str
    sop_uid: str
    modality: str
    patient_id: str  # "" when the file has none
    z: float | None  # ImagePositionPatient[2]; None when absent
    rows: int | None  # None: not an image object
    columns: int | None
    has_pixels: bool
    pixel_spacing_mm: float | None


def read_header(path: str | os.PathLike) -> tuple[object, bool] | None:
    """A DICOM file's header (a pydicom Dataset, read up to the pixels) and whether pixel data follows it.

    None for a file that is not DICOM. Reading stops where ``stop_before_pixels`` would; recording where it
    stopped tells a header-only object from an image without reading a single pixel.
    """
    from pydicom.filereader import read_partial

    found = []

    def at_pixels(tag, vr, length) -> bool:
        if tag in _PIXEL_TAGS:
            found.append(tag)
            return True
        return False

    try:
        with open(path, "rb") as handle:
            ds = read_partial(handle, stop_when=at_pixels)
    except Exception:  # not DICOM (InvalidDicomError), or truncated: pydicom raises many types for those
        return None
    return ds, bool(found)


def header_text(ds, keyword: str) -> str:
    """A header element as stripped text; "" when absent or empty."""
    return str(getattr(ds, keyword, "") or "").strip()


def scan_folder(folder: str | os.PathLike) -> list[SliceHeader]:
    """The headers of the DICOM files directly in `folder` (non-DICOM files, such as XMLs, are left out)."""
    headers = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        read = read_header(path)
        if read is None:
            continue
        ds, has_pixels = read
        position = getattr(ds, "ImagePositionPatient", None)
        try:
            z = float(position[2]) if position is not None and len(position) == 3 else None
            rows = int(ds.Rows) if "Rows" in ds else None
            columns = int(ds.Columns) if "Columns" in ds else None
        except (TypeError, ValueError):
            z = rows = columns = None  # a header too damaged to place the slice: no readable image
        headers.append(
            SliceHeader(
                path=str(path),
                series_uid=header_text(ds, "SeriesInstanceUID"),
                sop_uid=header_text(ds, "SOPInstanceUID"),
                modality=header_text(ds, "Modality").upper(),
                patient_id=header_text(ds, "PatientID"),
                z=z,
                rows=rows,
                columns=columns,
                has_pixels=has_pixels,
                pixel_spacing_mm=pixel_spacing_mm(ds),
            )
        )
    return headers


def walk_series(patient_folder: str | os.PathLike) -> Iterator[tuple[str, str, list[SliceHeader]]]:
    """``(folder, series_uid, headers)`` of every series in the folders under `patient_folder`, any modality.

    One folder holding two series gives two entries. Folders are visited in sorted order, so tasks come out
    in the same order on every run.
    """
    for folder, dirs, files in os.walk(patient_folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not files:
            continue
        by_series: dict[str, list[SliceHeader]] = {}
        for header in scan_folder(folder):
            by_series.setdefault(header.series_uid, []).append(header)
        for uid in sorted(by_series):
            yield folder, uid, by_series[uid]


def series_problem(folder: str, series_uid: str, headers: list[SliceHeader]) -> str | None:
    """Why a series cannot be read as a CT volume (for a Skipped entry), or None when it can."""
    if not series_uid:
        return f"{folder}: DICOM files without a SeriesInstanceUID"
    images = [h for h in headers if h.rows is not None]
    unplaced = [h for h in images if h.z is None]
    if unplaced:  # list_dicom_series refuses such a series: say so now, naming the file
        return f"{unplaced[0].path}: image slice has no ImagePositionPatient, cannot place it in its series"
    if not any(h.has_pixels and h.columns for h in images):
        return f"{folder}: series {series_uid} has no readable image (no slice with pixel data)"
    return None


def patient_mismatch(patient_id: str, headers: list[SliceHeader]) -> str | None:
    """A reason when the DICOM PatientID of the series differs from its patient folder's name."""
    others = sorted({h.patient_id for h in headers if h.patient_id and h.patient_id != patient_id})
    if others:
        return f"DICOM PatientID {', '.join(others)} does not match the patient folder {patient_id}"
    return None


def pixel_spacing_mm(ds) -> float | None:
    """The in-plane pixel spacing (mm) of a header; None when absent or not square (one number can't say)."""
    spacing = getattr(ds, "PixelSpacing", None)
    try:
        row, column = float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return None
    if row <= 0 or not math.isclose(row, column, rel_tol=1e-3):
        return None
    return row


def read_slice_hu(path: str | os.PathLike) -> np.ndarray:
    """One slice in HU (float32, 2-D); a file whose pixels cannot be decoded is a DataError naming it."""
    try:
        hu = read_dicom_hu(str(path))
    except DataError:
        raise
    except Exception as exc:  # truncated or undecodable pixel data: the decoders raise many types
        raise DataError(f"{path}: cannot decode the pixel data ({type(exc).__name__}: {exc})") from exc
    if hu.ndim != 2:
        raise DataError(f"{path}: expected a 2-D CT slice, got pixel data of shape {hu.shape}")
    return hu.astype(np.float32, copy=False)


def patient_folders(root: Path, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """The patient folders of a collection root, sorted; a missing root is a DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: collection folder not found")
    excluded = {p.resolve() for p in exclude}
    return [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and p.resolve() not in excluded
    ]


# ------------------------------------------------------------------------------------------ the collection
