"""The Inf-Net study's hand-crafted baseline: malignancy from radiomics of the nodule region with an SVM,
supervised on the labelled patients and semi-supervised (scikit-learn self-training) with the unlabelled
patients' slices as unlabelled samples.

Features: `lungnet.data.radiomics` (first-order intensity statistics, shape, masked GLCM; scikit-image,
since pyradiomics has no wheel for our Python) of each slice inside a mask, at the image's native pixels.
Training slices use the radiologists' consensus masks. Test slices are scored twice: inside the consensus
mask (the usual radiomics set-up, where a reader has outlined the nodule) and inside a segmenter's
predicted mask (fully automatic). The labels are the experiment's grouping of the malignancy ratings; the
size-only baseline (diameter, logistic regression on the same labelled rows) sits beside them.

Self-training: `sklearn.semi_supervised.SelfTrainingClassifier` around the same scaled SVM (Platt
probabilities); in each iteration, unlabelled slices whose predicted class probability reaches
``self_training_threshold`` join the training set with that class, until none does or ``max_iter``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from lungnet.data.io import read_image, read_mask
from lungnet.data.labels import BINARY_CLASSES, assign_labels
from lungnet.data.radiomics import radiomics_table
from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.aggregation import level_metrics
from lungnet.evaluation.baselines import size_only_baseline
from lungnet.evaluation.metrics import classification_metrics


@dataclass(frozen=True)
class RadiomicsBaselineConfig:
    enabled: bool = True
    grouping: Literal["paper", "exclude-indeterminate"] = "paper"
    kernel: Literal["rbf", "linear"] = "rbf"
    C: float = 1.0
    self_training_threshold: float = 0.8
    max_iter: int = 10
    seed: int = 0

    def __post_init__(self):
        if not self.C > 0:
            raise ConfigError(f"baselines.radiomics.C: {self.C!r} must be > 0")
        if not 0.5 <= self.self_training_threshold < 1:
            raise ConfigError(
                f"baselines.radiomics.self_training_threshold: {self.self_training_threshold!r} must be in "
                "[0.5, 1) (a class probability)"
            )
        if self.max_iter < 1:
            raise ConfigError(f"baselines.radiomics.max_iter: {self.max_iter!r} must be >= 1")


def _svm(config: RadiomicsBaselineConfig):
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(
        # a feature undefined for a region (the skewness of a constant one, a one-pixel shape) is NaN: it
        # takes the training slices' median
        SimpleImputer(strategy="median"),
        StandardScaler(),
        SVC(
            C=config.C,
            kernel=config.kernel,
            probability=True,
            class_weight="balanced",
            random_state=config.seed,
        ),
    )


def features(frame: pd.DataFrame, masks=None, progress: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Radiomics of each row's ``image_ref`` inside its ``mask_ref`` (or inside ``masks[i]``, binary arrays
    at the image's native size), indexed by row position; rows that cannot be described are named."""
    spacing = native_spacing(frame)

    def samples():
        for i, ref in enumerate(frame["image_ref"].astype(str)):
            image = read_image(ref)
            mask = read_mask(str(frame["mask_ref"].iloc[i])) if masks is None else masks[i]
            yield i, image, mask, spacing[i]

    return radiomics_table(samples(), progress=progress)


def native_spacing(frame: pd.DataFrame) -> np.ndarray:
    """Each row's pixel spacing (mm) at its native size: a crop's own, else the slice's, else NaN."""
    for column in ("crop_pixel_spacing_mm", "pixel_spacing_mm"):
        if column in frame.columns:
            return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    return np.full(len(frame), np.nan)


def radiomics_baselines(
    train_labelled: pd.DataFrame,
    train_unlabelled: pd.DataFrame,
    test: pd.DataFrame,
    config: RadiomicsBaselineConfig,
    predicted_masks: list[np.ndarray] | None = None,
    progress: bool = False,
) -> dict:
    """Test metrics (slice level, with ``levels``: nodule and patient) of the supervised SVM, the
    self-trained SVM (when unlabelled slices exist) and size-only, on the grouping's labels."""
    labelled = _labelled(train_labelled, config.grouping, "labelled training slices")
    test_rows = _labelled(test, config.grouping, "test slices")
    x_train, problems = features(labelled, progress=progress)
    if x_train.empty:
        raise DataError(f"radiomics baseline: no labelled training slice could be described ({problems[:3]})")
    y_train = labelled["target"].to_numpy()[x_train.index]
    if len(np.unique(y_train)) < 2:
        raise DataError("radiomics baseline: the labelled training slices hold one class only")
    columns = list(x_train.columns)
    models = {"radiomics SVM (labelled only)": _svm(config).fit(x_train.to_numpy(), y_train)}

    x_unlabelled = pd.DataFrame(columns=columns)
    if "nodule_free" in train_unlabelled.columns:  # a phantom's negatives: no nodule region to describe
        train_unlabelled = train_unlabelled[~train_unlabelled["nodule_free"].astype(bool)]
    if len(train_unlabelled):  # masks of unlabelled patients are hidden: their features use them only as the
        # region, as a reader's outline would be at inference; their labels are never read
        x_unlabelled, more = features(train_unlabelled.reset_index(drop=True), progress=progress)
        problems += more
    if len(x_unlabelled):
        from sklearn.semi_supervised import SelfTrainingClassifier

        x_all = np.concatenate([x_train.to_numpy(), x_unlabelled[columns].to_numpy()])
        y_all = np.concatenate([y_train, np.full(len(x_unlabelled), -1)])
        models["radiomics SVM, self-training"] = SelfTrainingClassifier(
            _svm(config), threshold=config.self_training_threshold, max_iter=config.max_iter
        ).fit(x_all, y_all)

    variants = {"consensus mask": features(test_rows, progress=progress)}
    if predicted_masks is not None:
        kept = test.index.isin(test_rows.attrs["kept_index"])
        masks = [m for m, keep in zip(predicted_masks, kept, strict=True) if keep]
        variants["predicted mask"] = features(test_rows, masks=masks, progress=progress)
    out: dict = {}
    for region, (x_test, more) in variants.items():
        problems += more
        if x_test.empty:  # e.g. every predicted mask empty: nothing to describe in that region
            continue
        rows = test_rows.iloc[x_test.index]
        y_test = rows["target"].to_numpy()
        for name, model in models.items():
            probs = model.predict_proba(x_test[columns].to_numpy())
            out[f"{name}, {region}"] = _scored(y_test, probs, rows)
    if "diameter_mm" in labelled.columns:
        probs = size_only_baseline(
            labelled["diameter_mm"], labelled["target"], test_rows["diameter_mm"], BINARY_CLASSES
        )
        out["size-only (diameter)"] = _scored(test_rows["target"].to_numpy(), probs, test_rows)
    return {
        "grouping": config.grouping,
        "models": out,
        "n_train_labelled": int(len(x_train)),
        "n_train_unlabelled": int(len(x_unlabelled)),
        "n_test": int(len(test_rows)),
        "problems": problems[:20],
        "n_problems": len(problems),
        "features": columns,
    }


def _labelled(frame: pd.DataFrame, grouping: str, what: str) -> pd.DataFrame:
    try:
        rows = assign_labels(frame.assign(_row=np.arange(len(frame))), grouping, what)
    except DataError as exc:
        raise DataError(f"radiomics baseline: {exc}") from None
    rows.attrs["kept_index"] = rows.pop("_row").to_numpy()
    return rows


def _scored(y: np.ndarray, probs: np.ndarray, rows: pd.DataFrame) -> dict:
    return {
        **classification_metrics(y, probs, BINARY_CLASSES),
        "levels": level_metrics(y, probs, rows.reset_index(drop=True), BINARY_CLASSES),
    }
