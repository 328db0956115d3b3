"""The harmonize engine: one manifest from CT collections, atomic and resumable per volume, bad volumes
skipped and reported, the paper's patient-level split, local processes and a Dask cluster alike."""

from __future__ import annotations

import fake_ct_collection  # noqa: F401  (registers fake-ct)
import numpy as np
import pandas as pd
import pytest

from lungnet.data.harmonize import harmonize, paper_table, unify_labels, volume_folder
from lungnet.data.io import read_image, read_mask
from lungnet.data.sources.volumes import Volume, lung_window_8bit, sphere_mask
from lungnet.errors import ConfigError, DataError


def _collection(root, n=10, broken=()):
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "volume_id": f"v{i:02d}",
            "patient_id": f"P{i // 2:02d}",  # two volumes a patient
            "label": "malignant" if i % 4 < 2 else ("benign" if i % 8 < 6 else ""),
            "slices": 2 + i % 2,
            "broken": int(i in broken),
        }
        for i in range(n)
    ]
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    return f"fake-ct:{root}"


def test_lung_window_and_geometry_helpers():
    assert lung_window_8bit(np.array([-1500.0, -1200.0, -600.0, 0.0, 400.0])).tolist() == [
        0,
        0,
        128,
        255,
        255,
    ]
    direction = np.diag([-1.0, 1.0, 1.0])  # x flipped
    volume = Volume(np.zeros((4, 8, 8), np.float32), (0.5, 0.7, 2.0), (10.0, -20.0, -100.0), direction)
    # voxel (z=3, y=5, x=2) is at x = 10 - 2*0.5, y = -20 + 5*0.7, z = -100 + 3*2
    assert volume.world_to_voxel([9.0, -16.5, -94.0]).tolist() == [[3, 5, 2]]
    ball = sphere_mask((5, 11, 11), (2, 5, 5), 2.0, (2.0, 1.0, 1.0))
    assert ball[2, 5, 5] and ball[2, 5, 7] and not ball[2, 5, 8] and ball[3, 5, 5] and not ball[4, 5, 5]


def test_harmonize_writes_one_manifest_with_the_paper_split(tmp_path):
    spec = _collection(tmp_path / "fake", n=40)
    result = harmonize([spec], tmp_path / "out", workers=1, progress=False)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype={"patient_id": str})
    assert len(manifest) == len(result.manifest) == sum(2 + i % 2 for i in range(40))
    row = manifest.iloc[0]
    image, mask = (
        read_image(str(tmp_path / "out" / row["image"])),
        read_mask(str(tmp_path / "out" / row["mask"])),
    )
    assert image[0, 0] == lung_window_8bit(np.array([-1000.0]))[0]
    assert mask.sum() == row["mask_pixels"] and image[mask > 0].min() == 255  # 40 HU saturates the window
    # patient level: one split per patient, about 64 / 16 / 20 of the 20 patients
    assert manifest.groupby("patient_id")["paper_split"].nunique().max() == 1
    patients = manifest.drop_duplicates("patient_id")["paper_split"].value_counts()
    assert patients["test"] >= 3 and patients["val"] >= 2 and patients["train"] >= 10
    table = paper_table(manifest)
    assert table["slices"].sum() == len(manifest) and list(table["split"]) == ["train", "val", "test"]
    summary = result.summary.set_index("dataset").loc["fake-ct"]
    assert summary["volumes_written"] == 40 and summary["skipped"] == 0 and summary["patients"] == 20


def test_a_bad_volume_is_skipped_and_reported_then_the_build_resumes(tmp_path):
    spec = _collection(tmp_path / "fake", n=6)
    (tmp_path / "fake" / "v03.broken").write_text("")
    first = harmonize([spec], tmp_path / "out", workers=1, progress=False)
    assert first.built == 5 and list(first.skipped["item"]) == ["v03"]
    assert "v03.mhd: truncated" in first.skipped["reason"].iloc[0]
    assert not any(p.name.startswith("v03") for p in (tmp_path / "out" / "fake-ct").iterdir())
    # a killed build's partial folder is removed; finished volumes are not read again
    (tmp_path / "out" / "fake-ct" / "v03.partial-dead").mkdir()
    (tmp_path / "fake" / "v03.broken").unlink()
    second = harmonize([spec], tmp_path / "out", workers=1, progress=False)
    assert (second.built, second.reused) == (1, 5) and second.skipped.empty
    assert not list((tmp_path / "out" / "fake-ct").glob("*.partial-*"))
    assert second.manifest["volume_id"].nunique() == 6


def test_parallel_processes_and_a_dask_cluster_give_the_same_manifest(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    spec = _collection(tmp_path / "fake", n=6, broken=(4,))
    local = harmonize([spec], tmp_path / "local", workers=2, progress=False)
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        remote = harmonize([spec], tmp_path / "dask", cluster=cluster.scheduler_address, progress=False)
    key = ["volume_id", "slice_index"]
    a, b = (r.manifest.sort_values(key).reset_index(drop=True) for r in (local, remote))
    pd.testing.assert_frame_equal(a, b)
    assert list(local.skipped["item"]) == list(remote.skipped["item"]) == ["v04"]


def test_patient_label_unification():
    manifest = pd.DataFrame(
        {"patient_id": ["A", "A", "B", "C"], "label": ["benign", "malignant", "benign", ""], "dataset": "x"}
    )
    unified = unify_labels(manifest)
    assert list(unified["label"]) == ["malignant", "malignant", "benign", ""]
    assert list(unified["slice_label"]) == ["benign", "malignant", "benign", ""]


def test_bad_specs_and_outputs(tmp_path):
    with pytest.raises(DataError, match="not a CT collection"):
        harmonize(["nosuch:/tmp"], tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="not found"):
        harmonize([f"fake-ct:{tmp_path / 'missing'}"], tmp_path / "out", progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        harmonize([_collection(tmp_path / "fake", n=2)], tmp_path / "file", progress=False)
    spec = _collection(tmp_path / "allbad", n=2, broken=(0, 1))
    with pytest.raises(DataError, match="no slice was written"):
        harmonize([spec], tmp_path / "out2", workers=1, progress=False)
    assert len(pd.read_csv(tmp_path / "out2" / "skipped.csv")) == 2


def test_volume_folders_have_safe_names(tmp_path):
    from lungnet.data.sources.volumes import VolumeTask

    task = VolumeTask("fake-ct", "1.3.6/../x y", "P", ())
    folder = volume_folder(tmp_path, task)
    assert folder.parent == tmp_path / "fake-ct" and "/" not in folder.name and " " not in folder.name


def test_cli_harmonize_then_info_prints_the_papers_table(tmp_path, capsys):
    from lungnet.cli import main

    spec = _collection(tmp_path / "fake", n=24)
    out = tmp_path / "out"
    assert main(["data", "harmonize", spec, "--out", str(out), "--workers", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "60 slices" in printed and "24 volumes built" in printed
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the paper's split" in printed and "segmentation_slices" in printed


def test_a_collection_is_a_data_source_everywhere(tmp_path):
    from lungnet.data.registry import load_source
    from lungnet.data.sources.phantom import PhantomConfig

    spec = _collection(tmp_path / "fake", n=4)
    source = load_source(spec, PhantomConfig(cache_dir=str(tmp_path / "cache")), progress=False)
    assert len(source.manifest) == 10 and "a fake collection" in source.description
    assert (tmp_path / "cache" / "harmonized").is_dir()
    assert source.manifest["mask"].str.endswith("_mask.png").all()


def test_collection_options_reach_list_volumes_and_bad_ones_are_named(tmp_path):
    from lungnet.cli import _collection_options

    assert _collection_options(["luna16.malignancy_rule=median", "lungct-diagnosis.slice_step=2"]) == {
        "luna16": {"malignancy_rule": "median"},
        "lungct-diagnosis": {"slice_step": 2},
    }
    with pytest.raises(ConfigError, match="NAME.KEY=VALUE"):
        _collection_options(["malignancy_rule=median"])
    spec = _collection(tmp_path / "fake", n=2)
    with pytest.raises(ConfigError, match="unknown option"):
        harmonize([spec], tmp_path / "out", options={"fake-ct": {"nope": 1}}, progress=False)
    with pytest.raises(ConfigError, match="no source names"):
        harmonize([spec], tmp_path / "out", options={"luna16": {"malignancy_rule": "median"}}, progress=False)


def test_segmentation_leaves_out_classification_only_slices(tmp_path):
    from lungnet.data.registry import load_source
    from lungnet.data.segmentation import SegmentationDataConfig, segmentation_frame

    harmonize([_collection(tmp_path / "fake", n=4)], tmp_path / "out", workers=1, progress=False)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str)
    manifest.loc[: len(manifest) // 2 - 1, "mask"] = ""  # as LungCT-Diagnosis slices would be
    manifest.to_csv(tmp_path / "out" / "manifest.csv", index=False)
    source = load_source(str(tmp_path / "out"))
    with pytest.warns(UserWarning, match="5 rows without a mask"):
        frame, _ = segmentation_frame(
            source, SegmentationDataConfig(source=str(tmp_path / "out")), progress=False
        )
    assert len(frame) == len(manifest) - 5
