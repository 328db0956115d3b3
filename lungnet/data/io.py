"""Read one 2-D image or mask from any supported file format.

Images come back as float32 arrays in their native units: Hounsfield units for DICOM (rescale slope and
intercept applied), NIfTI and HU NumPy arrays; 0-255 for 8-bit PNG/JPG. Masks come back as uint8 0/1.

References of the form ``stack.npy#i`` pick image ``i`` of a stacked ``(N, H, W)`` NumPy array, which is how
the phantom stores thousands of slices without thousands of files. ``volume.nii.gz#k`` picks axial slice ``k``
(the last array axis, as stored: no reorientation, so an image and a mask from the same space stay aligned) of a
3-D NIfTI volume. A stack named ``*.bits.npy`` holds bit-packed masks (``np.packbits`` along the last axis),
eight times smaller than one byte a pixel.

Usage::

    from lungnet.data.io import read_image, read_mask, read_dicom_series

    image = read_image("scan/slice-042.dcm")                # float32 HU
    mask = read_mask("masks/0001.png", image.shape)          # uint8 0/1, shape checked
    ct = read_image("case_001.nii.gz#57")                    # slice 57 of a NIfTI volume
    volume, z = read_dicom_series("LIDC-IDRI-0001/series-folder")  # (N, H, W) HU, sorted by z
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from lungnet.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".npy", ".npz")
# Files whose references may carry ``#i``: stacks of slices and 3-D volumes.
_INDEXABLE_SUFFIXES = (".npy", ".nii", ".nii.gz")


def file_suffix(path: str) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def split_reference(ref: str) -> tuple[str, int | None]:
    """``'a/b.npy#12'`` -> ``('a/b.npy', 12)`` (also ``.nii``/``.nii.gz``); a plain path -> ``(path, None)``."""
    path, sep, index = str(ref).rpartition("#")
    if sep and file_suffix(path) in _INDEXABLE_SUFFIXES and index.isdigit():
        return path, int(index)
    return str(ref), None


def _file_key(path: str) -> tuple[str, int, int]:
    # The caches below key on modification time and size too, so a file rebuilt in place (a data cache
    # regenerated with other settings) is re-opened instead of served from a stale memory map.
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=32)
def _open_stack(key: tuple[str, int, int]) -> np.ndarray:
    return np.load(key[0], mmap_mode="r")


@functools.lru_cache(maxsize=4)
def _open_nifti(key: tuple[str, int, int]):
    import nibabel as nib

    return nib.load(key[0])


def read_image(ref: str) -> np.ndarray:
    """Read a 2-D image as float32 (a 3-D volume with one slice is squeezed; RGB is averaged to grey)."""
    array = _read_array(ref)
    if (
        array.ndim == 3
        and array.shape[-1] in (3, 4)
        and file_suffix(split_reference(ref)[0])
        in (
            ".png",
            ".jpg",
            ".jpeg",
            ".bmp",
            ".tif",
            ".tiff",
        )
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
        if index is not None and suffix == ".npy":
            stack = _open_stack(_file_key(path))
            if not 0 <= index < len(stack):
                raise DataError(f"{ref}: index {index} out of range for a stack of {len(stack)}")
            item = np.asarray(stack[index])
            if path.lower().endswith(".bits.npy"):  # bit-packed masks (np.packbits along the last axis)
                item = np.unpackbits(item, axis=-1)
            return item
        if index is not None:
            return _read_nifti_slice(path, index)
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
    # get_fdata applies the scl_slope/scl_inter scaling, which is how NIfTI stores HU.
    return np.asarray(_open_nifti(_file_key(path)).get_fdata(dtype=np.float32))


def _read_nifti_slice(path: str, index: int) -> np.ndarray:
    image = _open_nifti(_file_key(path))
    shape = image.shape
    if len(shape) != 3:
        raise DataError(
            f"{path}#{index}: slice references need a 3-D NIfTI volume, this one has shape {shape}"
        )
    if not 0 <= index < shape[2]:
        raise DataError(f"{path}#{index}: slice {index} out of range for a volume of {shape[2]} slices")
    # Slicing the proxy reads one slice (memory-mapped for .nii) and applies scl_slope/scl_inter.
    return np.asarray(image.dataobj[..., index], dtype=np.float32)


def list_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> list[tuple[float, Path]]:
    """The image files of one DICOM series in `folder` as ``(z, path)`` sorted by z, headers only.

    z is ``ImagePositionPatient[2]``. Files that are not DICOM (an annotation XML beside the slices) are
    skipped. Several slices at one z keep the lowest ``InstanceNumber``, as pylidc does, so indices agree with
    pylidc's ``scan.slice_zvals``. With ``series_uid=None`` the folder must hold exactly one series.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: DICOM folder not found")
    by_series: dict[str, list[tuple[float, float, Path]]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "")).strip()
        if series_uid is not None and uid != series_uid:
            continue
        position = getattr(ds, "ImagePositionPatient", None)
        if position is None or len(position) != 3:
            if "Rows" not in ds:
                continue  # a non-image object of the series (a structured report, a presentation state)
            raise DataError(f"{path}: DICOM slice has no ImagePositionPatient, cannot place it in its series")
        instance = float(getattr(ds, "InstanceNumber", 0) or 0)
        by_series.setdefault(uid, []).append((float(position[2]), instance, path))
    if not by_series:
        wanted = f" of series {series_uid}" if series_uid else ""
        raise DataError(f"{folder}: no DICOM image files{wanted}")
    if len(by_series) > 1:
        raise DataError(f"{folder}: holds {len(by_series)} DICOM series {sorted(by_series)}; pass series_uid")
    slices: dict[float, tuple[float, Path]] = {}
    for z, instance, path in next(iter(by_series.values())):
        if z not in slices or instance < slices[z][0]:
            slices[z] = (instance, path)
    return [(z, slices[z][1]) for z in sorted(slices)]


def read_dicom_series(
    folder: str | os.PathLike, series_uid: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series as an ``(N, H, W)`` float32 HU volume sorted by z, and its ``(N,)`` z positions."""
    slices = list_dicom_series(folder, series_uid)
    images = [read_dicom_hu(str(path)) for _, path in slices]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataError(f"{folder}: slices of one series have different shapes {sorted(shapes)}")
    return np.stack(images), np.array([z for z, _ in slices])
