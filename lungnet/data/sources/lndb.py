"""LNDb challenge CTs (``lndb:ROOT``): MetaImage CTs, one mask per reader, and the findings tables.

Layout (as downloaded; every file is searched for under ROOT, sub-folders included)::

    data0/LNDb-0001.mhd (+ .raw) ... data5/...   # the CTs
    masks/LNDb-0001_rad1.mhd (+ .raw)            # reader R's mask: voxel value = that reader's FindingID
    trainNodules.csv      # LNDbID, RadID, FindingID, x, y, z, Nodule, Volume, Text (a row per reader finding)
    trainNodules_gt.csv   # optional: findings merged across readers, with AgrLevel (readers who found it)

In ``trainNodules.csv``, x, y, z are the finding's centre in world mm; Nodule is 1 for a nodule and 0 for a
non-nodule lesion; Volume is in mm^3; Text is the reader's texture rating. Only nodules >= 3 mm were
segmented, so a listed nodule whose id is not in its reader's mask (usually one < 3 mm) is reported as
skipped. ``trainNodules_gt.csv`` lists, per merged finding, the readers (RadID, e.g. ``"1,2"``) and each
reader's own finding id (RadFindingID, ``"3,1"``); it gives each reader finding its ``agreement_level``.

One task per CT with at least one reader mask and one nodule finding; `read_volume` yields one sample per
(reader, nodule finding, axial slice) with that reader's mask of that finding. LNDb publishes no patient id
besides the CT's, so the CT id (``LNDb-0001``) is also the patient id.

Labels. LNDb gives no malignancy or diagnosis. Of the readers' LIDC-style ratings only texture (``Text``) is
released per finding: how solid the nodule looks (1-2 ground-glass / non-solid, 3 part-solid, 4-5 solid), as
used by the challenge's texture task and its Fleischner follow-up classes. It measures attenuation, not
malignancy: most solid nodules are benign, and persistent part-solid ones carry the highest cancer risk. A
benign/malignant label for LNDb can therefore only be a proxy on this column; the rule offered here is
``label_rule="texture-solid"`` (texture 4-5 -> "malignant", 1-3 -> "benign", anything else -> None), a proxy
and not a diagnosis. The default, ``"none"``, leaves every label None: LNDb then serves segmentation only.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.sources.volumes import (
    Collection,
    Skipped,
    SliceSample,
    Volume,
    VolumeTask,
    read_sitk_volume,
    register_collection,
)
from lungnet.errors import DataError

logger = logging.getLogger(__name__)

NAME = "lndb"
NODULES_FILE = "trainNodules.csv"
GT_FILE = "trainNodules_gt.csv"
LABEL_RULES = ("none", "texture-solid")
NODULE_COLUMNS = ("LNDbID", "RadID", "FindingID", "x", "y", "z", "Nodule", "Volume", "Text")
GT_COLUMNS = ("LNDbID", "RadID", "RadFindingID", "FindingID", "AgrLevel")
_CT_NAME = re.compile(r"^LNDb-(\d+)\.mhd$")
_MASK_NAME = re.compile(r"^LNDb-(\d+)_rad(\d+)\.mhd$")


def volume_id(lndb_id: int) -> str:
    return f"LNDb-{lndb_id:04d}"


def texture_label(texture: float, label_rule: str = "none") -> str | None:
    """The label `label_rule` gives a finding of this texture rating (see the module docstring)."""
    check_label_rule(label_rule)
    if label_rule == "none" or not (isinstance(texture, int | float) and 1 <= texture <= 5):
        return None
    return "malignant" if texture >= 4 else "benign"


def check_label_rule(label_rule: str) -> None:
    if label_rule not in LABEL_RULES:
        raise DataError(f"lndb: label_rule {label_rule!r} is not one of {', '.join(LABEL_RULES)}")


# ------------------------------------------------------------------------------------------------ indexes
def find_index_file(root: Path, name: str, required: bool) -> Path | None:
    """ROOT/name, else the one copy of it in ROOT's sub-folders; None (or DataError when required)."""
    if (root / name).is_file():
        return root / name
    hits = sorted(p for p in root.rglob(name) if p.is_file() and not p.name.startswith("._"))
    if len(hits) > 1:
        raise DataError(f"{root}: several {name} files ({', '.join(map(str, hits))}); keep only one")
    if not hits and required:
        raise DataError(f"{root / name}: not found, nor anywhere under {root}; LNDb needs its {name}")
    return hits[0] if hits else None


def _read_csv(path: Path, columns: tuple[str, ...], **kwargs) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, **kwargs)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}"
        )
    return table


def _numeric(table: pd.DataFrame, path: Path, column: str, *, integer: bool, required: bool) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = (values.isna() & table[column].notna()) | (required & values.isna())
    if integer:
        bad |= values.notna() & (values != values.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = table[column].iloc[row]
        problem = "is empty" if pd.isna(value) else f"is not {'an integer' if integer else 'a number'}"
        raise DataError(f"{path}: line {row + 2}, column {column}: {value!r} {problem}")
    return values.astype("Int64") if integer else values.astype(float)


def read_nodules(path: Path) -> pd.DataFrame:
    """``trainNodules.csv`` with typed columns; DataError naming the line and column of a bad value."""
    raw = _read_csv(path, NODULE_COLUMNS)
    table = pd.DataFrame(index=raw.index)
    for column in NODULE_COLUMNS:
        integer = column in ("LNDbID", "RadID", "FindingID", "Nodule")
        required = column not in ("Volume", "Text")  # non-nodules may leave them empty
        table[column] = _numeric(raw, path, column, integer=integer, required=required)
    duplicated = table.duplicated(["LNDbID", "RadID", "FindingID"], keep=False)
    if duplicated.any():
        rows = np.flatnonzero(duplicated.to_numpy())[:2] + 2
        first = table.iloc[rows[0] - 2]
        raise DataError(
            f"{path}: lines {rows[0]} and {rows[1]} both list LNDbID {first.LNDbID}, RadID {first.RadID}, "
            f"FindingID {first.FindingID}"
        )
    return table


def _id_list(value, path: Path, line: int, column: str) -> list[int]:
    """``"1,2"`` / ``"3"`` -> [1, 2] / [3]."""
    try:
        numbers = [float(part) for part in str(value).split(",")]
    except ValueError:
        numbers = []
    if not numbers or any(not math.isfinite(n) or n != int(n) for n in numbers):
        raise DataError(f"{path}: line {line}, column {column}: {value!r} is not a comma-separated id list")
    return [int(n) for n in numbers]


def read_agreement(path: Path) -> dict[tuple[int, int, int], tuple[float, float]]:
    """``trainNodules_gt.csv`` as (LNDbID, RadID, reader FindingID) -> (AgrLevel, merged FindingID)."""
    raw = _read_csv(path, GT_COLUMNS, dtype={"RadID": str, "RadFindingID": str})
    lndb_ids = _numeric(raw, path, "LNDbID", integer=True, required=True)
    agreement = _numeric(raw, path, "AgrLevel", integer=False, required=False)
    merged = _numeric(raw, path, "FindingID", integer=False, required=False)
    out = {}
    for row in range(len(raw)):
        line = row + 2
        rads = _id_list(raw["RadID"].iloc[row], path, line, "RadID")
        finds = _id_list(raw["RadFindingID"].iloc[row], path, line, "RadFindingID")
        if len(rads) != len(finds):
            raise DataError(
                f"{path}: line {line}: RadID {raw['RadID'].iloc[row]!r} and RadFindingID "
                f"{raw['RadFindingID'].iloc[row]!r} must list one finding id per reader"
            )
        for rad, find in zip(rads, finds, strict=True):
            out[(int(lndb_ids.iloc[row]), rad, find)] = (float(agreement.iloc[row]), float(merged.iloc[row]))
    return out


# ------------------------------------------------------------------------------------------------- images
def find_images(root: Path) -> tuple[dict[int, list[Path]], dict[int, dict[int, list[Path]]]]:
    """CT files by LNDb id, and reader mask files by LNDb id and reader (lists: a copy found twice shows)."""
    cts: dict[int, list[Path]] = defaultdict(list)
    masks: dict[int, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith("._"):  # AppleDouble junk of macOS archives
                continue
            if match := _CT_NAME.match(name):
                cts[int(match[1])].append(Path(folder) / name)
            elif match := _MASK_NAME.match(name):
                masks[int(match[1])][int(match[2])].append(Path(folder) / name)
    return dict(cts), {k: dict(v) for k, v in masks.items()}


def read_header(path: Path) -> Volume:
    """A volume's geometry from its header alone (the voxels are not read): `hu` is a zero-cost stand-in
    of the right shape, so `Volume.world_to_voxel` gives exactly what it gives on the read volume."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise DataError(f"{path}: not a readable image header ({first})") from None
    if reader.GetDimension() != 3:
        raise DataError(f"{path}: a CT volume must be 3-D, this image has {reader.GetDimension()} dimensions")
    return Volume(
        hu=np.broadcast_to(np.float32(0), tuple(reader.GetSize())[::-1]),
        spacing_xyz=tuple(float(s) for s in reader.GetSpacing()),
        origin_xyz=tuple(float(o) for o in reader.GetOrigin()),
        direction=np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3),
    )


def mask_finding_ids(path: Path) -> set[int]:
    """The non-zero values (reader finding ids) of a mask."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable image") from exc
    voxels = sitk.GetArrayViewFromImage(image)  # a view: valid only while `image` lives
    return {int(v) for v in np.unique(voxels[voxels != 0])}  # unique of the few lesion voxels only


# ------------------------------------------------------------------------------------------------ listing
def _num(value) -> float | int:
    """A plain Python number (NaN for missing), int where the value is whole."""
    if pd.isna(value):
        return math.nan
    value = float(value)
    return int(value) if value.is_integer() else value


def list_volumes(
    root: str | Path, label_rule: str = "none", scan_masks: bool = True
) -> tuple[list[VolumeTask], list[Skipped]]:
    """One task per CT with a reader mask and a nodule finding of ``trainNodules.csv`` (``Nodule == 1``).

    `label_rule`: "none" (default: labels None) or "texture-solid" (a texture proxy; see the module
    docstring). `scan_masks`: read each reader mask's voxels once, so that a listed nodule its reader did not
    segment is a Skipped entry here; this reads every mask once, the slow part of listing the full set
    (False: headers only; `read_volume` then drops such a nodule with a logged warning). The CTs' headers
    are read to place each finding's centre; their voxels are not.
    """
    check_label_rule(label_rule)
    root = Path(root)
    nodules_path = find_index_file(root, NODULES_FILE, required=True)
    nodules = read_nodules(nodules_path)
    gt_path = find_index_file(root, GT_FILE, required=False)
    agreement = read_agreement(gt_path) if gt_path else {}
    cts, masks = find_images(root)
    nodules = nodules[nodules["Nodule"] == 1]
    by_ct = {int(k): part for k, part in nodules.groupby("LNDbID")}
    skipped: list[Skipped] = []

    for lndb_id in sorted(set(masks) - set(cts)):
        for paths in masks[lndb_id].values():
            for path in paths:
                skipped.append(Skipped(NAME, str(path), f"reader mask with no CT {volume_id(lndb_id)}.mhd"))
    for lndb_id in sorted(set(by_ct) - set(cts) - set(masks)):
        skipped.append(
            Skipped(NAME, volume_id(lndb_id), f"listed in {nodules_path}, but no CT file found under {root}")
        )

    tasks = []
    for lndb_id in sorted(cts):
        vid = volume_id(lndb_id)
        readers = masks.get(lndb_id, {})
        twice = [p for p in [cts[lndb_id], *readers.values()] if len(p) > 1]
        if twice:
            names = ", ".join(map(str, twice[0]))
            skipped.append(Skipped(NAME, vid, f"found more than once ({names}); keep one copy"))
            continue
        if not readers:
            if lndb_id in by_ct:  # a CT with neither masks nor findings (a test CT) is not reported
                skipped.append(Skipped(NAME, vid, f"no reader mask ({vid}_radR.mhd) found under {root}"))
            continue
        if lndb_id not in by_ct:
            skipped.append(Skipped(NAME, vid, f"has reader masks but no nodule finding in {nodules_path}"))
            continue
        ct_path = cts[lndb_id][0]
        try:
            ct = read_header(ct_path)
        except DataError as exc:
            skipped.append(Skipped(NAME, vid, str(exc)))
            continue
        mask_paths = {rad: paths[0] for rad, paths in readers.items()}
        present = {}  # reader -> finding ids in its mask; a mask of the wrong shape is left to read_volume
        if scan_masks:
            for rad, path in mask_paths.items():
                try:
                    if read_header(path).hu.shape == ct.hu.shape:
                        present[rad] = mask_finding_ids(path)
                except DataError:
                    pass  # read_volume raises it, naming the file

        findings = []
        for row in by_ct[lndb_id].itertuples(index=False):
            rad, fid = int(row.RadID), int(row.FindingID)
            item = f"{vid} rad {rad} finding {fid}"
            xyz = (float(row.x), float(row.y), float(row.z))
            if rad not in mask_paths:
                skipped.append(Skipped(NAME, item, f"reader {rad} has no mask file {vid}_rad{rad}.mhd"))
                continue
            voxel = ct.world_to_voxel(xyz)[0]
            if not all(0 <= v < n for v, n in zip(voxel, ct.hu.shape, strict=True)):
                skipped.append(
                    Skipped(
                        NAME,
                        item,
                        f"centre (x, y, z) = {xyz} mm is voxel (z, y, x) = {tuple(int(v) for v in voxel)}, "
                        f"outside {ct_path} of shape {ct.hu.shape}",
                    )
                )
                continue
            if rad in present and fid not in present[rad]:
                skipped.append(
                    Skipped(
                        NAME,
                        item,
                        f"finding id {fid} is not in {mask_paths[rad]} (ids {sorted(present[rad])}); "
                        "LNDb segments only nodules >= 3 mm",
                    )
                )
                continue
            agr, merged = agreement.get((lndb_id, rad, fid), (math.nan, math.nan))
            findings.append(
                {
                    "rad_id": rad,
                    "finding_id": fid,
                    "x": xyz[0],
                    "y": xyz[1],
                    "z": xyz[2],
                    "texture": _num(row.Text),
                    "volume_mm3": _num(row.Volume),
                    "agreement_level": _num(agr),
                    "gt_finding_id": _num(merged),
                    "label": texture_label(_num(row.Text), label_rule),
                }
            )
        if not findings:
            continue  # each of its findings is reported above
        used = sorted({f["rad_id"] for f in findings})
        tasks.append(
            VolumeTask(
                dataset=NAME,
                volume_id=vid,
                patient_id=vid,
                paths=(str(ct_path), *(str(mask_paths[r]) for r in used)),
                info={
                    "lndb_id": lndb_id,
                    "ct": str(ct_path),
                    "masks": {r: str(mask_paths[r]) for r in used},
                    "findings": findings,
                },
            )
        )
    return tasks, skipped


# ------------------------------------------------------------------------------------------------ reading
def read_volume(task: VolumeTask) -> list[SliceSample]:
    """One sample per (reader, nodule finding, axial slice): the CT slice in HU and ``mask == FindingID``."""
    ct_path = task.info["ct"]
    ct = read_sitk_volume(ct_path)
    pixel_spacing = float(np.mean(ct.spacing_xyz[:2]))  # square in-plane pixels in practice
    by_reader = defaultdict(list)
    for finding in task.info["findings"]:
        by_reader[finding["rad_id"]].append(finding)
    samples = []
    for rad in sorted(by_reader):
        mask_path = task.info["masks"][rad]
        mask = read_sitk_volume(mask_path).hu
        if mask.shape != ct.hu.shape:
            raise DataError(
                f"{mask_path}: reader mask shape {mask.shape} (z, y, x) does not match its CT {ct_path} "
                f"{ct.hu.shape}"
            )
        for finding in by_reader[rad]:
            lesion = mask == finding["finding_id"]
            slices = np.flatnonzero(lesion.any(axis=(1, 2)))
            if not slices.size:  # listed with scan_masks=False; scanned listings report it as skipped
                logger.warning(
                    "%s: finding id %s is not in the mask; left out", mask_path, finding["finding_id"]
                )
                continue
            extra = {"lndb_id": task.info["lndb_id"], **{k: v for k, v in finding.items() if k != "label"}}
            for z in slices:
                samples.append(
                    SliceSample(
                        hu=ct.hu[z],
                        mask=lesion[z].astype(np.uint8),
                        slice_index=int(z),
                        label=finding["label"],
                        mask_kind="contour",
                        pixel_spacing_mm=pixel_spacing,
                        extra=dict(extra),
                    )
                )
    return samples


register_collection(
    Collection(
        name=NAME,
        description="LNDb challenge CTs (per-reader nodule masks; no malignancy labels)",
        list_volumes=list_volumes,
        read_volume=read_volume,
    )
)
