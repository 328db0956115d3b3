"""Label groupings: how malignancy ratings (or class names) become integer training targets.

===========================  ====================  ================================================
grouping                     classes               rule on the malignancy rating r (1-5)
===========================  ====================  ================================================
``paper``                    benign, malignant     r <= 3 benign, r > 3 malignant (ratings 1-3 vs 4-5;
                                                   a median of 3.5 counts as malignant)
``exclude-indeterminate``    benign, malignant     r < 3 benign, r > 3 malignant, r == 3 left out
``5class``                   1, 2, 3, 4, 5         r rounded half up
``labels``                   the source's names    the ``label`` column as given (e.g. class folders)
===========================  ====================  ================================================

Sources without ratings but with ``label`` names benign / indeterminate / malignant map as the rules say
(indeterminate = a rating of 3).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.data.manifest import row_labels
from lungnet.errors import DataError

GROUPINGS = ("paper", "exclude-indeterminate", "5class", "labels")
BINARY_CLASSES = ("benign", "malignant")
FIVE_CLASSES = ("1", "2", "3", "4", "5")
_NAME_TO_RATING = {"benign": 2.0, "indeterminate": 3.0, "malignant": 4.0}


def class_names(grouping: str, manifest: pd.DataFrame | None = None) -> tuple[str, ...]:
    check_grouping(grouping)
    if grouping == "5class":
        return FIVE_CLASSES
    if grouping == "labels":
        if manifest is None or "label" not in manifest.columns:
            raise DataError("grouping 'labels' needs a 'label' column in the manifest")
        return tuple(sorted(manifest["label"].dropna().astype(str).unique()))
    return BINARY_CLASSES


def check_grouping(grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise DataError(f"unknown label grouping {grouping!r}; choose one of {', '.join(GROUPINGS)}")


def assign_labels(manifest: pd.DataFrame, grouping: str, origin: str = "manifest") -> pd.DataFrame:
    """Return the rows the grouping keeps, with an int ``target`` column and a ``class_name`` column."""
    names = class_names(grouping, manifest)
    if grouping == "labels":
        df = manifest[manifest["label"].notna()].copy()
        df["class_name"] = df["label"].astype(str)
    else:
        ratings = _ratings(manifest, origin)
        keep = ratings.notna()
        if grouping == "exclude-indeterminate":
            keep &= ratings != 3
        df = manifest[keep].copy()
        r = ratings[keep]
        if grouping == "5class":
            df["class_name"] = np.floor(r + 0.5).clip(1, 5).astype(int).astype(str)
        else:
            df["class_name"] = np.where(r > 3, "malignant", "benign")
    if df.empty:
        raise DataError(f"{origin}: grouping {grouping!r} leaves no samples")
    df["target"] = df["class_name"].map({name: i for i, name in enumerate(names)}).astype(int)
    return df.reset_index(drop=True)


def _ratings(manifest: pd.DataFrame, origin: str) -> pd.Series:
    if "malignancy" in manifest.columns:
        return manifest["malignancy"].astype(float)
    if "label" in manifest.columns:
        names = manifest["label"].astype("string").str.strip().str.lower()
        unknown = names.notna() & ~names.isin(list(_NAME_TO_RATING) + list(FIVE_CLASSES))
        if unknown.any():
            row = int(unknown.to_numpy().nonzero()[0][0])
            where = row_labels(manifest, origin)[row]
            raise DataError(
                f"{where} has label {manifest['label'].iloc[row]!r}; without a malignancy column "
                f"labels must be one of {sorted(_NAME_TO_RATING)} or 1-5 (or use grouping 'labels')"
            )
        ratings = {**_NAME_TO_RATING, **{name: float(name) for name in FIVE_CLASSES}}
        return names.map(ratings).astype(float)
    raise DataError(f"{origin}: no 'malignancy' or 'label' column, so there is nothing to classify")


def label_counts(df: pd.DataFrame, names: tuple[str, ...]) -> dict[str, int]:
    counts = df["class_name"].value_counts()
    return {name: int(counts.get(name, 0)) for name in names}
