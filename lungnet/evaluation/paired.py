"""Is one model really better than another on the same test images? A paired bootstrap over patients.

The per-image scores of both models (a run's ``predictions.csv``: one row per image and model) are paired by
image; the mean difference ``a - b`` is the statistic. Patients, not images, are resampled with replacement
(slices of one patient are not independent), and the 95 % interval is the 2.5th to 97.5th percentile of the
resampled mean differences, each the image-weighted mean over the drawn patients' images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.errors import DataError

PREDICTIONS = "predictions.csv"


def paired_bootstrap(
    table: pd.DataFrame,
    model_a: str,
    model_b: str,
    metric: str = "dice",
    samples: int = 2000,
    seed: int = 0,
    image: str = "image",
    group: str = "patient_id",
) -> dict:
    """The mean paired difference of `metric` (a - b) with its patient-bootstrap 95 % interval."""
    for column in (image, group, "model", metric):
        if column not in table.columns:
            raise DataError(f"paired comparison: no column {column!r}; columns: {list(table.columns)}")
    models = sorted(table["model"].astype(str).unique())
    for name in (model_a, model_b):
        if name not in models:
            raise DataError(f"paired comparison: no model {name!r}; the predictions hold {models}")
    if model_a == model_b:
        raise DataError(f"paired comparison: {model_a!r} against itself")
    if samples < 100:
        raise DataError(f"paired comparison: samples {samples} must be >= 100")
    wide = table.pivot_table(index=[image, group], columns="model", values=metric).reset_index()
    wide = wide.dropna(subset=[model_a, model_b])  # images one model has no score for cannot be paired
    if wide.empty:
        raise DataError(f"paired comparison: {model_a!r} and {model_b!r} share no scored image")
    per_patient = (
        wide.assign(difference=wide[model_a] - wide[model_b])
        .groupby(group)["difference"]
        .agg(["sum", "count"])
    )
    sums, counts = per_patient["sum"].to_numpy(), per_patient["count"].to_numpy()
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_patient), size=(samples, len(per_patient)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "model_a": model_a,
        "model_b": model_b,
        "metric": metric,
        "mean_a": float(wide[model_a].mean()),
        "mean_b": float(wide[model_b].mean()),
        "mean_difference": float(sums.sum() / counts.sum()),
        "ci95": [float(low), float(high)],
        "share_of_resamples_a_better": float((means > 0).mean()),
        "n_images": int(len(wide)),
        "n_patients": int(len(per_patient)),
        "samples": int(samples),
        "seed": int(seed),
    }


READERS_SLICE = "readers_slice"  # predictions.csv: the slices the readers' agreement is measured on


def compare_run_models(
    run_dir,
    model_a: str,
    model_b: str,
    metric: str = "dice",
    samples: int = 2000,
    readers_slices_only: bool = False,
) -> dict:
    """`paired_bootstrap` on a finished run's test predictions; with `readers_slices_only`, on the slices the
    radiologists' agreement is measured on (a segmentation run on data with ``is_central`` and ``n_readers``)."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise DataError(f"{path}: not found; a finished segmentation or Inf-Net run writes it")
    table = pd.read_csv(path)
    if readers_slices_only:
        if READERS_SLICE not in table.columns:
            raise DataError(
                f"{path}: no {READERS_SLICE!r} column: its data has no is_central and n_readers, or the run "
                "was made before lungnet recorded them"
            )
        table = table[table[READERS_SLICE].astype(bool)]
    result = paired_bootstrap(table, model_a, model_b, metric=metric, samples=samples)
    return {**result, "images": "readers' slices" if readers_slices_only else "all test images"}


def describe(result: dict) -> str:
    low, high = result["ci95"]
    verdict = "a difference" if low > 0 or high < 0 else "no clear difference"
    images = f" on {result['images']}" if "images" in result else ""
    return (
        f"{result['model_a']} - {result['model_b']}{images}: mean {result['metric']} difference "
        f"{result['mean_difference']:+.4f} (95 % CI {low:+.4f} .. {high:+.4f}, patient bootstrap, "
        f"{result['n_patients']} patients, {result['n_images']} images): {verdict}"
    )


CLASSIFICATION_METRICS = ("auc", "f1_macro")


def describe_levels(result: dict) -> list[str]:
    """One line per level of a `paired_bootstrap_classification` result: a, b, a - b and its interval."""
    lines = []
    for level in ("slice", "nodule", "patient"):
        if level not in result:
            continue
        row = result[level]
        cells = [
            f"{m} {row[m]['a']:.3f} vs {row[m]['b']:.3f}, {row[m]['difference']:+.3f} "
            + ("(no interval)" if row[m]["ci95"] is None else "({:+.3f} .. {:+.3f})".format(*row[m]["ci95"]))
            for m in CLASSIFICATION_METRICS
        ]
        lines.append(f"{level} ({row['n_patients']} patients, {row['n']} rows): {'; '.join(cells)}")
    return lines


def _patient_rows(patients: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(patients == p) for p in np.unique(patients)]


def patient_bootstrap(statistic, patients, samples: int = 1000, seed: int = 0) -> list[float]:
    """95 % percentile interval of ``statistic(rows)`` over resamples that draw patients with replacement;
    ``rows`` indexes the samples of the drawn patients (a patient drawn twice counts twice)."""
    patients = np.asarray(patients).astype(str)
    if patients.ndim != 1 or len(patients) == 0:
        raise DataError(
            f"patient bootstrap: patients must be a non-empty 1-D array, got shape {patients.shape}"
        )
    if samples < 100:
        raise DataError(f"patient bootstrap: samples {samples} must be >= 100")
    groups = _patient_rows(patients)
    rng = np.random.default_rng(seed)
    values = [
        statistic(np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]))
        for _ in range(samples)
    ]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def _paired_scores(y, a, b, class_names) -> dict:
    from lungnet.evaluation.metrics import classification_metrics

    ma, mb = classification_metrics(y, a, class_names), classification_metrics(y, b, class_names)
    return {m: (ma[m], mb[m]) for m in CLASSIFICATION_METRICS}


def _bootstrap_level(y, a, b, patients, class_names, samples: int, rng) -> dict:
    groups = _patient_rows(patients)
    draws = {m: [] for m in CLASSIFICATION_METRICS}
    for _ in range(samples):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if len(np.unique(y[rows])) < len(np.unique(y)):
            continue  # a class was not drawn: AUC is undefined
        for m, (sa, sb) in _paired_scores(y[rows], a[rows], b[rows], class_names).items():
            if sa is not None and sb is not None:
                draws[m].append(sa - sb)
    result = {"n": int(len(y)), "n_patients": len(groups)}
    for m, (sa, sb) in _paired_scores(y, a, b, class_names).items():
        diffs = np.asarray(draws[m])
        interval = [float(v) for v in np.percentile(diffs, [2.5, 97.5])] if len(diffs) else None
        result[m] = {
            "a": sa,
            "b": sb,
            "difference": None if sa is None or sb is None else float(sa - sb),
            "ci95": interval,  # None where no resample had the metric defined
            "share_of_resamples_a_better": float((diffs > 0).mean()) if len(diffs) else None,
            "valid_resamples": int(len(diffs)),
        }
    return result


def paired_bootstrap_classification(
    y_true,
    probs_a,
    probs_b,
    frame: pd.DataFrame,
    class_names,
    samples: int = 1000,
    seed: int = 0,
) -> dict:
    """Is classifier a better than b on the same test split? AUC and macro F1 (a - b) with patient-bootstrap
    95 % intervals, at slice level, at nodule level (probabilities averaged over a nodule's slices) and at
    patient level (`lungnet.evaluation.aggregation.patient_level`).

    AUC and F1 are set-level metrics, so each resample recomputes them on the drawn patients' samples (the
    same draw for a and b); draws that lack a class, where AUC is undefined, are left out and counted.
    """
    from lungnet.evaluation.aggregation import nodule_level, patient_level

    y = np.asarray(y_true)
    pa, pb = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    if not len(y) == len(pa) == len(pb) == len(frame):
        raise DataError(
            f"paired comparison: {len(y)} labels, {len(pa)} and {len(pb)} probabilities, {len(frame)} rows"
        )
    if samples < 100:
        raise DataError(f"paired comparison: samples {samples} must be >= 100")
    levels = {"slice": (y, pa, pb, frame["patient_id"].astype(str).to_numpy())}
    if "nodule_id" in frame.columns:
        yn, na, patients, _ = nodule_level(y, pa, frame)
        levels["nodule"] = (yn, na, nodule_level(y, pb, frame)[1], patients)
    yp, pa_patient, patients, _ = patient_level(y, pa, frame)
    levels["patient"] = (yp, pa_patient, patient_level(y, pb, frame)[1], patients)
    rng = np.random.default_rng(seed)
    out = {"samples": int(samples), "seed": int(seed), "resampled": "patients, with replacement"}
    for level, (yl, a, b, patients) in levels.items():
        out[level] = _bootstrap_level(yl, a, b, patients, class_names, samples, rng)
    return out
