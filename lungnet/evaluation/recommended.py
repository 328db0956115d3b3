"""The model a classification run recommends: of every image-only model it scored (the selected network,
the measured-nodule classifier, their mean), the one with the best validation F1.

The run selects its network by validation F1 (it is the one explained and exported); the image-only rows
beside it are scored on the same validation rows (a fold ensemble's are its out-of-fold predictions), so
the same criterion ranks all of them. The test split never takes part in the choice, so its numbers for the
recommended model are a fair estimate, and a reader need not pick the best row of a table by its test
scores. Computed from a run's ``metrics.json`` alone, so older runs get it too.
"""

from __future__ import annotations


def candidates(summary: dict) -> dict[str, dict]:
    """``{row: record}`` of the image-only models of a classification `summary`: the selected network's
    record (its test metrics at slice level, with ``levels``, ``calibration`` and ``against_size_only``
    taken from the summary) and each ``image_only`` row as recorded."""
    name = summary["selected_model"]
    network = summary["models"][name]
    rows = {
        name: {
            **network["test"],
            "val": network["val"],
            "levels": summary.get("levels", {}),
            "calibration": network.get("calibration"),
            "against_size_only": summary.get("against_size_only"),
            "out_of_fold_against_size_only": network.get("out_of_fold_against_size_only"),
        }
    }
    rows.update(summary.get("image_only", {}))
    return rows


CRITERION = (
    "best validation F1 among the selected network and the image-only rows, chosen without the test split"
)


def recommended_model(summary: dict) -> dict:
    """``{"model", "criterion", "validation_f1": {row: F1}}``: the row of `candidates` with the highest
    validation F1 (the malignant class's when binary, macro when 5-class); a tie keeps the network. Rows
    without a validation F1 (undefined on their validation split) are never chosen."""
    scores = {row: record.get("val", {}).get("f1") for row, record in candidates(summary).items()}
    defined = {row: f1 for row, f1 in scores.items() if f1 is not None}
    model = max(defined, key=defined.get) if defined else summary["selected_model"]
    return {
        "model": model,
        "criterion": CRITERION,
        "validation_f1": scores,
    }


def recommended_name(summary: dict) -> str | None:
    """The model a run recommends: as recorded, or computed from its record for a run made before
    recommendations were; None where it has no image-only rows to choose among."""
    if not summary.get("image_only"):
        return None
    return (summary.get("recommended") or recommended_model(summary))["model"]


def recommended_record(summary: dict) -> tuple[str, dict]:
    """(name, record) of the recommended model: its test metrics, levels, calibration and comparisons."""
    name = recommended_name(summary) or summary["selected_model"]
    return name, candidates(summary)[name]


def recommended_line(summary: dict) -> str:
    """One line for the terminal: the recommended model's test scores at each level and its calibration."""
    name, record = recommended_record(summary)
    parts = [f"slice AUC {_fmt(record.get('auc'))} / macro F1 {_fmt(record.get('f1_macro'))}"]
    for level in ("nodule", "patient"):
        scores = record.get("levels", {}).get(level)
        if scores:
            parts.append(f"{level} {_fmt(scores.get('auc'))} / {_fmt(scores.get('f1_macro'))}")
    calibration = record.get("calibration") or {}
    if calibration.get("ece_after") is not None:
        parts.append(f"ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}")
    return f"recommended model {name} (best validation F1): test " + ", ".join(parts)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
