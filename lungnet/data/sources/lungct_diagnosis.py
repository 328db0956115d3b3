"""LungCT-Diagnosis (TCIA): CT of 61 patients with lung adenocarcinoma, as ``lungct-diagnosis:ROOT``.

The TCIA download is ``ROOT/<PatientID>/<study>/<series>/*.dcm`` (patient ids such as ``R_004``); any folder
depth below the patient folder is accepted. Every CT series is one volume; other DICOM objects (Modality not
CT) are ignored. The folder name is the patient id, checked against the DICOM PatientID where one is set.

The collection has no lesion masks and marks no slice. Its slices are therefore classification-only and NOT
lesion-localised: the patient-level diagnosis (label ``malignant``, ``histology=adenocarcinoma``) is put on
every chosen slice, whether or not that slice shows the tumour. The chosen slices are the middle
`middle_fraction` of each series in z order (where the lungs are), every `slice_step`-th::

    tasks, skipped = list_volumes(Path("/data/LungCT-Diagnosis"), middle_fraction=0.5, slice_step=2)

The DICOM header helpers here (`read_header`, `scan_folder`, `walk_series`, `series_problem`) are shared with
the Lung-PET-CT-Dx loader.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from lungnet.data.io import list_dicom_series, read_dicom_hu
from lungnet.data.sources.volumes import (
    Collection,
    Skipped,
    SliceSample,
    VolumeTask,
    register_collection,
)
from lungnet.errors import DataError

NAME = "lungct-diagnosis"
LABEL = "malignant"
HISTOLOGY = "adenocarcinoma"
# The elements pydicom's stop_before_pixels stops at: (7FE0,0010) Pixel Data and its float variants.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


# ------------------------------------------------------------------------------------ DICOM headers (shared)
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


def _text(ds, keyword: str) -> str:
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
                series_uid=_text(ds, "SeriesInstanceUID"),
                sop_uid=_text(ds, "SOPInstanceUID"),
                modality=_text(ds, "Modality").upper(),
                patient_id=_text(ds, "PatientID"),
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
def middle_indices(n: int, middle_fraction: float, slice_step: int) -> list[int]:
    """Indices of the middle `middle_fraction` of `n` slices (at least one), every `slice_step`-th."""
    if n <= 0:
        return []
    keep = min(n, max(1, math.floor(n * middle_fraction + 0.5)))
    start = (n - keep) // 2
    return list(range(start, start + keep, slice_step))


def _check_options(middle_fraction, slice_step) -> None:
    if (
        isinstance(middle_fraction, bool)
        or not isinstance(middle_fraction, Real)
        or not 0 < middle_fraction <= 1
    ):
        raise DataError(
            f"{NAME}: middle_fraction must be a number in (0, 1] (the share of each series' slices kept, "
            f"around its middle), got {middle_fraction!r}"
        )
    if isinstance(slice_step, bool) or not isinstance(slice_step, Integral) or slice_step < 1:
        raise DataError(f"{NAME}: slice_step must be a whole number >= 1, got {slice_step!r}")


def list_volumes(
    root: Path, middle_fraction: float = 0.5, slice_step: int = 1
) -> tuple[list[VolumeTask], list[Skipped]]:
    """One task per CT series under ``ROOT/<PatientID>/``, from the headers alone."""
    _check_options(middle_fraction, slice_step)
    tasks: list[VolumeTask] = []
    skipped: list[Skipped] = []
    for patient in patient_folders(Path(root)):
        for folder, uid, headers in walk_series(patient):
            ct = [h for h in headers if h.modality == "CT"]
            if not ct:
                continue  # PET, structured reports, presentation states...
            item = uid or folder
            reason = patient_mismatch(patient.name, ct) or series_problem(folder, uid, ct)
            if reason:
                skipped.append(Skipped(NAME, item, reason))
                continue
            tasks.append(
                VolumeTask(
                    dataset=NAME,
                    volume_id=uid,
                    patient_id=patient.name,
                    paths=(folder,),
                    info={
                        "folder": folder,
                        "series_uid": uid,
                        "middle_fraction": float(middle_fraction),
                        "slice_step": int(slice_step),
                    },
                )
            )
    if not tasks and not skipped:
        raise DataError(f"{root}: no CT series found under its patient folders (ROOT/<PatientID>/.../*.dcm)")
    return tasks, skipped


def read_volume(task: VolumeTask) -> list[SliceSample]:
    """The chosen slices of one series in HU, classification-only (no mask; see the module docstring)."""
    import pydicom

    info = task.info
    slices = list_dicom_series(info["folder"], info["series_uid"])
    samples = []
    shape = None
    for index in middle_indices(len(slices), info["middle_fraction"], info["slice_step"]):
        _, path = slices[index]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # it was readable when listed; report the file, keep the cause
            raise DataError(f"{path}: not a readable DICOM file ({exc})") from exc
        hu = read_slice_hu(path)
        if shape is not None and hu.shape != shape:
            raise DataError(f"{path}: slice shape {hu.shape} differs from the series' {shape}")
        shape = hu.shape
        samples.append(
            SliceSample(
                hu=hu,
                mask=None,
                slice_index=index,
                label=LABEL,
                mask_kind="none",
                pixel_spacing_mm=pixel_spacing_mm(ds),
                extra={
                    "histology": HISTOLOGY,
                    "sop_instance_uid": _text(ds, "SOPInstanceUID"),
                    "series_uid": info["series_uid"],
                },
            )
        )
    return samples


register_collection(
    Collection(
        name=NAME,
        description="LungCT-Diagnosis (TCIA): CT of 61 lung adenocarcinoma patients, classification-only "
        "slices (patient-level label, not lesion-localised)",
        list_volumes=list_volumes,
        read_volume=read_volume,
    )
)
