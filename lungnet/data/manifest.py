"""The manifest: the one table every data source produces.

One row per sample (a 2-D axial image). Columns:

=================  ========  =================================================================================
column             required  meaning
=================  ========  =================================================================================
``image``          yes       image reference: an absolute path to a PNG/JPG/DICOM/NIfTI/NumPy file, or
                             ``stack.npy#i`` for image ``i`` of a stacked ``(N, H, W)`` array
``patient_id``     yes       patient identifier; splits never put one patient in two splits
``mask``           no        nodule mask reference (same forms as ``image``); empty when there is none
``malignancy``     no*       malignancy rating 1-5: one reader's rating, or the median of several
``label``          no*       class name given by the source (e.g. a class-per-folder layout)
``crop_image``     no        a zoomed nodule crop of the same sample (sources that render both views)
``crop_mask``      no        the crop's mask
``nodule_id``      no        physical nodule identifier (several rows can share one)
``source``         no        name of the data source, for reports
=================  ========  =================================================================================

(*) A label grouping needs ``malignancy`` or ``label``. Any other column is kept as it is.
"""

from __future__ import annotations

import pandas as pd

from lungnet.errors import DataError

REQUIRED_COLUMNS = ("image", "patient_id")
OPTIONAL_COLUMNS = ("mask", "malignancy", "label", "crop_image", "crop_mask", "nodule_id", "source")


def validate_manifest(df: pd.DataFrame, origin: str = "manifest") -> pd.DataFrame:
    """Check the schema and return a normalised copy (string ids, float ratings, empty masks as "").

    `origin` names the file or source in error messages.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{origin}: missing required column(s) {missing}; columns present: {list(df.columns)}"
        )
    if len(df) == 0:
        raise DataError(f"{origin}: has no rows")
    df = df.reset_index(drop=True).copy()
    for col in ("image", "patient_id"):
        blank = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if blank.any():
            row = int(blank.idxmax())
            raise DataError(f"{origin}: row {row} has an empty '{col}'")
        df[col] = df[col].astype(str)
    for col in ("mask", "crop_image", "crop_mask"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    if "malignancy" in df.columns:
        values = pd.to_numeric(df["malignancy"], errors="coerce")
        bad = df["malignancy"].notna() & (values.isna() | (values < 1) | (values > 5))
        if bad.any():
            row = int(bad.idxmax())
            raise DataError(
                f"{origin}: row {row} (image {df.at[row, 'image']!r}) has malignancy "
                f"{df.at[row, 'malignancy']}; ratings must be numbers from 1 to 5"
            )
        df["malignancy"] = values.astype(float)
    if "label" in df.columns:
        df["label"] = df["label"].astype("string")
    return df
