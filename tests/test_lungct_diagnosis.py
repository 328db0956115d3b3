"""LungCT-Diagnosis loader: TCIA layout, one task per CT series, the middle-fraction slices, bad inputs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pydicom
import pytest
from dicom_files import write_ct_slice

from lungnet.data.sources import lungct_diagnosis as lcd
from lungnet.data.sources.volumes import get_collection
from lungnet.errors import DataError

N_SLICES = 6
SIZE = 32


def slice_pixels(k: int) -> np.ndarray:
    """Stored values of the slice k-th in z: HU -1000 at (0, 0), 400 at (-1, -1), -1000 + 10k elsewhere."""
    stored = np.full((SIZE, SIZE), 24 + 10 * k, np.uint16)
    stored[0, 0], stored[-1, -1] = 24, 1424  # with intercept -1024: -1000 and 400 HU
    return stored


def write_series(folder, *, series_uid, patient_id="R_004", n=N_SLICES, modality="CT", pixels=True):
    """`n` slices written in reverse z order (file names and instance numbers against z), so order is tested."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        write_ct_slice(
            folder / f"1-{n - k:02d}.dcm",
            slice_pixels(k),
            z=-100.0 + 2.5 * k,
            series_uid=series_uid,
            patient_id=patient_id,
            instance=n - k,
            modality=modality,
            pixels=pixels,
        )
    return folder


@pytest.fixture
def root(tmp_path):
    write_series(tmp_path / "R_004" / "1.2.3.4" / "1.2.3.4.5", series_uid="1.2.3.4.5")
    return tmp_path


def test_registered():
    assert get_collection("lungct-diagnosis").read_volume is lcd.read_volume


def test_one_series_middle_half_in_z_order(root):
    tasks, skipped = lcd.list_volumes(root)
    assert skipped == []
    assert [(t.dataset, t.volume_id, t.patient_id) for t in tasks] == [
        ("lungct-diagnosis", "1.2.3.4.5", "R_004")
    ]
    assert pickle.loads(pickle.dumps(tasks[0])) == tasks[0]  # travels to worker processes

    samples = lcd.read_volume(tasks[0])
    assert [s.slice_index for s in samples] == [1, 2, 3]  # the middle 3 of 6
    sops = {}
    for path in (root / "R_004" / "1.2.3.4" / "1.2.3.4.5").iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sops[float(ds.ImagePositionPatient[2])] = ds.SOPInstanceUID
    for s in samples:
        assert s.hu.dtype == np.float32 and s.hu.shape == (SIZE, SIZE)
        assert s.hu.min() == -1000.0 and s.hu.max() == 400.0
        assert s.hu[5, 5] == -1000.0 + 10 * s.slice_index  # the z order, not the file order
        assert s.mask is None and s.mask_kind == "none" and s.label == "malignant"
        assert s.pixel_spacing_mm == pytest.approx(0.7)
        assert s.extra["histology"] == "adenocarcinoma"
        assert s.extra["series_uid"] == "1.2.3.4.5"
        assert s.extra["sop_instance_uid"] == sops[-100.0 + 2.5 * s.slice_index]


@pytest.mark.parametrize(
    ("fraction", "step", "expected"),
    [
        (1.0, 1, [0, 1, 2, 3, 4, 5]),
        (1.0, 2, [0, 2, 4]),
        (0.5, 2, [1, 3]),
        (0.1, 1, [2]),
        (0.7, 1, [1, 2, 3, 4]),
    ],
)
def test_middle_fraction_and_step(root, fraction, step, expected):
    tasks, _ = lcd.list_volumes(root, middle_fraction=fraction, slice_step=step)
    assert [s.slice_index for s in lcd.read_volume(tasks[0])] == expected


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"middle_fraction": 0}, "middle_fraction must be a number in \\(0, 1\\].*got 0"),
        ({"middle_fraction": 1.5}, "middle_fraction .* got 1.5"),
        ({"middle_fraction": math.nan}, "middle_fraction .* got nan"),
        ({"middle_fraction": "half"}, "middle_fraction .* got 'half'"),
        ({"middle_fraction": True}, "middle_fraction .* got True"),
        ({"slice_step": 0}, "slice_step must be a whole number >= 1, got 0"),
        ({"slice_step": 1.5}, "slice_step .* got 1.5"),
        ({"slice_step": True}, "slice_step .* got True"),
    ],
)
def test_bad_options(root, options, match):
    with pytest.raises(DataError, match=match):
        lcd.list_volumes(root, **options)


def test_two_series_in_one_folder_non_ct_and_non_dicom_ignored(tmp_path):
    folder = tmp_path / "R_010" / "study" / "mixed"
    write_series(folder, series_uid="1.2.10.1", patient_id="R_010")
    for k in range(4):  # a second series in the same folder (other file names)
        write_ct_slice(
            folder / f"b-{k}.dcm", slice_pixels(k), z=float(k), series_uid="1.2.10.2", instance=k + 1
        )
    write_series(
        tmp_path / "R_010" / "study" / "pet", series_uid="1.2.10.3", patient_id="R_010", modality="PT"
    )
    (folder / "notes.txt").write_text("not DICOM")
    tasks, skipped = lcd.list_volumes(tmp_path)
    assert skipped == []
    assert sorted(t.volume_id for t in tasks) == ["1.2.10.1", "1.2.10.2"]
    by_uid = {t.volume_id: t for t in tasks}
    assert [s.slice_index for s in lcd.read_volume(by_uid["1.2.10.2"])] == [1, 2]  # middle 2 of its own 4


def test_patient_id_mismatch_is_skipped(root):
    write_series(root / "R_005" / "s" / "x", series_uid="1.2.5.1", patient_id="R_099")
    tasks, skipped = lcd.list_volumes(root)
    assert [t.patient_id for t in tasks] == ["R_004"]
    assert [s.item for s in skipped] == ["1.2.5.1"]
    assert "R_099" in skipped[0].reason and "R_005" in skipped[0].reason


def test_series_without_image_is_skipped(root):
    write_series(root / "R_006" / "s" / "x", series_uid="1.2.6.1", patient_id="R_006", pixels=False)
    tasks, skipped = lcd.list_volumes(root)
    assert [t.volume_id for t in tasks] == ["1.2.3.4.5"]
    assert [s.item for s in skipped] == ["1.2.6.1"]
    assert "no readable image" in skipped[0].reason


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DataError, match="nowhere: collection folder not found"):
        lcd.list_volumes(tmp_path / "nowhere")
    (tmp_path / "R_001").mkdir()
    with pytest.raises(DataError, match="no CT series found"):
        lcd.list_volumes(tmp_path)


def test_bad_slice_at_read_time_names_the_file(root):
    tasks, _ = lcd.list_volumes(root)
    folder = root / "R_004" / "1.2.3.4" / "1.2.3.4.5"
    broken = folder / f"1-{N_SLICES - 2:02d}.dcm"  # the z-index 2 slice, one of the middle three
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) - 1000])  # truncated pixel data, header intact
    with pytest.raises(DataError, match=f"{broken.name}"):
        lcd.read_volume(tasks[0])
