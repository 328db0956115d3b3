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


def test_learning_curve_figure_marks_the_kept_epoch():
    from lungnet.evaluation.figures import learning_curve_figure

    logs = {
        "a": pd.DataFrame(
            {
                "loss": [1.0, 0.8, 0.7],
                "val_loss": [0.9, 0.6, 0.65],
                "val_auc": [0.6, 0.7, 0.72],
                "auc": [0.55, 0.7, 0.8],
            }
        ),
        "a_finetuned": pd.DataFrame({"loss": [0.6, 0.5], "val_loss": [0.62, 0.58]}),
    }
    fig = learning_curve_figure(logs, {"a": 10, "a_finetuned": 10})
    loss_ax, metric_ax = fig.axes
    circles = [line for line in loss_ax.lines if line.get_marker() == "o"]
    assert [tuple(c.get_xdata()) for c in circles] == [(20,), (50,)]  # steps: best epoch 2, then 30 + 20
    curves = [line for line in metric_ax.lines if line.get_gid() != "phase boundary"]
    assert loss_ax.get_xlabel() == "training steps" and len(curves) == 2
    assert len(metric_ax.lines) == 3  # and the boundary where fine-tuning starts


def test_learning_curves_circle_the_monitor_and_start_members_at_zero():
    from lungnet.evaluation.figures import learning_curve_figure

    log = pd.DataFrame({"loss": [1.0, 0.8, 0.7], "val_loss": [0.9, 0.6, 0.65], "val_auc": [0.6, 0.75, 0.7]})
    other = log.assign(val_auc=[0.6, 0.65, 0.8])
    fig = learning_curve_figure({"m_member1": log, "m_member2": other}, monitor="val_auc")
    loss_ax, metric_ax = fig.axes
    circles = [line for line in metric_ax.lines if line.get_marker() == "o"]
    assert [tuple(c.get_xdata()) for c in circles] == [(2,), (3,)]  # best AUC; both members from epoch 1
    assert not [line for line in loss_ax.lines if line.get_marker() == "o"]
    assert "best val_auc" in metric_ax.get_title()


def test_segmentation_levels_readers_slices_nodules_patients():
    from lungnet.evaluation.segmentation import level_summaries

    per_image = pd.DataFrame({"dice": [0.9, 0.5, 0.7, 0.1, np.nan], "iou": [0.8, 0.4, 0.6, 0.05, np.nan]})
    frame = pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B", "B"],
            "nodule_id": ["A/0", "A/0", "A/1", "B/0", "B/0"],
            "is_central": [1, 0, 1, 1, 0],
            "n_readers": [4, 4, 2, 3, 3],
        }
    )
    levels = level_summaries(per_image, frame)
    # readers' slices: central slices of nodules with 3-4 readers: rows 0 and 3 (A/1 has 2 readers)
    assert levels["readers_slices"]["n"] == 2 and levels["readers_slices"]["dice"] == pytest.approx(0.5)
    # nodules: A/0 0.7, A/1 0.7, B/0 0.1 (its NaN slice skipped)
    assert levels["nodule"]["n"] == 3 and levels["nodule"]["dice"] == pytest.approx(1.5 / 3)
    assert levels["patient"]["n"] == 2 and levels["patient"]["dice"] == pytest.approx((0.7 + 0.1) / 2)
    # a nodule-free slice (no nodule id, a phantom negative) counts for its patient, not as a nodule
    extra = pd.DataFrame({"patient_id": ["B"], "nodule_id": [np.nan], "is_central": [0], "n_readers": [0]})
    levels = level_summaries(
        pd.concat([per_image, pd.DataFrame({"dice": [1.0], "iou": [1.0]})], ignore_index=True),
        pd.concat([frame, extra], ignore_index=True),
    )
    assert levels["nodule"]["n"] == 3 and levels["nodule"]["dice"] == pytest.approx(1.5 / 3)
    assert levels["patient"]["dice"] == pytest.approx((0.7 + (0.1 + 1.0) / 2) / 2)


def test_learning_curves_chain_the_phases_of_one_model():
    from lungnet.evaluation.figures import learning_curve_figure

    log = pd.DataFrame({"loss": [1.0, 0.8], "val_loss": [0.9, 0.7], "val_iou": [0.3, 0.4]})
    # as a run folder lists them, by name: "final" before "round001", "inf_net_x" beside "inf_net"
    phases = [
        "inf_net",
        "inf_net_x_final",
        "inf_net_x_round001",
        "semi_final",
        "semi_round001",
        "semi_round002",
    ]
    fig = learning_curve_figure({p: log for p in phases}, {p: 10 for p in phases}, monitor="val_iou")
    loss_ax, metric_ax = fig.axes
    circles = [tuple(line.get_xdata()) for line in metric_ax.lines if line.get_marker() == "o"]
    # each model's rounds, then its final tuning, follow one another; another model starts at zero
    assert circles == [(20,), (20,), (40,), (20,), (40,), (60,)]
    labels = [t.get_text() for t in metric_ax.get_legend().get_texts()]
    assert labels == ["inf_net: validation iou", "inf_net_x: validation iou", "semi: validation iou"]
