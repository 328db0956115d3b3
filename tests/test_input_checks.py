"""Every bad input named before anything runs: unreadable images, bad masks, repeated or ambiguous rows.

Each case writes small files in the real format (PNG with OpenCV, NIfTI with nibabel, DICOM with the shared
writer) and checks the one-line `DataError`, which names the CSV file's line and data row and the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dicom_files import write_ct_slice

from lungnet.cli import main
from lungnet.data.dataset import DataConfig, check_source_images, prepare_data
from lungnet.data.info import summarize
from lungnet.data.labels import assign_labels
from lungnet.data.manifest import ROW_COLUMN, check_images, validate_manifest
from lungnet.data.registry import Source, load_source
from lungnet.data.sources.manifest_csv import load_manifest_csv
from lungnet.data.splits import split_manifest
from lungnet.errors import DataError

REPO = Path(__file__).resolve().parents[1]
N = 24  # rows of the test manifests: enough patients for a stratified split of the smoke profile


def write_dataset(root: Path, n: int = N, masks: bool = False) -> Path:
    """`n` 40 px PNG images (and masks) of `n` patients, two classes, listed in ``root/manifest.csv``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 255, (40, 40)).astype(np.uint8))
        row = {"image": f"{i}.png", "patient_id": f"P{i}", "malignancy": 1 + (i % 2) * 4}
        if masks:
            mask = np.zeros((40, 40), np.uint8)
            mask[10:20, 10:20] = 255
            cv2.imwrite(str(root / f"m{i}.png"), mask)
            row["mask"] = f"m{i}.png"
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def set_image(csv: Path, row: int, ref: str) -> None:
    df = pd.read_csv(csv, dtype=str)
    df.loc[row, "image"] = ref
    df.to_csv(csv, index=False)


def corrupt_png(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])  # a PNG signature and a header, the image data cut off


def write_volume(path: Path, slices: int = 3) -> None:
    volume = np.random.default_rng(1).uniform(-1000, 400, (40, 40, slices)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))


def one_line(text: str) -> str:
    """The only line a terminal shows (a progress bar drawn with carriage returns and erased is not)."""
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- images: read once, up front, named by CSV line and row ------------------------------------------------


def test_corrupt_png_is_named_by_csv_line_before_training(tmp_path):
    csv = write_dataset(tmp_path)
    corrupt_png(tmp_path / "5.png")
    config = DataConfig(source=str(csv), split=(0.5, 0.25, 0.25))
    with pytest.raises(DataError) as caught:
        prepare_data(config, progress=False)
    message = str(caught.value)
    assert f"{csv} line 7, row 5 (image): {tmp_path / '5.png'}: not a readable image" in message
    assert "\n" not in message


def test_nifti_slice_out_of_range_and_dicom_without_pixels_are_named(tmp_path):
    csv = write_dataset(tmp_path)
    write_volume(tmp_path / "vol.nii.gz")
    write_ct_slice(tmp_path / "empty.dcm", np.zeros((40, 40), np.uint16), pixels=False)
    set_image(csv, 3, "vol.nii.gz#9")
    set_image(csv, 10, "empty.dcm")
    source = load_source(str(csv))
    with pytest.raises(DataError) as caught:
        check_source_images(source, source.manifest, "image", progress=False)
    message = str(caught.value)
    assert message.startswith("2 images cannot be used: ")
    assert (
        f"line 5, row 3 (image): {tmp_path / 'vol.nii.gz'}#9: slice 9 out of range for a volume of 3"
        in message
    )
    assert f"line 12, row 10 (image): {tmp_path / 'empty.dcm'}: DICOM file has no pixel data" in message


def test_nan_pixels_and_a_good_nifti_slice(tmp_path):
    csv = write_dataset(tmp_path, n=4)
    write_volume(tmp_path / "vol.nii")
    stack = np.zeros((2, 40, 40), np.float32)
    stack[1, 3, 3] = np.nan
    np.save(tmp_path / "stack.npy", stack)
    set_image(csv, 0, "vol.nii#2")
    set_image(csv, 1, "stack.npy#0")
    df = load_manifest_csv(csv)
    check_images(df, progress=False)  # slice 2 of 3 and a finite stack entry are fine
    set_image(csv, 2, "stack.npy#1")
    with pytest.raises(DataError, match=r"line 4, row 2 \(image\): \S*stack\.npy#1: image has NaN"):
        check_images(load_manifest_csv(csv), progress=False)


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    write_dataset(tmp_path, n=3)
    corrupt_png(tmp_path / "2.png")
    csv = tmp_path / "odd.csv"
    csv.write_text('image,patient_id,note\n0.png,P0,"two\nlines"\n\n1.png,P1,x\n2.png,P2,y\n')
    df = load_manifest_csv(csv)
    assert df[ROW_COLUMN].tolist() == [f"{csv} line {n}, row {r}" for r, n in ((0, 2), (1, 5), (2, 6))]
    with pytest.raises(DataError, match=r"odd\.csv line 6, row 2 \(image\)"):
        check_images(df, progress=False)


def test_pipeline_errors_name_the_csv_row_after_shuffling_and_oversampling(tmp_path):
    from lungnet.data.balancing import oversample
    from lungnet.data.pipelines import classification_dataset, data_errors
    from lungnet.data.preprocessing import PreprocessConfig

    csv = write_dataset(tmp_path)
    corrupt_png(tmp_path / "7.png")  # found only inside tf.data here: the up-front check is skipped
    frame = assign_labels(load_manifest_csv(csv), "paper").sample(frac=1.0, random_state=3)
    frame = oversample(frame.reset_index(drop=True), extra=5, seed=0)
    ds = classification_dataset(
        frame, PreprocessConfig(image_size=16), num_classes=2, training=False, batch_size=8
    )
    with pytest.raises(DataError) as caught, data_errors():
        list(ds)
    assert str(caught.value).startswith(f"{csv} line 9, row 7 (image): {tmp_path / '7.png'}: not a readable")


def test_phantom_images_are_not_re_read(tmp_path):
    frame = pd.DataFrame({"image": [str(tmp_path / "absent.npy#0")], "patient_id": ["P"]})
    check_source_images(Source("lidc-phantom", frame, "phantom"), frame, "image")  # trusted: no read
    with pytest.raises(DataError, match="file not found"):
        check_source_images(Source("x.csv", frame, "csv"), frame, "image", progress=False)


def test_train_cli_names_the_corrupt_png_in_one_line(tmp_path, capsys):
    csv = write_dataset(tmp_path / "data")
    corrupt_png(tmp_path / "data" / "6.png")
    args = [
        "train",
        "binary_nodule",
        "--profile",
        "smoke",
        "--data",
        str(csv),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line.split("\r")[-1] for line in err.split("\n") if "error" in line]
    assert len(errors) == 1, err  # other lines (a note on the run folder) may come too; one error line
    assert errors[0] == (
        f"lungnet: error: {csv} line 8, row 6 (image): {tmp_path / 'data' / '6.png'}: "
        "not a readable image (corrupt or not an image file)"
    )
    assert not (tmp_path / "run" / "models").exists()  # stopped before any model was trained


# A failing tf.data pipeline used to hang (or abort) the process at exit after the error was reported: its
# iterator, kept alive by the error's frames, was destroyed while Python shut down, when its loader threads
# could no longer run. The script fails twice under `data_errors` (as `lungnet evaluate` does) and once
# uncaught inside `fit` (as `lungnet train` did); the process must exit promptly. Good images load slowly,
# so loads are still running when the error is reported: without the fix this hangs every time.
_FAILING_PIPELINES = """
import sys, time
import keras, numpy as np, pandas as pd
import lungnet.data.pipelines as pipelines
from lungnet.data.pipelines import classification_dataset, data_errors
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import DataError

read_image = pipelines.read_image
def slow_read(ref):
    if "#" not in ref:
        time.sleep(0.5)
    return read_image(ref)
pipelines.read_image = slow_read

folder = sys.argv[1]
refs = [f"{folder}/{i}.png" for i in range(24)]
refs[1] = f"{folder}/vol.nii.gz#9"
frame = pd.DataFrame({"image": refs, "target": np.arange(24) % 2})
model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")])
model.compile("adam", "categorical_crossentropy")
for _ in range(2):
    ds = classification_dataset(frame, PreprocessConfig(image_size=16), num_classes=2, training=False, batch_size=4)
    try:
        with data_errors():
            model.predict(ds, verbose=0)
    except DataError as exc:
        print("caught:", exc, flush=True)
ds = classification_dataset(frame, PreprocessConfig(image_size=16), num_classes=2, training=True, batch_size=4)
model.fit(ds.repeat(), steps_per_epoch=6, epochs=1, verbose=0)
"""


def test_a_bad_item_inside_tf_data_never_hangs_the_process(tmp_path):
    write_dataset(tmp_path)
    write_volume(tmp_path / "vol.nii.gz")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_FAILING_PIPELINES), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process hung after a loader error:\n{exc.stdout}\n{exc.stderr}")
    expected = f"row 1 (image): {tmp_path / 'vol.nii.gz'}#9: slice 9 out of range for a volume of 3 slices"
    assert done.stdout.count(f"caught: manifest {expected}") == 2, done.stdout + done.stderr
    assert done.returncode == 1, done.stderr[-3000:]  # the uncaught error, not an abort (134) or a hang
    assert f"DataError: manifest {expected}" in done.stderr


# --- manifest identity -------------------------------------------------------------------------------------


def test_patient_ids_are_stripped_so_one_patient_stays_in_one_split(tmp_path):
    csv = write_dataset(tmp_path, n=12)
    df = pd.read_csv(csv, dtype=str)
    df.loc[1, "patient_id"] = "P0 "  # P0 and "P0 ", and "\tP2" and P2 below, are one patient each
    df.loc[3, "patient_id"] = "\tP2"
    df.loc[2, "patient_id"] = "P2"
    df.to_csv(csv, index=False)
    manifest = load_manifest_csv(csv)
    assert manifest["patient_id"].tolist()[:4] == ["P0", "P0", "P2", "P2"]
    for seed in range(5):
        split = split_manifest(assign_labels(manifest, "paper"), (0.5, 0.25, 0.25), seed=seed)
        assert split.groupby("patient_id")["split"].nunique().max() == 1


def test_exact_duplicate_rows_warn_and_are_dropped(tmp_path):
    csv = write_dataset(tmp_path, n=6)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[3], lines[3].replace("P2", " P2 ")]) + "\n")
    with pytest.warns(UserWarning, match="row") as caught:
        manifest = load_manifest_csv(csv)
    message = str(caught[0].message)
    assert "2 row(s) repeat an earlier row exactly and are dropped (kept once)" in message
    assert f"{csv} line 9, row 7 repeats {csv} line 4, row 2" in message
    assert len(manifest) == 6 and manifest["image"].is_unique
    assert manifest[ROW_COLUMN].tolist() == [f"{csv} line {r + 2}, row {r}" for r in range(6)]


def test_one_image_under_two_patients_is_an_error_naming_both_rows(tmp_path):
    csv = write_dataset(tmp_path, n=6)
    set_image(csv, 4, "1.png")
    with pytest.raises(DataError) as caught:
        load_manifest_csv(csv)
    message = str(caught.value)
    assert f"image {tmp_path / '1.png'} is listed under patient 'P1' in {csv} line 3, row 1" in message
    assert f"under patient 'P4' in {csv} line 6, row 4" in message
    frame = pd.DataFrame({"image": ["a", "a", "b"], "patient_id": ["x", "x", "y"], "reader": [1, 2, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one image of one patient on two rows (two readers) is fine
        assert len(validate_manifest(frame, "lidc-phantom")) == 3
    frame.loc[1, "patient_id"] = "z"
    with pytest.raises(DataError, match="under patient 'x' in lidc-phantom row 0 and under patient 'z' in "):
        validate_manifest(frame, "lidc-phantom")


# --- masks in `lungnet data info` --------------------------------------------------------------------------


def test_data_info_checks_every_mask(tmp_path, capsys):
    csv = write_dataset(tmp_path, n=8, masks=True)
    cv2.imwrite(str(tmp_path / "m0.png"), np.zeros((40, 40), np.uint8))  # empty: counted, not an error
    info = summarize(load_source(str(csv)), progress=False)
    assert info["masks"] == {"mask": {"n_checked": 8, "n_empty": 1}}

    cv2.imwrite(str(tmp_path / "m3.png"), np.zeros((32, 40), np.uint8))
    bad_values = np.zeros((40, 40), np.uint8)
    bad_values[5:9, 5:9] = 7
    cv2.imwrite(str(tmp_path / "m6.png"), bad_values)
    with pytest.raises(DataError) as caught:
        summarize(load_source(str(csv)), progress=False)
    message = str(caught.value)
    assert message.startswith("2 image/mask pairs cannot be used: ")
    assert (
        f"{csv} line 5, row 3: {tmp_path / 'm3.png'}: mask shape (32, 40) does not match its image shape (40, 40)"
        in message
    )
    assert (
        f"{csv} line 8, row 6: {tmp_path / 'm6.png'}: mask values must be 0/1 or 0/255, found [0, 7]"
        in message
    )

    assert main(["data", "info", str(csv), "--json"]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith("lungnet: error: 2 image/mask pairs cannot be used: ")
    assert "Traceback" not in captured.err and captured.out == ""


def test_data_info_json_reports_the_masks_checked(tmp_path, capsys):
    csv = write_dataset(tmp_path, n=8, masks=True)
    assert main(["data", "info", str(csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["masks"] == {"mask": {"n_checked": 8, "n_empty": 0}}
