"""Read one 2-D image or mask from any supported file format.

Images come back as float32 arrays in their native units: Hounsfield units for DICOM (rescale slope and
intercept applied), NIfTI and HU NumPy arrays; 0-255 for 8-bit PNG/JPG. Masks come back as uint8 0/1.

References of the form ``stack.npy#i`` pick image ``i`` of a stacked ``(N, H, W)`` NumPy array, which is how
the phantom stores thousands of slices without thousands of files.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from lungnet.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".npy", ".npz")


def file_suffix(path: str) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def split_reference(ref: str) -> tuple[str, int | None]:
    """``'a/b.npy#12'`` -> ``('a/b.npy', 12)``; a plain path -> ``(path, None)``."""
    path, sep, index = str(ref).rpartition("#")
    if sep and path.lower().endswith(".npy") and index.isdigit():
        return path, int(index)
    return str(ref), None


@functools.lru_cache(maxsize=32)
def _open_stack(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def read_image(ref: str) -> np.ndarray:
    """Read a 2-D image as float32 (a 3-D volume with one slice is squeezed; RGB is averaged to grey)."""
    array = _read_array(ref)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and file_suffix(split_reference(ref)[0]) in (
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".tif",
        ".tiff",
    ):
        array = array[..., :3].mean(axis=-1)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DataError(f"{ref}: expected a 2-D image, got an array of shape {array.shape}")
    return array.astype(np.float32, copy=False)


def read_mask(ref: str, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask as uint8 0/1. Accepted values: {0, 1} or {0, 255}; anything else is an error."""
    mask = np.squeeze(_read_array(ref))
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DataError(f"{ref}: expected a 2-D mask, got an array of shape {mask.shape}")
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape):
        raise DataError(
            f"{ref}: mask shape {tuple(mask.shape)} does not match its image shape {tuple(expected_shape)}"
        )
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = values[:8].tolist()
        raise DataError(f"{ref}: mask values must be 0/1 or 0/255, found {shown}")
    return (mask > 0).astype(np.uint8)


def _read_array(ref: str) -> np.ndarray:
    path, index = split_reference(ref)
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    suffix = file_suffix(path)
    try:
        if index is not None:
            stack = _open_stack(os.path.abspath(path))
            if not 0 <= index < len(stack):
                raise DataError(f"{ref}: index {index} out of range for a stack of {len(stack)}")
            return np.asarray(stack[index])
        if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
            return _read_raster(path)
        if suffix == ".dcm":
            return read_dicom_hu(path)
        if suffix in (".nii", ".nii.gz"):
            return _read_nifti(path)
        if suffix == ".npy":
            return np.load(path)
        if suffix == ".npz":
            with np.load(path) as archive:
                return archive[archive.files[0]]
    except DataError:
        raise
    except Exception as exc:  # the decoders raise many types; report the file, keep the cause
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    raise DataError(f"{path}: unsupported image format {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")


def _read_raster(path: str) -> np.ndarray:
    import cv2

    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{path}: not a readable image (corrupt or not an image file)")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[-1] == 3 else cv2.COLOR_BGRA2RGBA)
    return array


def read_dicom_hu(path: str) -> np.ndarray:
    """One DICOM slice in Hounsfield units: stored values * RescaleSlope + RescaleIntercept."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    pixels = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept


def _read_nifti(path: str) -> np.ndarray:
    import nibabel as nib

    # get_fdata applies the scl_slope/scl_inter scaling, which is how NIfTI stores HU.
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))
