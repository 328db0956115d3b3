"""Evaluation on NumPy arrays: metrics, calibration, baselines and figures.

``y_true`` int [N], ``probs`` float [N, K] (binary: column 1 = malignant), ``class_names`` K names. Metric
definitions are in `lungnet.evaluation.metrics`. Figures live in `lungnet.evaluation.figures` (imported on
first use, so the metrics need no matplotlib).
"""

from lungnet.evaluation.baselines import (
    SizeOnly,
    cross_fitted_size_only,
    fit_size_only,
    majority_baseline,
    size_only_baseline,
)
from lungnet.evaluation.calibration import (
    Calibration,
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)
from lungnet.evaluation.metrics import (
    best_f1_threshold,
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    mean_probability,
    metric_definitions,
    mode_of_predictions,
    predictions_at_threshold,
    predictions_from_probs,
    summarise,
)

__all__ = [
    "Calibration",
    "calibration_summary",
    "fit_calibration",
    "best_f1_threshold",
    "predictions_at_threshold",
    "apply_temperature",
    "bootstrap_ci",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "majority_baseline",
    "mean_probability",
    "metric_definitions",
    "mode_of_predictions",
    "negative_log_likelihood",
    "predictions_from_probs",
    "reliability_curve",
    "size_only_baseline",
    "SizeOnly",
    "fit_size_only",
    "cross_fitted_size_only",
    "summarise",
]


def __getattr__(name):
    if name == "figures":
        import importlib

        return importlib.import_module("lungnet.evaluation.figures")
    raise AttributeError(f"module 'lungnet.evaluation' has no attribute {name!r}")
