"""LungCT-Diagnosis (TCIA): CT of 61 patients with lung adenocarcinoma, as ``lungct-diagnosis:ROOT``.

The TCIA download is ``ROOT/<PatientID>/<study>/<series>/*.dcm`` (patient ids such as ``R_004``); any folder
depth below the patient folder is accepted. Every CT series is one volume; other DICOM objects (Modality not
CT) are ignored. The folder name is the patient id, checked against the DICOM PatientID where one is set.

The collection has no lesion masks and marks no slice. Its slices are therefore classification-only and NOT
lesion-localised: the patient-level diagnosis (label ``malignant``, ``histology=adenocarcinoma``) is put on
every chosen slice, whether or not that slice shows the tumour. The chosen slices are the middle
`middle_fraction` of each series in z order (where the lungs are), every `slice_step`-th::

    tasks, skipped = list_volumes(Path("/data/LungCT-Diagnosis"), middle_fraction=0.5, slice_step=2)

The DICOM header helpers (`read_header`, `walk_series`, `series_problem`, ...) are in
`lungnet.data.sources.dicom_headers`, shared with the Lung-PET-CT-Dx loader.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

from lungnet.data.io import list_dicom_series
from lungnet.data.sources.dicom_headers import (
    header_text,
    patient_folders,
    patient_mismatch,
    pixel_spacing_mm,
    read_slice_hu,
    series_problem,
    walk_series,
)
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
                    "sop_instance_uid": header_text(ds, "SOPInstanceUID"),
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
