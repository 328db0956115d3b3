"""Nodule- and patient-level classification: slice probabilities aggregated before the metrics.

- nodule level: the mean of the class probabilities over a nodule's slices (``nodule_id``);
- patient level: for two classes, the highest nodule probability of malignancy (a patient with one
  malignant nodule is a malignant patient); for more, the mean over the patient's nodules.

The true class of a group is the highest class index among its samples: in LIDC a nodule's slices share
one label, and a patient is malignant if any nodule is. ``n_mixed`` counts the groups whose samples
disagree. Sources without ``nodule_id`` are grouped by patient only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.evaluation.metrics import classification_metrics


def _group(
    y: np.ndarray, probs: np.ndarray, keys: np.ndarray, reduce: str
) -> tuple[np.ndarray, np.ndarray, int]:
    frame = pd.DataFrame(probs, columns=[f"p{k}" for k in range(probs.shape[1])])
    frame["y"], frame["key"] = y, keys
    grouped = frame.groupby("key", sort=True)
    p = getattr(grouped[[c for c in frame.columns if c.startswith("p")]], reduce)().to_numpy()
    if reduce == "max":  # binary: p(malignant) is the max; benign is its complement
        p = np.stack([1.0 - p[:, 1], p[:, 1]], axis=1)
    labels = grouped["y"]
    mixed = int((labels.nunique() > 1).sum())
    return labels.max().to_numpy(), p, mixed


def nodule_level(y_true, probs, frame: pd.DataFrame):
    """``(y, probs, patient_ids, n_mixed)`` with one row per nodule (probabilities averaged over its slices),
    or the slices themselves (``n_mixed`` 0) where `frame` has no ``nodule_id``."""
    y, p = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    patient_keys = frame["patient_id"].astype(str).to_numpy()
    if "nodule_id" not in frame.columns:
        return y, p, patient_keys, 0
    nodules = frame["nodule_id"].astype(str).to_numpy()
    yn, pn, mixed = _group(y, p, nodules, "mean")
    # a nodule's patient: nodule ids are unique, so take each nodule's first row
    first = pd.Series(patient_keys).groupby(nodules, sort=True).first().to_numpy()
    return yn, pn, first, mixed


def patient_level(y_true, probs, frame: pd.DataFrame):
    """``(y, probs, patient_ids, n_mixed)`` with one row per patient: the highest nodule probability of
    malignancy for two classes, the mean over the patient's nodules for more."""
    y, p, patient_keys, _ = nodule_level(y_true, probs, frame)
    yp, pp, mixed = _group(y, p, patient_keys, "max" if p.shape[1] == 2 else "mean")
    return yp, pp, np.unique(patient_keys), mixed


def level_metrics(y_true, probs, frame: pd.DataFrame, class_names) -> dict:
    """``{"nodule": metrics, "patient": metrics}`` (each with ``n`` groups and ``n_mixed``), as available."""
    out = {}
    if "nodule_id" in frame.columns:
        y, p, _, mixed = nodule_level(y_true, probs, frame)
        out["nodule"] = {**classification_metrics(y, p, class_names), "n_mixed": mixed}
    yp, pp, _, mixed = patient_level(y_true, probs, frame)
    out["patient"] = {**classification_metrics(yp, pp, class_names), "n_mixed": mixed}
    return out
