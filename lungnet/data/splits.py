"""Train/validation/test splits at the patient level, stratified by class.

Neighbouring slices of one nodule are near-duplicates and a patient can have several nodules, so a row-level
split leaks test patients into training. Patient-level is the default; row-level only on request, with a
warning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from lungnet.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def split_manifest(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    level: str = "patient",
    class_names: tuple[str, ...] | None = None,
    require_every_class: bool = True,
) -> pd.DataFrame:
    """Add a ``split`` column (train/val/test). Needs ``target``; rows of one patient share a split.

    ``level="manifest"`` keeps the split the manifest already gives (`MANIFEST_SPLIT_COLUMNS`: ``split``, or
    ``paper_split`` from `lungnet data harmonize`), checked: known names only, one split per patient.

    Patients are stratified by their most severe class (the highest target among their rows) and dealt to
    the split whose share of that stratum's rows is furthest below its fraction, so each split gets about
    its fraction of every class. With `require_every_class` (classification) a split missing a class is an
    error; without it (strata that are only a balancing aid, such as nodule size) it is allowed.
    """
    if level == "manifest":
        return _given_split(df, class_names if require_every_class else None)
    fractions = check_fractions(fractions)
    if "target" not in df.columns:
        raise DataError("split_manifest needs a 'target' column: assign labels first")
    if level not in ("patient", "row"):
        raise DataError(f"split level {level!r} is not 'patient', 'row' or 'manifest'")
    if level == "row":
        warnings.warn(
            "row-level split: slices of one patient can land in train and test, which inflates test scores",
            stacklevel=2,
        )
        groups = pd.Series(np.arange(len(df)), index=df.index).astype(str)
    else:
        groups = df["patient_id"].astype(str).str.strip()  # as validate_manifest normalises them
    rng = np.random.default_rng(seed)
    sizes = groups.value_counts()
    stratum = df.groupby(groups)["target"].max()
    assignment: dict[str, int] = {}
    for _, patients in sorted(stratum.groupby(stratum), key=lambda kv: kv[0]):
        ids = patients.index.to_numpy()
        ids = ids[rng.permutation(len(ids))]
        counts = np.zeros(3)
        total = sizes[ids].sum()
        for pid in ids:
            deficit = np.asarray(fractions) * total - counts
            choice = int(np.argmax(deficit))
            assignment[pid] = choice
            counts[choice] += sizes[pid]
    out = df.copy()
    out["split"] = groups.map(lambda g: SPLIT_NAMES[assignment[g]]).to_numpy()
    if require_every_class:
        _check_classes_present(out, fractions, class_names)
    return out


MANIFEST_SPLIT_COLUMNS = ("split", "paper_split")


def _given_split(df: pd.DataFrame, class_names) -> pd.DataFrame:
    from lungnet.data.manifest import row_labels

    column = next((c for c in MANIFEST_SPLIT_COLUMNS if c in df.columns), None)
    if column is None:
        raise DataError(
            f"split_level 'manifest' needs a column {' or '.join(MANIFEST_SPLIT_COLUMNS)} (train / val / test); "
            "`lungnet data harmonize` writes paper_split"
        )
    values = df[column].astype("string").str.strip().str.lower()
    bad = ~values.isin(SPLIT_NAMES)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{row_labels(df)[row]}: {column} {df[column].iloc[row]!r} is not one of {list(SPLIT_NAMES)}"
        )
    per_patient = values.groupby(df["patient_id"].astype(str).str.strip()).nunique()
    if (per_patient > 1).any():
        raise DataError(
            f"{column}: patient {per_patient[per_patient > 1].index[0]!r} is in more than one split"
        )
    out = df.copy()
    out["split"] = values.to_numpy()
    if class_names is not None:
        _check_classes_present(out, (1.0, 1.0, 1.0), class_names)
    return out


def check_fractions(fractions, what: str = "split fractions") -> tuple[float, float, float]:
    """(train, val, test) fractions: three non-negative numbers summing to 1, else an error naming them."""
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DataError(f"{what} {fractions!r} must be three numbers, e.g. 0.7,0.15,0.15") from None
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"{what} {fractions} must be three non-negative numbers summing to 1")
    return fractions


def _check_classes_present(df: pd.DataFrame, fractions, class_names) -> None:
    names = class_names or tuple(str(t) for t in sorted(df["target"].unique()))
    for split, fraction in zip(SPLIT_NAMES, fractions, strict=True):
        if fraction == 0:
            continue
        present = set(df.loc[df["split"] == split, "target"])
        for target, name in enumerate(names):
            if target not in present:
                raise DataError(
                    f"the {split} split has no samples of class {name!r} "
                    f"({int((df['target'] == target).sum())} samples of it in all); use more data, "
                    "other split fractions or another seed"
                )


def patient_folds(frame: pd.DataFrame, folds: int, seed: int = 0, origin: str = "data") -> np.ndarray:
    """Each row's fold (0 .. `folds` - 1): a patient's rows share one fold, and each fold holds every class
    (stratified by ``target``, shuffled by `seed`). A fold ensemble trains member i on the other folds and
    stops it on fold i, so every row gets one prediction from a member that never saw its patient."""
    from sklearn.model_selection import StratifiedGroupKFold

    patients = frame["patient_id"].astype(str).str.strip().to_numpy()
    y = frame["target"].to_numpy()
    if len(np.unique(patients)) < folds:
        raise DataError(f"{origin}: {len(np.unique(patients))} patients cannot make {folds} patient folds")
    out = np.full(len(frame), -1)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, patients)):
        out[held] = fold
    for fold in range(folds):
        missing = sorted(set(np.unique(y)) - set(np.unique(y[out == fold])))
        if missing:
            raise DataError(
                f"{origin}: patient fold {fold + 1} of {folds} has no row of class(es) {missing}; "
                "use fewer folds (ensemble members) or more patients"
            )
    return out
