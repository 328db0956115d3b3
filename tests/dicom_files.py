"""Writes small CT DICOM files in the real format, for the loader tests (one writer for every test)."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_slice(
    path,
    stored,
    *,
    slope=1.0,
    intercept=-1024.0,
    z=0.0,
    series_uid=None,
    study_uid="1.2.3",
    patient_id=None,
    instance=1,
    pixels=True,
    spacing=0.7,
    thickness=None,
    origin=(0.0, 0.0),
    sop_uid=None,
    modality="CT",
):
    """A CT slice with `stored` (uint16) pixels; HU = stored * slope + intercept. `pixels=False`: header only.

    `sop_uid` fixes the SOPInstanceUID (generated when None); `modality` writes another Modality (a PET
    slice, "PT") into the same image format."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(z)]
    ds.PixelSpacing = [spacing, spacing]
    if thickness is not None:
        ds.SliceThickness = thickness
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if pixels:
        ds.PixelData = np.asarray(stored).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
