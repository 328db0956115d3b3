"""MSD Task06_Lung loader on tiny NIfTI files written in the Decathlon layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from lungnet.data.sources import msd_lung  # noqa: E402
from lungnet.data.sources.volumes import get_collection  # noqa: E402
from lungnet.errors import DataError  # noqa: E402

SHAPE = (12, 48, 48)  # z, y, x
SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
ORIGIN = (-180.0, -150.0, -320.0)
LESION = (slice(4, 8), slice(20, 26), slice(10, 17))  # 4 slices of a 6 x 7 cube


def ct_array(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 401, size=SHAPE).astype(np.int16)
    hu[0, 0, 0], hu[0, 0, 1] = -1000, 400  # the full range is present
    return hu


def write_nifti(path: Path, array: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def make_task(parent: Path, cases: dict[str, tuple[np.ndarray | None, np.ndarray | None]], extra=()) -> Path:
    """Task06_Lung under `parent` with one training entry per case (None: that file is not written)."""
    folder = parent / "Task06_Lung"
    training = []
    for case, (image, label) in cases.items():
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        if image is not None:
            write_nifti(folder / "imagesTr" / f"{case}.nii.gz", image)
        if label is not None:
            write_nifti(folder / "labelsTr" / f"{case}.nii.gz", label)
    training += list(extra)
    write_nifti(folder / "imagesTs" / "lung_002.nii.gz", ct_array(9))
    index = {
        "name": "Lung",
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(training),
        "training": training,
        "test": ["./imagesTs/lung_002.nii.gz"],
    }
    (folder / "dataset.json").write_text(json.dumps(index))
    return folder


def lesion_label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[LESION] = 1
    return label


def test_lists_training_cases_from_either_root_and_reads_tumour_slices(tmp_path):
    image = ct_array()
    folder = make_task(
        tmp_path,
        {"lung_001": (image, lesion_label()), "lung_003": (ct_array(1), None)},
        extra=[{"image": "./imagesTr/._lung_001.nii.gz", "label": "./labelsTr/._lung_001.nii.gz"}],
    )
    (folder / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS junk

    for root in (tmp_path, folder):
        tasks, skipped = msd_lung.list_volumes(root)
        assert [t.volume_id for t in tasks] == ["lung_001"]  # test image and junk are no tasks
        assert [(s.dataset, s.item) for s in skipped] == [("msd-lung", "lung_003")]
        assert "lung_003.nii.gz" in skipped[0].reason
    task = pickle.loads(pickle.dumps(tasks[0]))
    assert task.patient_id == "lung_001" and task.dataset == "msd-lung"

    samples = get_collection("msd-lung").read_volume(task)
    assert [s.slice_index for s in samples] == [4, 5, 6, 7]
    for s in samples:
        assert s.hu.dtype == np.float32 and s.hu.shape == SHAPE[1:]
        np.testing.assert_array_equal(s.hu, image[s.slice_index])  # HU kept, no flips or resampling
        assert s.mask.dtype == np.uint8 and int(s.mask.sum()) == 6 * 7
        np.testing.assert_array_equal(s.mask, lesion_label()[s.slice_index])
        assert s.label == "malignant" and s.mask_kind == "contour"
        assert s.pixel_spacing_mm == pytest.approx(0.8)
        assert s.extra == {"msd_case": "lung_001"}
    assert min(s.hu.min() for s in samples) >= -1000 and max(s.hu.max() for s in samples) <= 400


def test_missing_dataset_json_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"dataset\.json: not found.*Task06_Lung"):
        msd_lung.list_volumes(tmp_path)


def test_bad_json_names_line_and_column(tmp_path):
    (tmp_path / "dataset.json").write_text('{"training": [\n  oops]}')
    with pytest.raises(DataError, match=r"dataset\.json: not valid JSON \(line 2, column 3"):
        msd_lung.list_volumes(tmp_path)


def test_another_decathlon_task_is_refused(tmp_path):
    folder = make_task(tmp_path, {"lung_001": (ct_array(), lesion_label())})
    index = json.loads((folder / "dataset.json").read_text())
    index["labels"] = {"0": "background", "1": "liver", "2": "cancer"}
    (folder / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="Task06_Lung has exactly 0"):
        msd_lung.list_volumes(tmp_path)


def test_label_of_another_shape_names_both_files(tmp_path):
    make_task(tmp_path, {"lung_001": (ct_array(), np.zeros((10, 48, 48), np.uint8))})
    (task,), _ = msd_lung.list_volumes(tmp_path)
    with pytest.raises(
        DataError,
        match=r"labelsTr/lung_001\.nii\.gz: label shape \(10, 48, 48\).*/imagesTr/lung_001\.nii\.gz",
    ):
        msd_lung.read_volume(task)


def test_label_values_other_than_0_1_name_file_and_values(tmp_path):
    label = lesion_label()
    label[0, :2, :2] = 2
    make_task(tmp_path, {"lung_001": (ct_array(), label)})
    (task,), _ = msd_lung.list_volumes(tmp_path)
    with pytest.raises(DataError, match=r"labelsTr/lung_001\.nii\.gz: label values .* found \[0, 1, 2\]"):
        msd_lung.read_volume(task)


def test_missing_image_is_skipped(tmp_path):
    make_task(tmp_path, {"lung_004": (None, lesion_label())})
    tasks, skipped = msd_lung.list_volumes(tmp_path)
    assert tasks == [] and [s.item for s in skipped] == ["lung_004"]
    assert "imagesTr/lung_004.nii.gz not found" in skipped[0].reason


def test_harmonized_in_worker_processes_with_the_lung_window(tmp_path):
    from lungnet.data.harmonize import harmonize, paper_table
    from lungnet.data.io import read_image, read_mask
    from lungnet.data.sources.volumes import lung_window_8bit

    cases = {f"lung_{i:03d}": (ct_array(i), lesion_label()) for i in range(1, 7)}
    make_task(tmp_path, cases)
    result = harmonize([f"msd-lung:{tmp_path}"], tmp_path / "out", workers=2, progress=False)
    manifest = result.manifest
    assert len(manifest) == 6 * 4 and set(manifest["label"]) == {"malignant"}
    row = manifest[(manifest["volume_id"] == "lung_003") & (manifest["slice_index"] == 5)].iloc[0]
    image = read_image(str(tmp_path / "out" / row["image"]))
    expected = lung_window_8bit(ct_array(3)[5].astype(np.float32))
    np.testing.assert_array_equal(image.astype(np.uint8), expected)
    assert read_mask(str(tmp_path / "out" / row["mask"])).sum() == 6 * 7
    table = paper_table(manifest)
    assert table["patients"].sum() == 6 and table["slices"].sum() == 24
