"""Image-only malignancy from a measured nodule: segment every slice, describe the region, classify.

Why: the radiologists' ratings follow the nodule's size more than anything else (the diameter alone is the
baseline to beat), and a CNN trained on a few hundred patients measures size less reliably than a
segmenter outlines the nodule. So a segmenter, trained on this run's **training patients only** with the
segmentation study's recipe (its own run folder, ``<run>/segmenter/``), predicts each slice's mask; the
region nearest the crop's centre is described with `lungnet.data.radiomics` (first-order intensity, shape
in millimetres from the pixel spacing, masked GLCM) plus the largest area and major axis over the nodule's
slices; a class-balanced logistic regression on the standardised features is fitted on the training split.
Its calibration is fitted on held-out predictions of every patient outside the test split: cross-fitted on
the training patients (patient-grouped folds) and the validation split's, not on the validation split
alone, whose 70-odd patients proved easier than the others. At inference it sees each slice, its pixel
spacing and which slices belong to one nodule, never a reader's mask or measurement: it is image-only. The
radiologists' masks only train the segmenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungnet.data.io import read_image, read_mask
from lungnet.data.manifest import outlined
from lungnet.data.radiomics import radiomics_features
from lungnet.data.segmentation import view_columns
from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.radiomics_baseline import native_spacing
from lungnet.evaluation.segmentation import per_image_metrics

SEGMENTER_DIR = "segmenter"
NODULE_FEATURES = ("shape_area_mm2", "shape_major_axis_mm")
FITTED_FILE = "measured_nodule.joblib"
CALIBRATION_DATA = ("cross-fitted", "validation")
CALIBRATION_FOLDS = 5


@dataclass(frozen=True)
class SegmenterRecipe:
    """A segmenter trained on a run's training patients (`lungnet.studies.measured_segmenter`): which
    segmentation experiment, profile and model, and how it predicts."""

    experiment: str = "attention_unet"  # the segmentation experiment whose recipe trains the segmenter
    profile: str = "cpu-real-augmented"
    model: str = "unet"  # which of that experiment's models
    overrides: dict = field(default_factory=dict)  # nested keys applied to it, as ``--set`` would
    tta: bool = False  # mean over flips and quarter turns when predicting the masks (5 passes)


@dataclass(frozen=True)
class MeasuredNoduleConfig(SegmenterRecipe):
    """``measured_nodule`` of a classification experiment (off unless ``enabled``)."""

    enabled: bool = False
    C: float = 1.0  # inverse L2 strength of the logistic regression
    # what the temperature (and prior correction) is fitted on: cross-fitted training + validation
    # predictions, or the validation split's alone (before 2026-12-05)
    calibration: str = "cross-fitted"

    def __post_init__(self):
        if not self.C > 0:
            raise ConfigError(f"measured_nodule.C: {self.C!r} must be > 0")
        if self.calibration not in CALIBRATION_DATA:
            raise ConfigError(
                f"measured_nodule.calibration: {self.calibration!r} is not one of {list(CALIBRATION_DATA)}"
            )


def segmenter_manifest(
    source_manifest: pd.DataFrame, split: pd.DataFrame, view: str = "crop"
) -> pd.DataFrame:
    """The source's rows that have a mask of the classified view (the phantom's crops have ``crop_mask``
    beside the whole slice's ``mask``), with ``split`` taken from the classification split per patient.

    Patients the grouping left out (only indeterminate nodules, say) are in no validation or test split, so
    they train the segmenter; no validation or test patient's mask is ever trained on."""
    _, mask_col = view_columns(source_manifest, view)
    if mask_col not in source_manifest.columns:
        raise DataError(
            f"measured_nodule: the source has no {mask_col!r} column; the segmenter needs nodule masks"
        )
    rows = outlined(source_manifest, mask_col)
    if rows.empty:
        raise DataError(f"measured_nodule: no row of the source has a {mask_col!r} to train the segmenter on")
    by_patient = split.groupby(split["patient_id"].astype(str))["split"].first()
    out = rows.drop(columns=[c for c in ("source", "source_row", "split") if c in rows.columns])
    out = out.assign(split=out["patient_id"].astype(str).map(by_patient).fillna("train").to_numpy())
    return out.reset_index(drop=True)


def central_region(mask: np.ndarray) -> np.ndarray:
    """The connected region nearest the crop's centre (crops are centred on their nodule)."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    centre = (np.asarray(mask.shape) - 1) / 2
    distances = []
    for label in range(1, count):
        ys, xs = np.nonzero(labels == label)
        distances.append(np.min((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2))
    return labels == 1 + int(np.argmin(distances))


MEASURED_ROW = "measured_nodule"  # the image-only rows' names in metrics.json, evaluate and predict


def mean_row(network: str) -> str:
    """The name of the mean of the measured classifier and the network `network`."""
    return f"mean of {MEASURED_ROW} and {network}"


def measured_features(frame: pd.DataFrame, image_col: str, masks: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row of features per row of `frame`: radiomics inside its predicted region (NaN where the
    segmenter found nothing, with ``found`` 0), and the nodule's largest area and axis over its slices."""
    spacing = native_spacing(frame)
    rows = []
    for i, path in enumerate(frame[image_col].astype(str)):
        region = central_region(masks[path])
        if region.any():
            rows.append({"found": 1.0, **radiomics_features(read_image(path), region, spacing[i])})
        else:
            rows.append({"found": 0.0})
    table = pd.DataFrame(rows, index=frame.index)
    for name in NODULE_FEATURES:
        if name not in table.columns:
            table[name] = np.nan
    if "nodule_id" in frame.columns:
        nodules = frame["nodule_id"].astype(str)
        for name in NODULE_FEATURES:
            table[f"nodule_max_{name}"] = table[name].groupby(nodules).transform("max")
    return table


def segmenter_dice_by_split(
    frames: dict[str, pd.DataFrame], image_col: str, mask_col: str, masks: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Dice of the segmenter's masks `masks` (keyed by image path) against the readers' outlines in
    `mask_col`, on each image's own pixels, per split: ``{split: {"slices", "dice_mean"}}`` over the slices
    that have an outline. The segmenter trained on the training patients, so a training Dice well above the
    test's would mean the classifier was fitted on features of sharper masks than it meets."""
    out = {}
    for split, frame in frames.items():
        rows = outlined(frame, mask_col)
        pairs = rows[[image_col, mask_col]].astype(str).to_numpy() if len(rows) else ()
        dice = []
        for image, mask in pairs:
            predicted = masks[image]
            truth = read_mask(mask, expected_shape=predicted.shape) > 0
            dice.append(float(per_image_metrics(truth[None], predicted[None])["dice"].iloc[0]))
        out[split] = {"slices": len(dice), "dice_mean": float(np.mean(dice)) if dice else None}
    return out


def measured_classifier(C: float):
    # undefined features (no region found, the skewness of a flat one) take the training median
    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=C, max_iter=5000, class_weight="balanced"),
    )


@dataclass
class FittedMeasured:
    """The fitted classifier and the feature columns it was fitted on, saved in the run folder."""

    model: object
    columns: list[str]

    def predict(self, features: pd.DataFrame, n_classes: int) -> np.ndarray:
        probs = np.zeros((len(features), n_classes))
        values = features.reindex(columns=self.columns).to_numpy(float)
        probs[:, self.model.classes_] = self.model.predict_proba(values)
        return probs


def fit_measured(train: pd.DataFrame, y_train, C: float) -> FittedMeasured:
    columns = list(train.columns)
    return FittedMeasured(
        measured_classifier(C).fit(train[columns].to_numpy(float), np.asarray(y_train)), columns
    )


def save_fitted(fitted: FittedMeasured, run_dir: Path) -> Path:
    import joblib

    path = run_dir / FITTED_FILE
    partial = path.with_suffix(".partial")
    joblib.dump({"model": fitted.model, "columns": fitted.columns}, partial)
    partial.replace(path)  # never a half-written classifier
    return path


def load_fitted(run_dir: Path) -> FittedMeasured | None:
    import joblib

    path = Path(run_dir) / FITTED_FILE
    if not path.is_file():
        return None
    saved = joblib.load(path)
    return FittedMeasured(saved["model"], list(saved["columns"]))


def cross_fitted_probs(
    features: pd.DataFrame, y, patients, C: float, n_classes: int, folds: int = CALIBRATION_FOLDS
) -> np.ndarray | None:
    """Each row's probabilities from a classifier fitted without that row's patient (patient-grouped
    `folds`-fold), or None where there are fewer patients than folds or a fold's rest lacks a class."""
    y, patients = np.asarray(y), np.asarray(patients).astype(str)
    if len(np.unique(patients)) < folds:
        return None
    out = np.zeros((len(y), n_classes))
    for fit_rows, held_rows in GroupKFold(folds).split(features, y, patients):
        if len(np.unique(y[fit_rows])) < 2:
            return None
        fitted = fit_measured(features.iloc[fit_rows], y[fit_rows], C)
        out[held_rows] = fitted.predict(features.iloc[held_rows], n_classes)
    return out
