from __future__ import annotations

import os

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_files import write_ct_slice
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from lungnet.data.io import (
    list_dicom_series,
    read_dicom_hu,
    read_dicom_series,
    read_image,
    read_mask,
    split_reference,
)
from lungnet.errors import DataError


def test_ct_small_reads_in_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024
    hu = read_image(path)
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    # Stored values are 128..2191: in HU the slice spans air-ish lung to bone, never below -1024.
    assert hu.min() >= -1100 and hu.max() <= 3000
    assert hu.min() < -500 and hu.max() > 500
    np.testing.assert_allclose(hu, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert not np.allclose(hu, ds.pixel_array)
    np.testing.assert_array_equal(read_dicom_hu(path), hu)


def test_dicom_slope_and_intercept_are_applied(tmp_path):
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    path = write_ct_slice(tmp_path / "a.dcm", stored, slope=2.0, intercept=-1000.0)
    np.testing.assert_allclose(read_image(str(path)), stored * 2.0 - 1000.0)


def test_dicom_without_pixel_data_names_the_file(tmp_path):
    path = write_ct_slice(tmp_path / "header-only.dcm", np.zeros((4, 4)), pixels=False)
    with pytest.raises(DataError, match=r"header-only\.dcm: DICOM file has no pixel data"):
        read_image(str(path))


def test_dicom_series_is_sorted_by_z_and_keeps_lowest_instance(tmp_path):
    uid = generate_uid()
    for i, z in enumerate([5.0, -5.0, 0.0]):
        write_ct_slice(
            tmp_path / f"s{i}.dcm", np.full((4, 4), 1024 + 10 * i), z=z, series_uid=uid, instance=i + 2
        )
    # A duplicate z with a higher instance number is dropped; a lower one would win.
    write_ct_slice(tmp_path / "dup.dcm", np.full((4, 4), 0), z=0.0, series_uid=uid, instance=9)
    (tmp_path / "annotations.xml").write_text("<xml/>")  # non-DICOM files beside the slices are skipped
    assert [z for z, _ in list_dicom_series(tmp_path)] == [-5.0, 0.0, 5.0]
    volume, z = read_dicom_series(tmp_path)
    assert volume.shape == (3, 4, 4)
    np.testing.assert_array_equal(z, [-5.0, 0.0, 5.0])
    np.testing.assert_array_equal(volume[:, 0, 0], [10.0, 20.0, 0.0])  # HU = stored - 1024


def test_dicom_folder_with_two_series_needs_a_uid(tmp_path):
    write_ct_slice(tmp_path / "a.dcm", np.zeros((4, 4)), series_uid="1.2.3.4")
    write_ct_slice(tmp_path / "b.dcm", np.zeros((4, 4)), series_uid="1.2.3.5")
    with pytest.raises(DataError, match="2 DICOM series"):
        list_dicom_series(tmp_path)
    assert [p.name for _, p in list_dicom_series(tmp_path, "1.2.3.5")] == ["b.dcm"]
    with pytest.raises(DataError, match="no DICOM image files of series 9.9"):
        list_dicom_series(tmp_path, "9.9")


def test_png_8_and_16_bit_and_jpg(tmp_path):
    gray8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    cv2.imwrite(str(tmp_path / "a.png"), gray8)
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), gray8)

    gray16 = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    cv2.imwrite(str(tmp_path / "b.png"), gray16)
    image16 = read_image(str(tmp_path / "b.png"))
    assert image16.max() == 65535 and image16.dtype == np.float32  # full 16-bit range, not squashed to 8 bits
    np.testing.assert_array_equal(image16, gray16)

    rgb = np.dstack([gray8] * 3)
    cv2.imwrite(str(tmp_path / "c.jpg"), rgb, [cv2.IMWRITE_JPEG_QUALITY, 100])
    jpg = read_image(str(tmp_path / "c.jpg"))
    assert jpg.shape == (16, 16)  # colour averaged to grey
    assert np.abs(jpg - gray8).max() <= 8  # lossy, but close


def test_nifti_applies_scaling_and_slice_references(tmp_path):
    stored = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "vol.nii.gz"
    nib.save(image, path)
    volume = read_image(str(tmp_path / "vol.nii.gz#1"))
    np.testing.assert_allclose(volume, stored[:, :, 1] * 2.0 - 1024.0)
    assert split_reference(f"{path}#2") == (str(path), 2)
    with pytest.raises(DataError, match="slice 3 out of range"):
        read_image(f"{path}#3")
    with pytest.raises(DataError, match="expected a 2-D image"):
        read_image(str(path))  # the whole volume is not one image

    flat = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(stored[:, :, :1].astype(np.float32) - 1000, np.eye(4)), flat)
    np.testing.assert_allclose(read_image(str(flat)), stored[:, :, 0] - 1000.0)


def test_npy_and_stacked_references(tmp_path):
    single = np.linspace(-1000, 400, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "one.npy", single)
    np.testing.assert_array_equal(read_image(str(tmp_path / "one.npy")), single)

    stack = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "stack.npy", stack)
    np.testing.assert_array_equal(read_image(f"{tmp_path / 'stack.npy'}#1"), stack[1])
    with pytest.raises(DataError, match="index 2 out of range for a stack of 2"):
        read_image(f"{tmp_path / 'stack.npy'}#2")


def test_rewritten_stack_is_not_served_from_a_stale_cache(tmp_path):
    path = tmp_path / "stack.npy"
    np.save(path, np.zeros((2, 3, 3), np.int16))
    assert read_image(f"{path}#0").max() == 0
    np.save(path, np.ones((2, 3, 3), np.int16))
    os.utime(path, ns=(1, 1))  # a distinct mtime even on filesystems with coarse timestamps
    assert read_image(f"{path}#0").max() == 1


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        read_image(str(tmp_path / "nope.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"bad\.png: not a readable image"):
        read_image(str(tmp_path / "bad.png"))
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match=r"bad\.dcm: not a readable DICOM"):
        read_image(str(tmp_path / "bad.dcm"))
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"bad\.nii\.gz: cannot read image"):
        read_image(str(tmp_path / "bad.nii.gz"))
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="unsupported image format '.gif'"):
        read_image(str(tmp_path / "x.gif"))


def test_masks_0_1_and_0_255(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    cv2.imwrite(str(tmp_path / "m255.png"), mask)
    np.save(tmp_path / "m01.npy", (mask > 0).astype(np.uint8))
    for name in ("m255.png", "m01.npy"):
        read = read_mask(str(tmp_path / name), (8, 8))
        assert read.dtype == np.uint8
        np.testing.assert_array_equal(read, mask > 0)


def test_mask_with_other_values_is_an_error(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1], mask[2, 2] = 1, 128
    cv2.imwrite(str(tmp_path / "soft.png"), mask)
    with pytest.raises(DataError, match=r"soft\.png: mask values must be 0/1 or 0/255, found \[0, 1, 128\]"):
        read_mask(str(tmp_path / "soft.png"))


def test_mask_shape_must_match_image(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((8, 6), np.uint8))
    with pytest.raises(DataError, match=r"mask shape \(8, 6\) does not match its image shape \(8, 8\)"):
        read_mask(str(tmp_path / "m.png"), (8, 8))
