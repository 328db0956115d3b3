"""A CSV manifest that lists images (and optionally masks) with patient ids and labels or ratings.

Usage::

    from lungnet.data.sources.manifest_csv import load_manifest_csv

    df = load_manifest_csv("../shared/data/lidc-crops/manifest.csv")   # loads as it is
    df = load_manifest_csv("my_data.csv", image_column="file", patient_column="subject", label_column="dx")

Relative paths resolve against the CSV's folder and are stored absolute, so the table works from anywhere.
Images may be PNG/JPG/BMP/TIFF, DICOM, NIfTI (``volume.nii.gz#k`` for one slice) or NumPy (``stack.npy#i``).
Every referenced file is checked up front, so a typo fails here rather than an hour into training.

Messages name a row as ``row 5 (line 7)``: row is the 0-based data row, line the file's own 1-based line
number (the header is line 1; blank lines and quoted fields spanning lines are counted as an editor shows
them). Each row keeps that address in the manifest's ``source_row`` column (``/data/m.csv line 7, row 5``),
so errors found later (an unreadable image, a bad mask) name it too. Patient ids lose surrounding whitespace;
see `lungnet.data.manifest.validate_manifest` for repeated rows and images listed under two patients.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from lungnet.data.io import IMAGE_SUFFIXES, file_suffix, split_reference
from lungnet.data.manifest import ROW_COLUMN, validate_manifest
from lungnet.errors import DataError

# Columns tried, in order, when `malignancy_column` is not given: datasets name the reader median differently.
MALIGNANCY_FALLBACKS = ("malignancy", "malignancy_median", "median_malignancy", "malignancy_mean")
_SHOW_MISSING = 5


def load_manifest_csv(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    mask_column: str = "mask",
    patient_column: str = "patient_id",
    malignancy_column: str | None = None,
    label_column: str = "label",
) -> pd.DataFrame:
    """Read a CSV manifest and return a validated manifest DataFrame (see `lungnet.data.manifest`).

    The named columns are renamed to the schema names (``image``, ``mask``, ``patient_id``, ``malignancy``,
    ``label``); other columns are kept. ``mask`` and ``label`` are optional unless named explicitly; with
    ``malignancy_column=None`` the first of `MALIGNANCY_FALLBACKS` present is used, if any. A ``source``
    column (the CSV file name) is added unless the CSV has one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: manifest CSV not found")
    origin = str(path)
    # Ids and paths stay strings: "0001" must not become 1.
    text_columns = {c: str for c in (image_column, mask_column, patient_column, label_column)}
    try:
        df = pd.read_csv(path, dtype=text_columns, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{origin}: the CSV file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{origin}: not a readable CSV file ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    lines = _data_lines(path, len(df))

    renames = {image_column: "image", patient_column: "patient_id"}
    for user, kind in ((image_column, "image_column"), (patient_column, "patient_column")):
        if user not in df.columns:
            raise DataError(
                f"{origin}: missing required column '{user}' (set by {kind}=); columns present: {list(df.columns)}"
            )
    optional = {
        "mask": (mask_column, "mask", "mask_column"),
        "label": (label_column, "label", "label_column"),
    }
    for user, default, kind in optional.values():
        if user in df.columns:
            renames[user] = default
        elif user != default:
            raise DataError(
                f"{origin}: no column '{user}' (set by {kind}=); columns present: {list(df.columns)}"
            )
    rating_column = malignancy_column
    if malignancy_column is not None:
        if malignancy_column not in df.columns:
            raise DataError(
                f"{origin}: no column '{malignancy_column}' (set by malignancy_column=); "
                f"columns present: {list(df.columns)}"
            )
        renames[malignancy_column] = "malignancy"
    else:
        rating_column = next((c for c in MALIGNANCY_FALLBACKS if c in df.columns), None)
        if rating_column is not None:
            renames[rating_column] = "malignancy"
    for user, schema in renames.items():
        if user != schema and schema in df.columns:
            raise DataError(
                f"{origin}: column '{user}' is to become '{schema}', but the CSV already has a '{schema}' "
                f"column; rename one of them in the CSV"
            )
    df = df.rename(columns=renames)

    if rating_column is not None:
        _check_ratings(df, origin, rating_column, lines)
    df["image"] = _resolve_column(df, "image", path.parent, origin, image_column, lines, required=True)
    if "mask" in df.columns:
        df["mask"] = _resolve_column(df, "mask", path.parent, origin, mask_column, lines, required=False)
    _check_files_exist(df, origin, lines)
    if "source" not in df.columns:
        df["source"] = path.name
    df[ROW_COLUMN] = [f"{origin} line {line}, row {row}" for row, line in enumerate(lines)]
    return validate_manifest(df, origin)


def _data_lines(path: Path, n_rows: int) -> list[int]:
    """The 1-based line of the file on which each data row starts, as an editor numbers them.

    pandas skips blank (and whitespace-only) lines and lets a quoted field span lines, so ``row + 2`` can
    be wrong; the file is read again with the csv module to count. Should the two readers ever disagree on
    the number of rows, ``row + 2`` it is.
    """
    starts = []
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            end = 0
            for record in reader:
                start, end = end + 1, reader.line_num
                if len(record) <= 1 and not "".join(record).strip():
                    continue  # a blank line: pandas skips it
                starts.append(start)
    except (OSError, csv.Error):
        starts = []
    starts = starts[1:]  # the header
    return starts if len(starts) == n_rows else [row + 2 for row in range(n_rows)]


def _line(row: int, lines: list[int]) -> str:
    # Users look rows up in an editor: name the file line too (row 0 is on line 2, below the header).
    return f"row {row} (line {lines[row]})"


def _check_ratings(df: pd.DataFrame, origin: str, user_column: str, lines: list[int]) -> None:
    # validate_manifest checks this too; here the message can name the CSV line and the user's column.
    values = pd.to_numeric(df["malignancy"], errors="coerce")
    bad = df["malignancy"].notna() & (values.isna() | (values < 1) | (values > 5))
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{origin}: {_line(row, lines)} has malignancy '{df['malignancy'].iloc[row]}' in column '{user_column}'; "
            f"ratings must be numbers from 1 to 5 ({int(bad.sum())} such row(s))"
        )


def _resolve_column(
    df: pd.DataFrame,
    column: str,
    base: Path,
    origin: str,
    user_column: str,
    lines: list[int],
    *,
    required: bool,
) -> list[str]:
    resolved = []
    for row, value in enumerate(df[column].tolist()):
        text = "" if pd.isna(value) else str(value).strip()
        if not text:
            if required:
                raise DataError(
                    f"{origin}: {_line(row, lines)} has an empty image path in column '{user_column}'"
                )
            resolved.append("")
            continue
        file_part, index = split_reference(text)
        suffix = file_suffix(file_part)
        if suffix not in IMAGE_SUFFIXES:
            raise DataError(
                f"{origin}: {_line(row, lines)} column '{user_column}' names {text!r}, an unsupported format "
                f"{suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}"
            )
        full = Path(file_part).expanduser()
        if not full.is_absolute():
            full = base / full
        full = Path(os.path.normpath(full.absolute()))
        resolved.append(str(full) if index is None else f"{full}#{index}")
    return resolved


def _check_files_exist(df: pd.DataFrame, origin: str, lines: list[int]) -> None:
    missing = []
    seen: dict[str, bool] = {}  # many rows can share one stacked .npy file
    for column in ("image", "mask"):
        if column not in df.columns:
            continue
        for row, ref in enumerate(df[column].tolist()):
            if not ref:
                continue
            file_part = split_reference(ref)[0]
            if file_part not in seen:
                seen[file_part] = os.path.isfile(file_part)
            if not seen[file_part]:
                missing.append(f"{_line(row, lines)} {column} {file_part}")
    if missing:
        shown = "; ".join(missing[:_SHOW_MISSING])
        more = f" (and {len(missing) - _SHOW_MISSING} more)" if len(missing) > _SHOW_MISSING else ""
        raise DataError(f"{origin}: {len(missing)} referenced file(s) not found: {shown}{more}")
