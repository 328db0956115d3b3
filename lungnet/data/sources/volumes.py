"""CT collections made of volumes (LUNA16, MSD Lung, LNDb, LungCT-Diagnosis, Lung-PET-CT-Dx): the shared parts.

A collection is given as ``NAME:ROOT`` (``luna16:/data/LUNA16``). Its module registers a `Collection` with
two plain functions, so that `lungnet.data.harmonize` can run the heavy half in parallel processes (or on a
Dask cluster) one volume at a time:

- ``list_volumes(root) -> (tasks, skipped)``: cheap. Reads the collection's own index files and lays out one
  `VolumeTask` per CT volume. A problem that makes the whole collection unusable (no annotation file, an
  unreadable index) is a `DataError` naming the file; a problem of one volume (a series uid with no image) is
  a `Skipped` entry, reported in the build's summary.
- ``read_volume(task) -> list[SliceSample]``: heavy. Reads one volume and returns the axial slices the
  collection contributes (slices with a lesion mask, or the labelled slices of a classification-only
  collection), in Hounsfield units with their masks. A bad volume raises `DataError` naming its file; the
  build skips it and reports it.

Geometry follows ITK: an image's index (i, j, k) = (column, row, slice) maps to world millimetres (x, y, z) by
``origin + direction @ (spacing * index)``; arrays here are (slice, row, column) = (z, y, x).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungnet.errors import DataError

# Lung window of the multi-dataset paper: -1200 .. 0 HU -> 0 .. 255.
LUNG_WINDOW_HU = (-1200.0, 0.0)
MASK_KINDS = ("contour", "sphere", "box", "none")


@dataclass(frozen=True)
class VolumeTask:
    """One CT volume to harmonise: picklable, so it can travel to a worker process or a cluster."""

    dataset: str  # the collection's name, e.g. "luna16"
    volume_id: str  # the source's own id of the volume (series uid, "LNDb-0001", "lung_001", ...)
    patient_id: str
    paths: tuple[str, ...]  # the files (or the DICOM folder) to read
    info: dict = field(default_factory=dict)  # what the collection needs for this volume (its annotations)


@dataclass(frozen=True)
class Skipped:
    """A volume (or one of its annotations) left out of a build, and why."""

    dataset: str
    item: str  # the volume id or the file
    reason: str


@dataclass
class SliceSample:
    """One axial slice a collection contributes."""

    hu: np.ndarray  # (rows, columns) float32 Hounsfield units
    mask: np.ndarray | None  # (rows, columns) uint8 0/1 lesion mask; None for a classification-only slice
    slice_index: int  # index of the slice in its volume (z order)
    label: str | None = None  # "benign" / "malignant" (None: unknown)
    mask_kind: str = "contour"  # contour (drawn outline), sphere (from a diameter), box (from a box), none
    pixel_spacing_mm: float | None = None
    extra: dict = field(default_factory=dict)  # the source's own ids and values (nodule id, reader, ...)

    def __post_init__(self):
        if self.hu.ndim != 2:
            raise DataError(f"slice {self.slice_index}: image must be 2-D, got shape {self.hu.shape}")
        if self.mask is not None and self.mask.shape != self.hu.shape:
            raise DataError(
                f"slice {self.slice_index}: mask shape {self.mask.shape} does not match the image's "
                f"{self.hu.shape}"
            )
        if self.mask_kind not in MASK_KINDS:
            raise DataError(f"slice {self.slice_index}: mask_kind {self.mask_kind!r} not in {MASK_KINDS}")


@dataclass(frozen=True)
class Collection:
    name: str
    description: str  # the words reports use for it
    list_volumes: Callable[[Path], tuple[list[VolumeTask], list[Skipped]]]
    read_volume: Callable[[VolumeTask], list[SliceSample]]


# name -> module that registers it (imported on first use, so `lungnet` starts without SimpleITK or pydicom)
COLLECTION_MODULES = {
    "luna16": "lungnet.data.sources.luna16",
    "msd-lung": "lungnet.data.sources.msd_lung",
    "lndb": "lungnet.data.sources.lndb",
    "lungct-diagnosis": "lungnet.data.sources.lungct_diagnosis",
    "lung-pet-ct-dx": "lungnet.data.sources.lung_pet_ct_dx",
}
_COLLECTIONS: dict[str, Collection] = {}


def register_collection(collection: Collection) -> Collection:
    _COLLECTIONS[collection.name] = collection
    return collection


def get_collection(name: str) -> Collection:
    if name not in _COLLECTIONS:
        if name not in COLLECTION_MODULES:
            known = sorted(set(COLLECTION_MODULES) | set(_COLLECTIONS))
            raise DataError(f"unknown CT collection {name!r}; choose one of {', '.join(known)}")
        importlib.import_module(COLLECTION_MODULES[name])
    return _COLLECTIONS[name]


def parse_collection_spec(spec: str) -> tuple[str, Path] | None:
    """(name, root) of ``NAME:ROOT`` for a known collection name, else None (some other kind of source)."""
    name, sep, root = str(spec).partition(":")
    if not sep or name not in set(COLLECTION_MODULES) | set(_COLLECTIONS):
        return None
    if not root:
        raise DataError(f"{spec}: give the collection's folder, as {name}:ROOT")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{spec}: folder {path} not found")
    return name, path


# ----------------------------------------------------------------------------------------------- volumes
@dataclass(frozen=True)
class Volume:
    """A CT volume in HU with its ITK geometry."""

    hu: np.ndarray  # (z, y, x) float32
    spacing_xyz: tuple[float, float, float]  # mm
    origin_xyz: tuple[float, float, float]  # mm
    direction: np.ndarray  # (3, 3), columns: the world directions of the i, j, k axes

    def world_to_index(self, xyz) -> np.ndarray:
        """Continuous (i, j, k) = (column, row, slice) index of world points (n, 3) or (3,) in mm."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        rel = xyz - np.asarray(self.origin_xyz)
        index = np.linalg.solve(self.direction, rel.T).T / np.asarray(self.spacing_xyz)
        return index

    def world_to_voxel(self, xyz) -> np.ndarray:
        """Nearest (z, y, x) array indices of world points, as ints, shape (n, 3)."""
        index = np.rint(self.world_to_index(xyz)).astype(int)
        return index[:, ::-1]


def read_sitk_volume(path: str | Path) -> Volume:
    """A MetaImage (.mhd + .raw) or NIfTI volume with SimpleITK, in HU (the files store HU)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise DataError(f"{path}: not a readable image ({first})") from None
    if image.GetDimension() != 3:
        raise DataError(f"{path}: a CT volume must be 3-D, this image has {image.GetDimension()} dimensions")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    return Volume(
        hu=hu,
        spacing_xyz=tuple(float(s) for s in image.GetSpacing()),
        origin_xyz=tuple(float(o) for o in image.GetOrigin()),
        direction=np.asarray(image.GetDirection(), dtype=float).reshape(3, 3),
    )


def sphere_mask(shape_zyx, centre_zyx, radius_mm: float, spacing_zyx) -> np.ndarray:
    """A (z, y, x) uint8 ball of `radius_mm` around a voxel centre, in physical units (anisotropic voxels)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_zyx, spacing_zyx, strict=True))
    return (dist2 <= radius_mm**2).astype(np.uint8)


def lung_window_8bit(hu: np.ndarray, window=LUNG_WINDOW_HU) -> np.ndarray:
    """HU -> uint8 with the paper's lung window (values outside it saturate)."""
    low, high = window
    scaled = (np.asarray(hu, dtype=np.float32) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
