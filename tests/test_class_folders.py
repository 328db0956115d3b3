from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pytest

from lungnet.data.io import read_image
from lungnet.data.sources.class_folders import load_class_folders
from lungnet.errors import DataError


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((4, 4), value, np.uint8))


def test_labels_from_folders_and_lidc_patient_ids(tmp_path):
    _png(tmp_path / "benign" / "LIDC-IDRI-0001_nodule-0_s3.png", 10)
    _png(tmp_path / "benign" / "LIDC-IDRI-0001_nodule-1_s7.png", 20)
    _png(tmp_path / "malignant" / "x_LIDC-IDRI-0042.png", 30)
    np.save(tmp_path / "malignant" / "LIDC-IDRI-0042_b.npy", np.zeros((4, 4), np.float32))
    (tmp_path / "malignant" / "notes.txt").write_text("not an image")
    _png(tmp_path / "malignant" / ".hidden.png")
    _png(tmp_path / ".cache" / "LIDC-IDRI-0003.png")  # hidden folder: not a class
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every image has a patient id: no warning
        df = load_class_folders(tmp_path)
    assert df["label"].tolist() == ["benign", "benign", "malignant", "malignant"]
    assert df["patient_id"].tolist() == [
        "LIDC-IDRI-0001",
        "LIDC-IDRI-0001",
        "LIDC-IDRI-0042",
        "LIDC-IDRI-0042",
    ]
    assert df["image"].iloc[3] == str(tmp_path / "malignant" / "x_LIDC-IDRI-0042.png")  # sorted by name
    assert read_image(df["image"].iloc[1]).max() == 20
    assert set(df["source"]) == {tmp_path.name}


def test_without_patient_ids_the_file_name_is_used_with_a_warning(tmp_path):
    _png(tmp_path / "a" / "img1.png")
    _png(tmp_path / "a" / "img2.png")
    _png(tmp_path / "b" / "LIDC-IDRI-0007.png")
    with pytest.warns(UserWarning, match=r"2 of 3 image\(s\) have no patient id .* splits are per image"):
        df = load_class_folders(tmp_path)
    assert df["patient_id"].tolist() == ["img1", "img2", "LIDC-IDRI-0007"]


def test_custom_pattern_and_recursive_patient_folders(tmp_path):
    _png(tmp_path / "nodule" / "P12" / "001.png")
    _png(tmp_path / "nodule" / "P13" / "001.png")
    _png(tmp_path / "clear" / "P12_002.png")
    df = load_class_folders(tmp_path, patient_pattern=r"^(P\d+)", recursive=True)
    assert sorted(zip(df["label"], df["patient_id"], strict=True)) == [
        ("clear", "P12"),
        ("nodule", "P12"),
        ("nodule", "P13"),
    ]
    # Without a matching pattern, two patients' 001.png stay apart (their folder is part of the fallback id).
    with pytest.warns(UserWarning):
        df = load_class_folders(tmp_path, patient_pattern=None, recursive=True)
    assert sorted(df["patient_id"]) == ["P12/001", "P12_002", "P13/001"]


def test_root_missing(tmp_path):
    with pytest.raises(DataError, match="class folder root not found"):
        load_class_folders(tmp_path / "nope")


def test_no_class_folders(tmp_path):
    _png(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"no class folders.*found 1 image\(s\) directly in it"):
        load_class_folders(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    (tmp_path / "malignant").mkdir()
    (tmp_path / "malignant" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"malignant: class folder 'malignant' has no image files"):
        load_class_folders(tmp_path)
    shutil.rmtree(tmp_path / "malignant")
    _png(tmp_path / "malignant" / "P1" / "a.png")  # only in a sub-folder: needs recursive=True
    with pytest.raises(DataError, match="recursive=True"):
        load_class_folders(tmp_path)
