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

Reader targets (`reader_soft_targets`): for a binary grouping, a training target can be the share of the
nodule's readers whose own rating lies on the malignant side of the grouping's rule (``malignancy_ratings``,
each reader's rating, ";"-separated, as LIDC-IDRI sources write it), instead of the median's hard class.
Under ``exclude-indeterminate`` a reader's 3 counts one half, so the nodules the grouping leaves out
(`excluded_rows`, median 3) can still train with a target of their own.
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


READER_RATINGS_COLUMN = "malignancy_ratings"
SOFT_GROUPINGS = ("paper", "exclude-indeterminate")


def reader_soft_targets(frame: pd.DataFrame, grouping: str, origin: str = "manifest") -> np.ndarray:
    """P(malignant) per row as the share of its readers on the malignant side of `grouping`'s rule.

    ``paper``: a reader's rating > 3 counts 1, else 0; ``exclude-indeterminate``: > 3 counts 1, 3 counts 1/2,
    < 3 counts 0. Rows without reader ratings (no column, or an empty value) keep their hard ``target``.
    """
    if grouping not in SOFT_GROUPINGS:
        raise DataError(
            f"reader targets need a binary grouping ({', '.join(SOFT_GROUPINGS)}), not {grouping!r}"
        )
    hard = frame["target"].to_numpy(dtype=float) if "target" in frame.columns else np.full(len(frame), np.nan)
    if READER_RATINGS_COLUMN not in frame.columns:
        return hard
    out = hard.copy()
    where = row_labels(frame, origin)
    for i, value in enumerate(frame[READER_RATINGS_COLUMN].tolist()):
        if pd.isna(value) or str(value).strip() == "":
            continue
        try:
            ratings = np.array([float(r) for r in str(value).split(";")])
        except ValueError:
            ratings = np.array([np.nan])
        if np.isnan(ratings).any() or (ratings < 1).any() or (ratings > 5).any():
            raise DataError(
                f"{where[i]}: {READER_RATINGS_COLUMN} {value!r} is not ';'-separated ratings in 1-5 (e.g. 4;5;3)"
            )
        malignant = (ratings > 3).astype(float)
        if grouping == "exclude-indeterminate":
            malignant[ratings == 3] = 0.5
        out[i] = malignant.mean()
    if np.isnan(out).any():
        raise DataError(
            f"{where[int(np.argmax(np.isnan(out)))]}: no reader ratings and no class to fall back on"
        )
    return out


def excluded_rows(manifest: pd.DataFrame, grouping: str, origin: str = "manifest") -> pd.DataFrame:
    """The rated rows `grouping` leaves out (``exclude-indeterminate``: median 3; none for the others), with
    ``class_name`` / ``target`` from their readers' share (`reader_soft_targets` above one half: malignant)."""
    check_grouping(grouping)
    if grouping != "exclude-indeterminate":
        return manifest.iloc[:0].assign(class_name=pd.Series(dtype=str), target=pd.Series(dtype=int))
    if READER_RATINGS_COLUMN not in manifest.columns:
        raise DataError(
            f"{origin}: no {READER_RATINGS_COLUMN!r} column (each reader's rating, e.g. 4;5;3), so the nodules "
            f"{grouping!r} leaves out have no target to train on"
        )
    ratings = manifest[READER_RATINGS_COLUMN].astype("string").str.strip().fillna("")
    df = manifest[(_ratings(manifest, origin) == 3) & (ratings != "")].copy()
    share = reader_soft_targets(df.assign(target=np.nan), grouping, origin) if len(df) else np.zeros(0)
    df["target"] = (share > 0.5).astype(int)
    df["class_name"] = np.asarray(BINARY_CLASSES)[df["target"].to_numpy()]
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
