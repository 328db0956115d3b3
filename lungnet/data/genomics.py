"""Patient-level genomic tables for CT + genomic fusion: one feature vector per patient.

Two formats, read by `read_genomic_table`:

- ``nsclc-radiogenomics``: TCIA's NSCLC-Radiogenomics clinical CSV. The patient is ``Case ID`` (``R01-001``,
  ``AMC-001``); the genes are ``EGFR mutation status``, ``KRAS mutation status`` and ``ALK translocation
  status``. ``Mutant`` / ``Translocated`` is 1, ``Wildtype`` 0. ``Unknown``, ``Not collected`` and empty
  cells are missing. Any other value is an error naming the file, row, column and value.
- ``numeric``: a CSV with ``patient_id`` and numeric columns (expression values, a gene panel, scores).
  Empty cells are missing; a non-numeric cell is an error.

`GenomicEncoder` turns a table into model inputs. It is fitted on the training patients only. Each column is
z-scored with the training statistics, and missing values become 0, the training mean. Each column with
missing values gets a ``<column> known`` indicator (1 where measured), so "wildtype" and "not measured" stay
distinct. An optional PCA (``pca: k``) is fitted on the training rows. A patient with no row at all
gets zeros and ``has_genomics`` = 0 under ``missing_patients: zeros``, or an error under ``error``. When
no image patient matches a genomic row, that is always an error, showing ids from both sides (the usual
cause is two id schemes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from lungnet.errors import ConfigError, DataError

NSCLC_ID = "Case ID"
NSCLC_GENES = ("EGFR mutation status", "KRAS mutation status", "ALK translocation status")
POSITIVE = {"mutant": 1.0, "translocated": 1.0, "wildtype": 0.0}
MISSING = {"", "unknown", "not collected", "nan"}
PATIENT = "patient_id"
PRESENT = "has_genomics"
FORMATS = ("auto", "nsclc-radiogenomics", "numeric")


@dataclass(frozen=True)
class GenomicTable:
    """Per-patient values (NaN where missing), indexed by patient id as text."""

    values: pd.DataFrame
    source: str
    kind: str


def read_genomic_table(
    path: str | Path, kind: str = "auto", columns: list[str] | None = None
) -> GenomicTable:
    """Read `path` as `kind` (``auto``: NSCLC-Radiogenomics when it has a ``Case ID`` column)."""
    if kind not in FORMATS:
        raise ConfigError(f"genomics.format: {kind!r} is not one of {list(FORMATS)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: genomic table not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    if kind == "auto":
        kind = "nsclc-radiogenomics" if NSCLC_ID in raw.columns else "numeric"
    id_column = NSCLC_ID if kind == "nsclc-radiogenomics" else PATIENT
    wanted = list(columns) if columns else (list(NSCLC_GENES) if kind == "nsclc-radiogenomics" else None)
    _require(raw, [id_column, *(wanted or [])], path)
    ids = raw[id_column].str.strip()
    _check_ids(ids, id_column, path)
    if wanted is None:
        wanted = [c for c in raw.columns if c != id_column]
        if not wanted:
            raise DataError(f"{path}: no genomic columns beside {id_column!r}")
    parse = _status if kind == "nsclc-radiogenomics" else _number
    values = pd.DataFrame(
        {c: [parse(v, path, row, c) for row, v in enumerate(raw[c])] for c in wanted}, index=ids.to_numpy()
    )
    values.index.name = PATIENT
    return GenomicTable(values, str(path), kind)


def _require(raw: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(raw.columns)}")


def _check_ids(ids: pd.Series, column: str, path: Path) -> None:
    empty = ids == ""
    if empty.any():
        raise DataError(f"{path}: row {int(np.argmax(empty)) + 2} has an empty {column!r}")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise DataError(f"{path}: patient id(s) {list(duplicated[:5])} appear more than once in {column!r}")


def _status(value: str, path: Path, row: int, column: str) -> float:
    text = value.strip().lower()
    if text in MISSING:
        return np.nan
    if text in POSITIVE:
        return POSITIVE[text]
    raise DataError(
        f"{path}: row {row + 2}, {column!r}: {value!r} is not Mutant / Translocated / Wildtype / Unknown / "
        "Not collected"
    )


def _number(value: str, path: Path, row: int, column: str) -> float:
    text = value.strip()
    if text.lower() in MISSING:
        return np.nan
    try:
        number = float(text)
    except ValueError:
        raise DataError(f"{path}: row {row + 2}, {column!r}: {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DataError(f"{path}: row {row + 2}, {column!r}: {value!r} is not a finite number")
    return number


@dataclass
class GenomicEncoder:
    """Training-patient statistics turning a `GenomicTable` into fixed-length vectors (see the module)."""

    columns: list[str]
    mean: np.ndarray
    std: np.ndarray
    indicators: list[str]  # columns with any missing value in the table: a "known" flag each
    components: np.ndarray | None  # [features, k] of the PCA, or None
    missing_patients: Literal["zeros", "error"] = "zeros"

    @classmethod
    def fit(
        cls,
        table: GenomicTable,
        train_patients,
        pca: int | None = None,
        missing_patients: Literal["zeros", "error"] = "zeros",
    ) -> GenomicEncoder:
        if missing_patients not in ("zeros", "error"):
            raise ConfigError(f"genomics.missing_patients: {missing_patients!r} is not 'zeros' or 'error'")
        rows = _matched(table, train_patients, "training")
        train = table.values.loc[rows]
        mean = train.mean().fillna(0.0).to_numpy()
        std = train.std(ddof=0).to_numpy()
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        indicators = [c for c in table.values.columns if table.values[c].isna().any()]
        encoder = cls(list(table.values.columns), mean, std, indicators, None, missing_patients)
        if pca is not None:
            features = encoder._standardised(train)
            if not isinstance(pca, int) or not 1 <= pca <= min(features.shape):
                raise ConfigError(
                    f"genomics.pca: {pca!r} must be an integer from 1 to {min(features.shape)} (the training "
                    "rows and features)"
                )
            centred = features - features.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            encoder.components = vt[:pca].T
        return encoder

    @property
    def feature_names(self) -> list[str]:
        if self.components is not None:
            names = [f"pc{i + 1}" for i in range(self.components.shape[1])]
        else:
            names = [*self.columns, *(f"{c} known" for c in self.indicators)]
        return [*names, PRESENT]

    def _standardised(self, values: pd.DataFrame) -> np.ndarray:
        z = (values[self.columns].to_numpy(dtype=float) - self.mean) / self.std
        known = values[self.indicators].notna().to_numpy(dtype=float)
        return np.concatenate([np.nan_to_num(z, nan=0.0), known], axis=1)

    def transform(self, table: GenomicTable, patients) -> np.ndarray:
        """``[len(patients), len(feature_names)]`` float32, in the order of `patients`."""
        patients = pd.Index([str(p) for p in patients])
        present = patients.isin(table.values.index)
        if not present.any():
            _matched(table, patients, "image")  # raises, with examples of both id schemes
        if not present.all() and self.missing_patients == "error":
            absent = list(patients[~present].unique()[:5])
            raise DataError(
                f"{table.source}: no genomic row for patient(s) {absent} ({int((~present).sum())} in all); "
                "set genomics.missing_patients: zeros to give them zeros and has_genomics = 0"
            )
        rows = table.values.reindex(patients)
        features = self._standardised(rows)
        if self.components is not None:
            features = features @ self.components
        features[~present] = 0.0
        return np.concatenate([features, present[:, None].astype(float)], axis=1).astype("float32")


def _matched(table: GenomicTable, patients, which: str) -> list[str]:
    patients = pd.Index([str(p) for p in patients]).unique()
    rows = [p for p in patients if p in table.values.index]
    if not rows:
        raise DataError(
            f"{table.source}: none of the {len(patients)} {which} patients has a genomic row. Genomic ids look "
            f"like {list(table.values.index[:3])}, the images' like {list(patients[:3])}"
        )
    return rows
