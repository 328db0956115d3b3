"""The manifest: the one table every data source produces, and the checks every manifest goes through.

One row per sample (a 2-D axial image). Columns:

=================  ========  =================================================================================
column             required  meaning
=================  ========  =================================================================================
``image``          yes       image reference: an absolute path to a PNG/JPG/DICOM/NIfTI/NumPy file, or
                             ``stack.npy#i`` for image ``i`` of a stacked ``(N, H, W)`` array
``patient_id``     yes       patient identifier (surrounding whitespace is stripped); splits never put one
                             patient in two splits
``mask``           no        nodule mask reference (same forms as ``image``); empty when there is none
``malignancy``     no*       malignancy rating 1-5: one reader's rating, or the median of several
``label``          no*       class name given by the source (e.g. a class-per-folder layout)
``crop_image``     no        a zoomed nodule crop of the same sample (sources that render both views)
``crop_mask``      no        the crop's mask
``nodule_id``      no        physical nodule identifier (several rows can share one)
``source``         no        name of the data source, for reports
``source_row``     (added)   where the row came from, for error messages: ``/data/m.csv line 7, row 5``
                             for a CSV (line: the file's own 1-based line number, the header being line 1;
                             row: the 0-based data row), else ``<origin> row 5`` (0-based row of the source
                             as loaded). It follows the row through label filtering, splits, shuffling and
                             oversampling, so a message always points at the row the user wrote.
=================  ========  =================================================================================

(*) A label grouping needs ``malignancy`` or ``label``. Any other column is kept as it is.

Identity checks (`validate_manifest`, so every source gets them): a row that repeats an earlier row exactly
is dropped with a warning (it adds nothing but a double weight in training and in the metrics); one image
listed under two different patient ids is an error naming both rows (the split would put one patient's image
in two splits).

Image checks (`check_images`, `check_mask_pairs`) read every referenced file once, before any training, and
name the row and the file of every one that cannot be used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungnet.data.io import read_image, read_mask
from lungnet.errors import DataError

REQUIRED_COLUMNS = ("image", "patient_id")
OPTIONAL_COLUMNS = ("mask", "malignancy", "label", "crop_image", "crop_mask", "nodule_id", "source")
ROW_COLUMN = "source_row"
IDENTITY_COLUMNS = ("image", "crop_image")  # one of these names the same picture under one patient only
SHOW_PROBLEMS = 5  # problems spelled out in one error message; the rest are counted


def validate_manifest(df: pd.DataFrame, origin: str = "manifest") -> pd.DataFrame:
    """Check the schema and return a normalised copy (string ids, float ratings, empty masks as "").

    `origin` names the file or source in error messages. Patient ids lose surrounding whitespace
    (``"P1 "`` and ``"P1"`` are one patient). A ``source_row`` column is added unless present (see the module
    docstring). Rows that repeat an earlier row exactly (every column but ``source_row``) are **dropped**, with
    a ``UserWarning`` naming them; an image (or crop) listed under two different patient ids is a `DataError`
    naming both rows and both ids.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{origin}: missing required column(s) {missing}; columns present: {list(df.columns)}"
        )
    if len(df) == 0:
        raise DataError(f"{origin}: has no rows")
    df = df.reset_index(drop=True).copy()
    if ROW_COLUMN not in df.columns:
        df[ROW_COLUMN] = [f"{origin} row {i}" for i in range(len(df))]
    labels = row_labels(df, origin)
    for col in ("image", "patient_id"):
        blank = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if blank.any():
            row = int(blank.to_numpy().nonzero()[0][0])
            raise DataError(f"{labels[row]} has an empty '{col}'")
        df[col] = df[col].astype(str)
    df["patient_id"] = df["patient_id"].str.strip()
    for col in ("mask", "crop_image", "crop_mask"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    if "malignancy" in df.columns:
        values = pd.to_numeric(df["malignancy"], errors="coerce")
        bad = df["malignancy"].notna() & (values.isna() | (values < 1) | (values > 5))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{labels[row]} (image {df.at[row, 'image']!r}) has malignancy "
                f"{df.at[row, 'malignancy']}; ratings must be numbers from 1 to 5"
            )
        df["malignancy"] = values.astype(float)
    if "label" in df.columns:
        df["label"] = df["label"].astype("string")
    df = _drop_repeated_rows(df, origin)
    _check_one_patient_per_image(df, origin)
    return df


def outlined(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of `frame` with a mask in `column` (none where the column is missing; some collections
    outline no lesion: LungCT-Diagnosis), re-indexed from 0."""
    if column not in frame.columns:
        return frame.iloc[:0]
    values = frame[column]
    has = values.notna() & (values.astype(str).str.strip() != "")
    return frame[has.to_numpy()].reset_index(drop=True)


def row_labels(frame: pd.DataFrame, origin: str = "manifest") -> list[str]:
    """How messages name each row of `frame`: its ``source_row``, else ``'<origin> row <position>'``."""
    if ROW_COLUMN not in frame.columns:
        return [f"{origin} row {i}" for i in range(len(frame))]
    values = frame[ROW_COLUMN].tolist()
    return [str(v) if isinstance(v, str) and v.strip() else f"{origin} row {i}" for i, v in enumerate(values)]


def problems_error(problems: Sequence[str], what: str) -> DataError:
    """One `DataError` for a list of problems: the only one as it is, else the count and the first few."""
    if len(problems) == 1:
        return DataError(problems[0])
    shown = "; ".join(problems[:SHOW_PROBLEMS])
    more = f" (and {len(problems) - SHOW_PROBLEMS} more)" if len(problems) > SHOW_PROBLEMS else ""
    return DataError(f"{len(problems)} {what}: {shown}{more}")


def check_images(
    frame: pd.DataFrame, column: str = "image", *, origin: str | None = None, progress: bool = True
) -> None:
    """Read every image of `column` once and raise one `DataError` naming each row and file that is unusable.

    Unusable: missing, unreadable or corrupt (a truncated PNG, a DICOM without pixel data), a ``#k`` index
    out of range, not 2-D, or holding NaN/inf pixels. Repeated references (oversampled copies, slices shared
    by several annotations) are read once. Call it before building pipelines: a bad file found inside
    tf.data surfaces as a TensorFlow error, after training has started.
    """
    labels = row_labels(frame, origin or "manifest")
    if column not in frame.columns:
        raise DataError(f"{origin or 'manifest'}: no image column {column!r}; columns: {list(frame.columns)}")
    refs = frame[column].tolist()
    problems: list[str] = []
    seen: set[str] = set()
    bar = tqdm(refs, desc="checking images", unit="image", disable=not progress, leave=False)
    for i, ref in enumerate(bar):
        if ref is None or (isinstance(ref, float) and np.isnan(ref)) or not str(ref).strip():
            problems.append(f"{labels[i]}: no image in column {column!r}")
            continue
        ref = str(ref)
        if ref in seen:
            continue
        seen.add(ref)
        try:
            image = read_image(ref)
        except DataError as exc:
            problems.append(f"{labels[i]} ({column}): {exc}")
            continue
        if not np.isfinite(image).all():
            problems.append(f"{labels[i]} ({column}): {ref}: image has NaN or infinite pixel values")
    if problems:
        raise problems_error(problems, "images cannot be used")


def check_mask_pairs(
    frame: pd.DataFrame,
    image_column: str = "image",
    mask_column: str = "mask",
    *,
    origin: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Read every (image, mask) pair once; the mask's foreground area in pixels per row.

    `read_mask` checks the values (0/1 or 0/255) and the shape against the image's. Every row needs a mask.
    All pairs are read; one `DataError` names the row and file of each bad one. The segmentation study and
    `lungnet data info` both check masks with this.
    """
    labels = row_labels(frame, origin or "manifest")
    for column in (image_column, mask_column):
        if column not in frame.columns:
            raise DataError(f"{origin or 'manifest'}: no column {column!r}; columns: {list(frame.columns)}")
    masks = frame[mask_column]
    blank = masks.isna() | (masks.astype(str).str.strip() == "")
    if blank.any():
        row = int(blank.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{labels[row]} ({frame[image_column].iloc[row]}): no mask; a segmentation study needs one for "
            f"every image ({int(blank.sum())} row(s) without one)"
        )
    images = frame[image_column].astype(str).tolist()
    areas = np.zeros(len(frame), dtype=np.int64)
    problems: list[str] = []
    bar = tqdm(masks.astype(str).tolist(), desc="checking masks", disable=not progress, leave=False)
    for i, ref in enumerate(bar):
        try:
            shape = read_image(images[i]).shape
        except DataError as exc:
            problems.append(f"{labels[i]} ({image_column}): {exc}")
            continue
        try:
            areas[i] = int(read_mask(ref, expected_shape=shape).sum())
        except DataError as exc:
            problems.append(f"{labels[i]}: {exc}")
    if problems:
        raise problems_error(problems, "image/mask pairs cannot be used")
    return areas


def _drop_repeated_rows(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    content = df.drop(columns=[ROW_COLUMN])
    try:
        repeated = content.duplicated(keep="first").to_numpy()
    except TypeError:  # a column of unhashable values (lists): compare the rows as text
        repeated = content.astype(str).duplicated(keep="first").to_numpy()
    if not repeated.any():
        return df
    labels = row_labels(df, origin)
    first_of: dict[tuple, int] = {}
    pairs = []
    for i, key in enumerate(content.astype(str).itertuples(index=False, name=None)):
        first = first_of.setdefault(key, i)
        if repeated[i]:
            pairs.append(f"{labels[i]} repeats {labels[first]}")
    shown = "; ".join(pairs[:SHOW_PROBLEMS])
    more = f" (and {len(pairs) - SHOW_PROBLEMS} more)" if len(pairs) > SHOW_PROBLEMS else ""
    warnings.warn(
        f"{origin}: {len(pairs)} row(s) repeat an earlier row exactly and are dropped (kept once): {shown}{more}",
        UserWarning,
        stacklevel=3,
    )
    return df[~repeated].reset_index(drop=True)


def _check_one_patient_per_image(df: pd.DataFrame, origin: str) -> None:
    for column in IDENTITY_COLUMNS:
        if column not in df.columns:
            continue
        refs = df[column].astype(str)
        listed = refs.str.strip() != ""
        patients = df.loc[listed, "patient_id"].groupby(refs[listed]).nunique()
        shared = patients[patients > 1]
        if shared.empty:
            continue
        labels = row_labels(df, origin)
        problems = []
        for ref in shared.index[:SHOW_PROBLEMS]:
            rows = np.flatnonzero((refs == ref).to_numpy())
            a = int(rows[0])
            b = next(int(r) for r in rows if df.at[int(r), "patient_id"] != df.at[a, "patient_id"])
            problems.append(
                f"{column} {ref} is listed under patient {df.at[a, 'patient_id']!r} in {labels[a]} and under "
                f"patient {df.at[b, 'patient_id']!r} in {labels[b]}"
            )
        more = f" (and {len(shared) - SHOW_PROBLEMS} more)" if len(shared) > SHOW_PROBLEMS else ""
        raise DataError(
            f"{origin}: {len(shared)} {column}(s) belong to two patients: {'; '.join(problems)}{more}; one "
            "image is one patient's, else a split can put it in both training and test sets"
        )
