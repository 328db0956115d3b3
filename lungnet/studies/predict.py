"""`lungnet predict`: a classification run's model on images that carry no labels.

The model is the run's recommended one (`lungnet.evaluation.recommended`: a network, the measured-nodule
classifier, or their mean) unless one is named. Each slice gets its probabilities before and after the
run's own calibration (fitted on the run's held-out predictions) and the class the run's F1 is reported at
(the argmax before calibration). Nodules (where the source has ``nodule_id``) get the mean of their
slices' calibrated probabilities, patients the highest nodule probability of malignancy (binary) or the
mean over their nodules, as `lungnet.evaluation.aggregation` scores them.

Writes ``predictions.csv``, ``nodules.csv`` (where there are nodule ids), ``patients.csv`` and
``prediction.json`` (the model, why it was chosen, its calibration and the data) to ``RUN/predictions/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.data.dataset import check_source_images, classification_pipeline, image_column, with_neighbours
from lungnet.data.pipelines import data_errors
from lungnet.data.registry import load_source
from lungnet.errors import ConfigError, LungnetError
from lungnet.evaluation import Calibration
from lungnet.evaluation.aggregation import nodule_level, patient_level
from lungnet.evaluation.measured_nodule import MEASURED_ROW, mean_row
from lungnet.evaluation.recommended import CRITERION, recommended_name
from lungnet.fileio import write_csv, write_json
from lungnet.inference import predict_proba
from lungnet.runs import load_run_config
from lungnet.runs.artifacts import evaluation_dir, load_run_model, run_metrics
from lungnet.studies.external import measured_probs, probability_columns

MEAN_PREFIX = mean_row("")  # a mean row's name is this prefix and its network's name


def predictable_rows(recorded: dict) -> dict[str, dict]:
    """``{row: record}`` of every model a run can predict with: its trained networks and its image-only
    rows (each with the calibration it recorded)."""
    return {**recorded.get("models", {}), **recorded.get("image_only", {})}


def chosen_row(recorded: dict, model_name: str | None) -> tuple[str, str]:
    """(row, why): `model_name`, or the run's recommended model (its selected network where the run has no
    image-only rows); a name the run does not have is a clear error."""
    rows = predictable_rows(recorded)
    if model_name is not None:
        if model_name not in rows:
            raise LungnetError(f"--model {model_name!r}: the run has no such model; it has {sorted(rows)}")
        return model_name, "named with --model"
    recommended = recommended_name(recorded)
    if recommended is not None:
        return recommended, CRITERION
    return recorded["selected_model"], recorded.get("selection", "the run's selected network")


def row_probs(run_dir: Path, row: str, frame: pd.DataFrame, column: str, config, n_classes: int):
    """Uncalibrated probabilities [N, K] of `row` on `frame`: a network's, the measured-nodule
    classifier's (its segmenter outlines every slice first), or the mean of both."""
    measured = None
    if row == MEASURED_ROW or row.startswith(MEAN_PREFIX):
        measured = measured_probs(run_dir, frame, column, n_classes)
        if measured is None:
            raise LungnetError(f"{run_dir}: the run records {row!r} but keeps no measured-nodule classifier")
        if row == MEASURED_ROW:
            return measured
    network, _ = load_run_model(run_dir, row.removeprefix(MEAN_PREFIX))
    ds = classification_pipeline(frame, config.data, n_classes, batch_size=64)
    with data_errors():
        probs = predict_proba(network, ds)
    return probs if measured is None else (measured + probs) / 2


def predict_classification_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """Predict with a classification run's model on every image of `source_spec`; returns the folder."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if config.task != "classification":
        raise ConfigError(
            f"{run_dir}: lungnet predict takes a classification run; this is a {config.task} run "
            "(lungnet evaluate scores it on a labelled set)"
        )
    recorded = run_metrics(run_dir)
    names = list(recorded["class_names"])
    row, why = chosen_row(recorded, model_name)
    source = load_source(source_spec, config.data.phantom)
    frame = source.manifest.assign(target=0)  # the pipeline carries a target; no label is read
    column = image_column(frame, config.data.view)
    check_source_images(source, frame, column)  # every image read once, before any prediction
    frame = with_neighbours(frame, config.data, source.spec)
    raw = row_probs(run_dir, row, frame, column, config, len(names))
    calibration = Calibration.from_dict(predictable_rows(recorded)[row].get("calibration"))

    out = evaluation_dir(run_dir, source.spec, out, folder="predictions")
    return write_predictions(out, run_dir, source, frame, column, raw, calibration, names, row, why)


def write_predictions(
    out: Path,
    run_dir: Path,
    source,
    frame,
    column: str,
    raw,
    calibration,
    names,
    row: str,
    why: str,
    extra=None,
    written=(),
) -> Path:
    """`out`'s predictions.csv (each slice, calibrated and not; `extra` columns beside), nodules.csv, patients.csv
    and prediction.json, from `row`'s uncalibrated probabilities `raw` on `frame` and its `calibration`.
    `written`: files the caller already wrote to `out`, listed in prediction.json with these."""
    probs = calibration.apply(raw) if calibration is not None else raw
    ids = [c for c in ("patient_id", "nodule_id") if c in frame.columns]
    slices = pd.DataFrame(
        {"image": frame[column].to_numpy(), **(extra or {}), **{c: frame[c].to_numpy() for c in ids}}
    )
    slices = slices.assign(
        **probability_columns(probs, names),
        **probability_columns(raw, names, "uncalibrated_prob_"),
        pred=[names[i] for i in raw.argmax(axis=1)],
    )
    write_csv(out / "predictions.csv", slices)
    dummy = np.zeros(len(frame), dtype=int)
    if "nodule_id" in frame.columns:
        _, nodule_probs, nodule_patients, _ = nodule_level(dummy, probs, frame)
        nodules = pd.DataFrame(
            {
                "nodule_id": np.unique(frame["nodule_id"].astype(str)),
                "patient_id": nodule_patients,
                "slices": frame.groupby(frame["nodule_id"].astype(str), sort=True).size().to_numpy(),
            }
        )
        write_csv(out / "nodules.csv", nodules.assign(**probability_columns(nodule_probs, names)))
    _, patient_probs, patients, _ = patient_level(dummy, probs, frame)
    write_csv(
        out / "patients.csv",
        pd.DataFrame({"patient_id": patients}).assign(**probability_columns(patient_probs, names)),
    )
    described = calibration.describe() if calibration is not None else "none"
    files = ["predictions.csv", *(["nodules.csv"] if "nodule_id" in frame.columns else []), "patients.csv"]
    files += list(written)
    write_json(
        out / "prediction.json",
        {
            "run": str(run_dir),
            "model": row,
            "summary": f"{row} ({why}), calibration {described}",
            "files": [*files, "prediction.json"],
            "chosen_by": why,
            "calibration": calibration.as_dict() if calibration is not None else None,
            "calibration_described": described,
            "data": source.description,
            "class_names": names,
            "slices": int(len(frame)),
            "nodules": int(frame["nodule_id"].nunique()) if "nodule_id" in frame.columns else None,
            "patients": int(frame["patient_id"].nunique()),
        },
    )
    return out
