"""External validation of a classification run: evaluated on every sample of another dataset.

The run's own preprocessing, view and label grouping are applied, so the numbers compare with the run's test
split; every sample of the source is used (no split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.dataset import (
    check_source_images,
    classification_pipeline,
    image_column,
    mask_column,
    with_neighbours,
)
from lungnet.data.labels import assign_labels, class_names
from lungnet.data.pipelines import data_errors
from lungnet.data.registry import load_source
from lungnet.errors import DataError
from lungnet.evaluation import (
    Calibration,
    SizeOnly,
    calibration_summary,
    classification_metrics,
    predictions_at_threshold,
)
from lungnet.evaluation import figures as evaluation_figures
from lungnet.evaluation.aggregation import level_metrics
from lungnet.evaluation.figures import save_figure
from lungnet.evaluation.measured_nodule import (
    MEASURED_ROW,
    SEGMENTER_DIR,
    FittedMeasured,
    load_fitted,
    mean_row,
    measured_features,
    segmenter_dice_by_split,
)
from lungnet.evaluation.paired import paired_bootstrap_classification
from lungnet.evaluation.recommended import CRITERION, recommended_name
from lungnet.fileio import write_csv, write_json
from lungnet.inference import predict_proba
from lungnet.reports.classification import AGAINST_CAPTION, against_size_only_rows, against_size_only_table
from lungnet.reports.html import HtmlReport
from lungnet.runs import load_run_config
from lungnet.runs.artifacts import evaluation_dir, load_run_model, run_class_names, run_metrics
from lungnet.studies.mask_prediction import predict_masks


def scored_here(y, probs, labelled: pd.DataFrame, names, recorded_row: dict, size_probs=None) -> dict:
    """Metrics of `probs` at slice, nodule and patient level; their ECE before and after the run's own
    calibration (fitted on the run's held-out splits, never on this set); for two classes, the slice metrics
    at the threshold the run chose on its held-out predictions (``at_run_threshold``); and, given the
    size-only baseline's probabilities, the differences from it with patient-bootstrap intervals.
    `recorded_row`: the run's record of this model (its ``calibration`` and ``threshold_from_val``)."""
    out = {**classification_metrics(y, probs, names), "levels": level_metrics(y, probs, labelled, names)}
    calibration = Calibration.from_dict(recorded_row.get("calibration"))
    if calibration is not None:
        out["calibration"] = calibration_summary(
            calibration, y, probs, patients=labelled["patient_id"].to_numpy()
        )
    threshold = (recorded_row.get("threshold_from_val") or {}).get("threshold")
    if threshold is not None and len(names) == 2:
        out["at_run_threshold"] = {
            "threshold": threshold,
            **classification_metrics(y, probs, names, y_pred=predictions_at_threshold(probs, threshold)),
        }
    if size_probs is not None:
        out["against_size_only"] = paired_bootstrap_classification(y, probs, size_probs, labelled, names)
    return out


def size_only_here(labelled: pd.DataFrame, names, recorded: dict) -> tuple[dict, np.ndarray | None]:
    """The run's own size-only baseline (fitted on its training split) on this set's diameters: its metrics
    and probabilities, or why it could not be scored (``skipped``) and None."""
    fitted = SizeOnly.from_dict(recorded.get("baselines", {}).get("size_only", {}).get("fitted"))
    if fitted is None:
        return {
            "skipped": "the run records no fitted size-only baseline (its data had no diameters, or "
            "it was trained before lungnet kept one)"
        }, None
    if "diameter_mm" not in labelled.columns:
        return {"skipped": "this set has no diameter_mm column"}, None
    sizes = pd.to_numeric(labelled["diameter_mm"], errors="coerce").to_numpy(float)
    missing = int((~np.isfinite(sizes) | (sizes < 0)).sum())
    if missing:
        return {"skipped": f"{missing} of {len(sizes)} rows have no valid diameter_mm"}, None
    probs = fitted.predict(sizes, "diameter_mm")
    y = labelled["target"].to_numpy()
    return {
        **classification_metrics(y, probs, names),
        "levels": level_metrics(y, probs, labelled, names),
    }, probs


def probability_columns(probs: np.ndarray, names, prefix: str = "prob_") -> dict[str, np.ndarray]:
    """``{prefix + class: column}`` of a [N, K] probability array, the layout of every predictions table."""
    return {f"{prefix}{name}": probs[:, i] for i, name in enumerate(names)}


def measured_masks(run_dir: Path, frame: pd.DataFrame, column: str) -> tuple[FittedMeasured, dict] | None:
    """The run's measured-nodule classifier and its segmenter's masks of `frame` (keyed by image path), or
    None where the run has no such classifier."""
    fitted = load_fitted(run_dir)
    if fitted is None:
        return None
    masks = predict_masks(
        run_dir / SEGMENTER_DIR, frame, column, tta=load_run_config(run_dir).measured_nodule.tta
    )
    return fitted, masks


def measured_probs(run_dir: Path, frame: pd.DataFrame, column: str, n_classes: int) -> np.ndarray | None:
    """The run's measured-nodule classifier on `frame` (its own segmenter outlines every slice first), or
    None where the run has none."""
    found = measured_masks(run_dir, frame, column)
    if found is None:
        return None
    fitted, masks = found
    return fitted.predict(measured_features(frame, column, masks), n_classes)


def measured_on(
    run_dir: Path,
    labelled: pd.DataFrame,
    columns: tuple[str, str],
    probs,
    name: str,
    names,
    recorded: dict,
    size_probs,
) -> dict:
    """The run's image-only rows scored on `labelled` (empty where the run has no measured-nodule
    classifier): the measured classifier and its mean with the network `name`'s `probs`. `columns`: the
    image and mask columns of the run's view; where this set has outlines, the measured row also holds its
    segmenter's Dice against them (``segmenter``). `recorded`: the run's ``image_only``."""
    image_col, mask_col = columns
    found = measured_masks(run_dir, labelled, image_col)
    if found is None:
        return {}
    fitted, masks = found
    measured = fitted.predict(measured_features(labelled, image_col, masks), len(names))
    y = labelled["target"].to_numpy()
    rows = {
        key: scored_here(y, p, labelled, names, recorded.get(key, {}), size_probs)
        for key, p in ((MEASURED_ROW, measured), (mean_row(name), (measured + probs) / 2))
    }
    dice = segmenter_dice_by_split({"set": labelled}, image_col, mask_col, masks)["set"]
    if dice["slices"]:
        rows[MEASURED_ROW]["segmenter"] = dice
    return rows


def external_segmenter_sentence(dice: dict, recorded: dict) -> str:
    """How the measured-nodule classifier's segmenter outlines this set, beside its run's test split."""
    own = recorded.get("image_only", {}).get(MEASURED_ROW, {}).get("segmenter", {})
    test = (own.get("dice_by_split") or {}).get("test") or {}
    beside = f" (on the run's test split: {test['dice_mean']:.3f})" if test.get("slices") else ""
    return (
        f"The measured-nodule classifier reads the masks of the run's segmenter: on this set's "
        f"{dice['slices']} outlined slices its Dice against their outlines is {dice['dice_mean']:.3f}{beside}. "
        "Masks much worse than on the run's own test split move the classifier's features away from those it "
        "was fitted on."
    )


def level_rows(slice_scores: dict, levels: dict) -> dict[str, dict]:
    """The report's rows of one model: slice level at 0.5, at the run's own threshold where it has one, then
    nodule and patient level."""
    rows = {"slice": slice_scores}
    at_threshold = slice_scores.get("at_run_threshold")
    if at_threshold:
        rows[f"slice, run's threshold {at_threshold['threshold']:.3f}"] = at_threshold
    return {**rows, **levels}


def run_recommendation(recorded: dict, rows: list[str]) -> str | None:
    """The model the run recommends (`lungnet.evaluation.recommended`), where it is among the models scored
    here; None otherwise."""
    model = recommended_name(recorded) if "selected_model" in recorded else None
    return model if model in rows else None


def labelled_set(run_dir: Path, config, source_spec: str):
    """``(source, labelled rows, class names, image column)`` of another set, labelled with the run's
    grouping (its classes must be the run's) and every image read once, before any prediction."""
    source = load_source(source_spec, config.data.phantom)
    labelled = assign_labels(source.manifest, config.data.grouping, origin=source.spec)
    names = class_names(config.data.grouping, source.manifest)
    run_names = tuple(run_class_names(run_dir) or names)
    if names != run_names:
        raise DataError(f"{source.spec}: classes {list(names)} differ from the run's {list(run_names)}")
    column = image_column(labelled, config.data.view)
    check_source_images(source, labelled, column)
    return source, labelled, names, column


def evaluate_classification_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    model, name = load_run_model(run_dir, model_name)
    source, labelled, names, column = labelled_set(run_dir, config, source_spec)
    labelled = with_neighbours(labelled, config.data, source.spec)
    ds = classification_pipeline(labelled, config.data, len(names), batch_size=64)
    with data_errors():
        probs = predict_proba(model, ds)
    y = labelled["target"].to_numpy()
    recorded = run_metrics(run_dir)
    size_only, size_probs = size_only_here(labelled, names, recorded)
    metrics = scored_here(y, probs, labelled, names, recorded.get("models", {}).get(name, {}), size_probs)
    levels = metrics.pop("levels")
    columns = (column, mask_column(labelled, config.data.view))
    image_only = measured_on(
        run_dir, labelled, columns, probs, name, names, recorded.get("image_only", {}), size_probs
    )
    recommended = run_recommendation(recorded, [name, *(image_only or {})])
    out = evaluation_dir(run_dir, source.spec, out)
    table = pd.DataFrame(
        {
            "image": labelled[column],
            "patient_id": labelled["patient_id"],
            "label": labelled["class_name"],
            "pred": [names[i] for i in probs.argmax(axis=1)],
        }
    )
    table = table.assign(**probability_columns(probs, names))
    write_csv(out / "predictions.csv", table)
    write_json(
        out / "metrics.json",
        {
            **metrics,
            "model": name,
            "run": str(run_dir),
            "data": source.description,
            "grouping": config.data.grouping,
            "split": "all samples",
            "levels": levels,  # nodule level (mean over slices) and patient level
            **({"image_only": image_only} if image_only else {}),
            **({"recommended": recommended} if recommended else {}),
            "baselines": {"size_only": size_only},
        },
    )
    report = HtmlReport(f"External evaluation of {name} ({run_dir.name}) on {source.spec}")
    report.paragraph(f"Data: {source.description}; every sample, grouping '{config.data.grouping}'.")
    if recommended:
        report.paragraph(
            f"The run recommends {recommended} ({CRITERION}); its rows below are the ones to read."
        )
    keys = ("f1", "f1_macro", "auc", "accuracy", "precision", "recall")
    calibration_rows = {
        label: scored["calibration"]
        for label, scored in (("network: " + name, metrics), *(image_only or {}).items())
        if scored.get("calibration")
    }
    rows = level_rows(metrics, levels)
    report.table(
        pd.DataFrame(
            {k: [m.get(k) for m in rows.values()] for k in (*keys, "n")},
            index=pd.Index(list(rows), name=name),
        )
    )
    for other, scores in (image_only or {}).items():
        rows = level_rows(scores, scores["levels"])
        report.table(
            pd.DataFrame(
                {k: [m.get(k) for m in rows.values()] for k in (*keys, "n")},
                index=pd.Index(list(rows), name=f"image-only: {other}"),
            )
        )
    segmenter = (image_only or {}).get(MEASURED_ROW, {}).get("segmenter")
    if segmenter:
        report.paragraph(external_segmenter_sentence(segmenter, recorded))
    if "skipped" in size_only:
        report.note(f"Size-only baseline not scored: {size_only['skipped']}.")
    else:
        rows = {"slice": size_only, **size_only["levels"]}
        report.table(
            pd.DataFrame(
                {k: [m.get(k) for m in rows.values()] for k in (*keys, "n")},
                index=pd.Index(list(rows), name="baseline: size_only (the run's own fit)"),
            )
        )
        against = against_size_only_table(against_size_only_rows({**metrics, "image_only": image_only}, name))
        if against is not None:
            report.table(against, AGAINST_CAPTION.format(samples=metrics["against_size_only"]["samples"]))
    report.paragraph(
        "Nodule level: probabilities averaged over a nodule's slices. Patient level: the highest nodule "
        "probability of malignancy (binary), or the mean over the patient's nodules."
    )
    if calibration_rows:
        report.table(
            pd.DataFrame(calibration_rows).T[
                [
                    "ece_before",
                    "ece_before_ci95",
                    "ece_after",
                    "ece_after_ci95",
                    "temperature",
                    "prior_correction",
                    "fitted_on",
                ]
            ],
            "Slice-level ECE on this set before and after the run's calibration (fitted on the run's own "
            "held-out predictions, as fitted_on says; never on this set)",
        )
    report.image(
        save_figure(
            evaluation_figures.confusion_matrix_figure(metrics["confusion_matrix"], names),
            out / "confusion_matrix.png",
        ),
        "Confusion matrix",
    )
    report.image(save_figure(evaluation_figures.roc_figure(y, probs, names), out / "roc.png"), "ROC")
    report.save(out / "report.html")
    return out
