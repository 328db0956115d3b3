"""Nodule- and patient-level metrics from slice predictions, against hand-worked groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungnet.evaluation.aggregation import level_metrics

NAMES = ["benign", "malignant"]


def _frame():
    return pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "A", "B", "B", "C"],
            "nodule_id": ["A/0", "A/0", "A/1", "A/1", "B/0", "B/0", "C/0"],
        }
    )


def test_nodule_mean_and_patient_max():
    y = np.array([0, 0, 1, 1, 0, 0, 1])
    p1 = np.array([0.2, 0.4, 0.9, 0.7, 0.1, 0.3, 0.45])
    levels = level_metrics(y, np.stack([1 - p1, p1], axis=1), _frame(), NAMES)
    nodule, patient = levels["nodule"], levels["patient"]
    # nodules: A/0 0.3 (benign), A/1 0.8 (malignant), B/0 0.2 (benign), C/0 0.45 (malignant)
    assert nodule["n"] == 4 and nodule["n_mixed"] == 0
    assert nodule["auc"] == pytest.approx(1.0)  # both malignant nodules above both benign ones
    assert nodule["accuracy"] == pytest.approx(0.75)  # C/0 at 0.45 is called benign
    # patients: A max(0.3, 0.8) = 0.8 malignant, B 0.2 benign, C 0.45 malignant
    assert patient["n"] == 3 and patient["accuracy"] == pytest.approx(2 / 3)
    assert patient["n_mixed"] == 1  # A has a benign and a malignant nodule: malignant


def test_without_nodule_ids_patients_only_and_multiclass_mean():
    frame = _frame().drop(columns="nodule_id")
    probs = np.array([[0.6, 0.3, 0.1]] * 4 + [[0.1, 0.2, 0.7]] * 2 + [[0.2, 0.6, 0.2]])
    y = np.array([0, 0, 0, 0, 2, 2, 1])
    levels = level_metrics(y, probs, frame, ["1", "2", "3"])
    assert list(levels) == ["patient"] and levels["patient"]["n"] == 3
    assert levels["patient"]["accuracy"] == pytest.approx(1.0)
