from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lungnet.data.io import read_image, read_mask
from lungnet.data.sources.manifest_csv import load_manifest_csv
from lungnet.errors import DataError


def _dataset(tmp_path: Path, rows: int = 3) -> Path:
    """A folder of PNG images and masks, one stacked .npy and a CSV naming them by relative path."""
    (tmp_path / "img").mkdir(parents=True)
    (tmp_path / "msk").mkdir()
    for i in range(rows):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), np.full((8, 8), 10 * i, np.uint8))
        mask = np.zeros((8, 8), np.uint8)
        mask[2:4, 2:4] = 255
        cv2.imwrite(str(tmp_path / "msk" / f"{i}.png"), mask)
    np.save(tmp_path / "stack.npy", np.zeros((2, 8, 8), np.int16))
    return tmp_path


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_relative_paths_resolve_against_the_csv_folder(tmp_path, monkeypatch):
    root = _dataset(tmp_path / "data")
    csv = _write_csv(
        root / "list.csv",
        """
image,mask,patient_id,malignancy,site
img/0.png,msk/0.png,0001,4,a
img/1.png,,0002,2,b
stack.npy#1,,0003,,c
""",
    )
    monkeypatch.chdir(tmp_path)  # not the CSV's folder: paths must not depend on the working directory
    df = load_manifest_csv(csv)
    assert df["image"].tolist() == [
        str(root / "img/0.png"),
        str(root / "img/1.png"),
        f"{root / 'stack.npy'}#1",
    ]
    assert df["mask"].tolist() == [str(root / "msk/0.png"), "", ""]
    assert df["patient_id"].tolist() == ["0001", "0002", "0003"]  # leading zeros kept
    assert df["malignancy"].tolist()[:2] == [4.0, 2.0] and np.isnan(df["malignancy"].iloc[2])
    assert df["site"].tolist() == ["a", "b", "c"]  # extra columns kept
    assert set(df["source"]) == {"list.csv"}
    assert read_image(df["image"].iloc[2]).shape == (8, 8)
    assert read_mask(df["mask"].iloc[0]).sum() == 4


def test_user_column_names_are_renamed(tmp_path):
    root = _dataset(tmp_path)
    csv = _write_csv(
        root / "m.csv",
        f"""
file,seg,subject,score,dx
{root / "img/0.png"},msk/0.png,P1,5,malignant
img/1.png,msk/1.png,P2,1,benign
""",
    )
    df = load_manifest_csv(
        csv,
        image_column="file",
        mask_column="seg",
        patient_column="subject",
        malignancy_column="score",
        label_column="dx",
    )
    assert list(df.columns[:5]) == ["image", "mask", "patient_id", "malignancy", "label"]
    assert df["image"].iloc[0] == str(root / "img/0.png")  # absolute paths kept
    assert df["label"].tolist() == ["malignant", "benign"]
    assert df["malignancy"].tolist() == [5.0, 1.0]


def test_malignancy_median_is_detected(tmp_path):
    root = _dataset(tmp_path)
    csv = _write_csv(root / "m.csv", "image,patient_id,malignancy_median,label\nimg/0.png,P1,3.5,malignant\n")
    df = load_manifest_csv(csv)
    assert df["malignancy"].tolist() == [3.5] and df["label"].tolist() == ["malignant"]
    assert "malignancy_median" not in df.columns


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: manifest CSV not found"):
        load_manifest_csv(tmp_path / "nope.csv")


def test_missing_required_column_lists_the_columns(tmp_path):
    root = _dataset(tmp_path)
    csv = _write_csv(root / "m.csv", "image,patient\nimg/0.png,P1\n")
    with pytest.raises(
        DataError, match=r"missing required column 'patient_id'.*columns present: \['image', 'patient'\]"
    ):
        load_manifest_csv(csv)
    with pytest.raises(DataError, match=r"no column 'dx' \(set by label_column=\)"):
        load_manifest_csv(csv, patient_column="patient", label_column="dx")


def test_empty_image_path_names_the_row(tmp_path):
    root = _dataset(tmp_path)
    csv = _write_csv(root / "m.csv", "image,patient_id\nimg/0.png,P1\n ,P2\n")
    with pytest.raises(DataError, match=r"row 1 \(line 3\) has an empty image path in column 'image'"):
        load_manifest_csv(csv)


def test_missing_files_are_all_reported_up_front(tmp_path):
    root = _dataset(tmp_path)
    lines = ["image,mask,patient_id", "img/0.png,msk/0.png,P0"] + [f"img/x{i}.png,,P{i}" for i in range(7)]
    lines.append("img/1.png,msk/gone.png,P9")
    csv = _write_csv(root / "m.csv", "\n".join(lines))
    with pytest.raises(DataError) as info:
        load_manifest_csv(csv)
    message = str(info.value)
    assert "8 referenced file(s) not found" in message
    assert f"row 1 (line 3) image {root / 'img/x0.png'}" in message
    assert "(and 3 more)" in message


def test_missing_mask_file_is_reported(tmp_path):
    root = _dataset(tmp_path)
    csv = _write_csv(root / "m.csv", "image,mask,patient_id\nimg/1.png,msk/gone.png,P9\n")
    with pytest.raises(DataError, match=r"row 0 \(line 2\) mask .*msk/gone\.png"):
        load_manifest_csv(csv)


@pytest.mark.parametrize("value", ["0", "6", "high"])
def test_malignancy_outside_1_to_5_names_the_row(tmp_path, value):
    root = _dataset(tmp_path)
    csv = _write_csv(root / "m.csv", f"image,patient_id,rating\nimg/0.png,P1,3\nimg/1.png,P2,{value}\n")
    with pytest.raises(DataError, match=rf"row 1 \(line 3\) has malignancy '{value}' in column 'rating'"):
        load_manifest_csv(csv, malignancy_column="rating")


def test_unsupported_format_and_name_clash(tmp_path):
    root = _dataset(tmp_path)
    csv = _write_csv(root / "m.csv", "image,patient_id\nnotes.txt,P1\n")
    with pytest.raises(
        DataError, match=r"row 0 \(line 2\) column 'image' names 'notes.txt', an unsupported format"
    ):
        load_manifest_csv(csv)
    csv = _write_csv(root / "n.csv", "image,crop,patient_id\nimg/0.png,img/1.png,P1\n")
    with pytest.raises(DataError, match="column 'crop' is to become 'image', but the CSV already has"):
        load_manifest_csv(csv, image_column="crop")


@pytest.mark.realdata
def test_lidc_crops_manifest_loads_as_it_is(lidc_crops_dir):
    df = load_manifest_csv(lidc_crops_dir / "manifest.csv")
    assert len(df) == 4556
    assert df["patient_id"].nunique() == 545 and df["nodule_id"].nunique() == 1671
    assert df["malignancy"].between(1, 5).all()
    assert df["label"].value_counts().to_dict() == {"benign": 2004, "indeterminate": 1569, "malignant": 983}
    # label follows the median: <3 benign, 3 indeterminate, >3 malignant.
    expected = np.select(
        [df["malignancy"] < 3, df["malignancy"] > 3], ["benign", "malignant"], "indeterminate"
    )
    assert (df["label"].to_numpy() == expected).all()
    assert all(Path(p).is_absolute() for p in df["image"])
    central = df[df["is_central"] == 1].iloc[0]
    image = read_image(central["image"])
    mask = read_mask(central["mask"], image.shape)
    assert image.shape == (128, 128) and image.min() >= 0 and image.max() <= 255
    assert mask.sum() > 0 and image[mask == 1].mean() > image[mask == 0].mean()  # nodule brighter than lung
