"""LNDb loader on tiny MetaImage CTs, reader masks and findings tables written in the challenge's layout."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sitk = pytest.importorskip("SimpleITK")

from lungnet.data.sources import lndb  # noqa: E402
from lungnet.data.sources.volumes import get_collection, read_sitk_volume  # noqa: E402
from lungnet.errors import DataError  # noqa: E402

SHAPE = (12, 48, 48)  # z, y, x
SPACING = (0.7, 0.6, 2.5)  # x, y, z mm: anisotropic, and x != y so that swapped axes would show
ORIGIN = (-160.5, -140.25, -310.0)
BALL_CENTRE = (6, 20, 30)  # z, y, x voxel of reader 1's finding 1 (and reader 2's finding 1)
CUBE = (slice(2, 4), slice(33, 38), slice(8, 13))  # reader 1's finding 2: 2 slices of 5 x 5


def image(array: np.ndarray, origin=ORIGIN):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(origin)
    return img


def write_mhd(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image(array), str(path))  # .mhd header + .raw voxels


def world(zyx) -> tuple[float, float, float]:
    """World mm of a (z, y, x) voxel, by ITK itself (independent of the loader's geometry)."""
    return image(np.zeros(SHAPE, np.int16)).TransformContinuousIndexToPhysicalPoint(
        tuple(float(v) for v in zyx[::-1])
    )


def ball(radius_mm: float) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cz, cy, cx = BALL_CENTRE
    dist2 = ((z - cz) * SPACING[2]) ** 2 + ((y - cy) * SPACING[1]) ** 2 + ((x - cx) * SPACING[0]) ** 2
    return dist2 <= radius_mm**2


def ct_array(seed: int) -> np.ndarray:
    hu = np.random.default_rng(seed).integers(-1000, 401, size=SHAPE).astype(np.int16)
    hu[0, 0, 0], hu[0, 0, 1] = -1000, 400
    return hu


def nodule_row(rad, fid, zyx, nodule=1, volume=50.0, text=5, lndb_id=1, shift=(0.0, 0.0, 0.0)):
    x, y, z = (c + s for c, s in zip(world(zyx), shift, strict=True))
    return {"LNDbID": lndb_id, "RadID": rad, "FindingID": fid, "x": x, "y": y, "z": z, "Nodule": nodule,
            "Volume": volume, "Text": text}  # fmt: skip


def make_lndb(root: Path) -> dict:
    """LNDb-0001 (2 readers; 3 segmented nodules, 4 listed findings to skip or ignore), LNDb-0002 (a mask of
    the wrong shape) and a mask LNDb-0003_rad1 with no CT."""
    ct1 = ct_array(0)
    write_mhd(root / "data0" / "LNDb-0001.mhd", ct1)
    rad1 = np.zeros(SHAPE, np.uint8)
    rad1[ball(3.0)] = 1
    rad1[CUBE] = 2
    write_mhd(root / "masks" / "LNDb-0001_rad1.mhd", rad1)
    rad2 = ball(2.6).astype(np.uint8)
    write_mhd(root / "masks" / "LNDb-0001_rad2.mhd", rad2)
    write_mhd(root / "data1" / "LNDb-0002.mhd", ct_array(1))
    write_mhd(root / "masks" / "LNDb-0002_rad1.mhd", np.ones((10, 48, 48), np.uint8))
    write_mhd(root / "masks" / "LNDb-0003_rad1.mhd", np.ones(SHAPE, np.uint8))
    (root / "data0" / "._LNDb-0001.mhd").write_bytes(b"\x00\x05\x16\x07")  # macOS junk

    rows = [
        nodule_row(1, 1, BALL_CENTRE, volume=113.1, text=5),
        nodule_row(1, 2, (3, 35, 10), volume=62.5, text=2),
        nodule_row(1, 3, (9, 40, 40), volume=5.0, text=3),  # a nodule < 3 mm: not in the mask
        nodule_row(1, 4, (1, 1, 1), nodule=0, volume=math.nan, text=math.nan),  # a non-nodule: ignored
        nodule_row(1, 5, (6, 20, 100)),  # centre beyond the last column
        nodule_row(2, 1, BALL_CENTRE, volume=80.0, text=4, shift=(0.1, -0.1, 0.4)),
        nodule_row(3, 1, BALL_CENTRE),  # reader 3 has no mask file
        nodule_row(1, 1, (5, 5, 5), lndb_id=2),
    ]
    pd.DataFrame(rows).to_csv(root / "trainNodules.csv", index=False)
    gt = pd.DataFrame(
        [
            {"LNDbID": 1, "RadID": "1,2", "RadFindingID": "1,1", "FindingID": 1, "AgrLevel": 2},
            {"LNDbID": 1, "RadID": "3", "RadFindingID": "1", "FindingID": 1, "AgrLevel": 1},
        ]
    ).assign(x=0.0, y=0.0, z=0.0, Nodule=1, Volume=100.0, Text=4.5)
    gt.to_csv(root / "trainNodules_gt.csv", index=False)
    return {"ct1": ct1, "rad1": rad1, "rad2": rad2}


def by_finding(samples) -> dict[tuple[int, int], list]:
    out: dict[tuple[int, int], list] = {}
    for s in samples:
        out.setdefault((s.extra["rad_id"], s.extra["finding_id"]), []).append(s)
    return out


def test_lists_ct_with_masks_and_skips_each_bad_finding(tmp_path):
    make_lndb(tmp_path)
    tasks, skipped = lndb.list_volumes(tmp_path)
    assert [t.volume_id for t in tasks] == ["LNDb-0001", "LNDb-0002"]
    assert tasks[0].patient_id == "LNDb-0001" and tasks[0].dataset == "lndb"
    reasons = {s.item: s.reason for s in skipped}
    assert set(reasons) == {
        str(tmp_path / "masks" / "LNDb-0003_rad1.mhd"),
        "LNDb-0001 rad 1 finding 3",
        "LNDb-0001 rad 1 finding 5",
        "LNDb-0001 rad 3 finding 1",
    }
    assert "no CT LNDb-0003.mhd" in reasons[str(tmp_path / "masks" / "LNDb-0003_rad1.mhd")]
    assert "finding id 3 is not in" in reasons["LNDb-0001 rad 1 finding 3"]
    assert (
        "outside" in reasons["LNDb-0001 rad 1 finding 5"]
        and "(6, 20, 100)" in reasons["LNDb-0001 rad 1 finding 5"]
    )
    assert "reader 3 has no mask file LNDb-0001_rad3.mhd" in reasons["LNDb-0001 rad 3 finding 1"]
    assert repr(pickle.loads(pickle.dumps(tasks[0]))) == repr(tasks[0])  # repr: NaN != NaN


def test_reads_each_reader_finding_slice_at_its_world_position(tmp_path):
    arrays = make_lndb(tmp_path)
    tasks, _ = lndb.list_volumes(tmp_path)
    samples = get_collection("lndb").read_volume(tasks[0])
    groups = by_finding(samples)
    assert {k: [s.slice_index for s in v] for k, v in groups.items()} == {
        (1, 1): [5, 6, 7],
        (1, 2): [2, 3],
        (2, 1): [5, 6, 7],
    }
    masks = {1: arrays["rad1"], 2: arrays["rad2"]}
    for (rad, fid), group in groups.items():
        for s in group:
            assert s.hu.dtype == np.float32 and s.mask.dtype == np.uint8
            np.testing.assert_array_equal(s.hu, arrays["ct1"][s.slice_index])  # HU and orientation kept
            np.testing.assert_array_equal(s.mask, (masks[rad][s.slice_index] == fid).astype(np.uint8))
            assert s.mask_kind == "contour" and s.label is None
            assert s.pixel_spacing_mm == pytest.approx(0.65)
            assert s.hu.min() >= -1000 and s.hu.max() <= 400
    assert int(sum(s.mask.sum() for s in groups[(1, 2)])) == 2 * 5 * 5

    # The finding's world centre lands in its own mask.
    ct = read_sitk_volume(tasks[0].info["ct"])
    for group in groups.values():
        extra = group[0].extra
        z, y, x = ct.world_to_voxel([extra["x"], extra["y"], extra["z"]])[0]
        (on_slice,) = [s for s in group if s.slice_index == z]
        assert on_slice.mask[y, x] == 1
    assert tuple(ct.world_to_voxel(world(BALL_CENTRE))[0]) == BALL_CENTRE

    first = groups[(1, 1)][0].extra
    assert first["lndb_id"] == 1 and first["texture"] == 5 and first["volume_mm3"] == pytest.approx(113.1)
    assert first["agreement_level"] == 2 and first["gt_finding_id"] == 1
    assert groups[(2, 1)][0].extra["agreement_level"] == 2  # matched through RadID "1,2" / RadFindingID "1,1"
    assert math.isnan(groups[(1, 2)][0].extra["agreement_level"])  # not in the gt file
    assert set(first) == {
        "lndb_id", "rad_id", "finding_id", "x", "y", "z", "texture", "volume_mm3", "agreement_level",
        "gt_finding_id",
    }  # fmt: skip


def test_texture_solid_rule_and_bad_rule(tmp_path):
    make_lndb(tmp_path)
    tasks, _ = lndb.list_volumes(tmp_path, label_rule="texture-solid")
    labels = {k: {s.label for s in v} for k, v in by_finding(lndb.read_volume(tasks[0])).items()}
    assert labels == {(1, 1): {"malignant"}, (1, 2): {"benign"}, (2, 1): {"malignant"}}  # Text 5, 2, 4
    assert lndb.texture_label(3, "texture-solid") == "benign"
    assert lndb.texture_label(math.nan, "texture-solid") is None
    assert lndb.texture_label(5) is None
    with pytest.raises(DataError, match="label_rule 'malignancy' is not one of none, texture-solid"):
        lndb.list_volumes(tmp_path, label_rule="malignancy")


def test_mask_of_another_shape_names_both_files(tmp_path):
    make_lndb(tmp_path)
    tasks, _ = lndb.list_volumes(tmp_path)
    with pytest.raises(
        DataError, match=r"LNDb-0002_rad1\.mhd: reader mask shape \(10, 48, 48\).*LNDb-0002\.mhd"
    ):
        lndb.read_volume(tasks[1])


def test_without_mask_scan_an_unsegmented_finding_is_dropped_when_read(tmp_path, caplog):
    make_lndb(tmp_path)
    tasks, skipped = lndb.list_volumes(tmp_path, scan_masks=False)
    assert "LNDb-0001 rad 1 finding 3" not in {s.item for s in skipped}
    with caplog.at_level(logging.WARNING, logger="lungnet.data.sources.lndb"):
        samples = lndb.read_volume(tasks[0])
    assert set(by_finding(samples)) == {(1, 1), (1, 2), (2, 1)}
    assert "finding id 3 is not in the mask" in caplog.text


def test_missing_nodules_csv_names_where_it_looked(tmp_path):
    make_lndb(tmp_path)
    (tmp_path / "trainNodules.csv").unlink()
    with pytest.raises(DataError, match=r"trainNodules\.csv: not found, nor anywhere under"):
        lndb.list_volumes(tmp_path)


def test_bad_index_values_name_line_and_column(tmp_path):
    make_lndb(tmp_path)
    table = pd.read_csv(tmp_path / "trainNodules.csv")
    table["x"] = table["x"].astype(object)
    table.loc[1, "x"] = "abc"
    table.to_csv(tmp_path / "trainNodules.csv", index=False)
    with pytest.raises(DataError, match=r"trainNodules\.csv: line 3, column x: 'abc' is not a number"):
        lndb.list_volumes(tmp_path)

    make_lndb(tmp_path)
    gt = pd.read_csv(tmp_path / "trainNodules_gt.csv", dtype=str)
    gt.loc[0, "RadFindingID"] = "1"
    gt.to_csv(tmp_path / "trainNodules_gt.csv", index=False)
    with pytest.raises(DataError, match=r"trainNodules_gt\.csv: line 2: RadID '1,2' and RadFindingID '1'"):
        lndb.list_volumes(tmp_path)
