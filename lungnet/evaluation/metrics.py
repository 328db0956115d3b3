"""Classification metrics on NumPy arrays: F1, precision, recall, accuracy, AUC, confusion matrix.

Inputs everywhere in `lungnet.evaluation`:

- ``y_true``: int array [N] of class indices 0..K-1;
- ``probs``: float array [N, K] of class probabilities (rows sum to 1). For binary tasks K = 2 and column 1 is
  the positive (malignant) class; a 1-D array or an [N, 1] array of malignant probabilities is also accepted;
- ``class_names``: a sequence of K names, in column order.

Definitions (the same text is available as `metric_definitions(k)` for reports)
-------------------------------------------------------------------------------
Let C be the K x K confusion matrix, ``C[i, j]`` = number of samples of true class i predicted as class j
(prediction = argmax of ``probs`` unless labels are passed as ``y_pred``). For class k:
TP = C[k, k], FP = column sum - TP, FN = row sum - TP,
precision_k = TP / (TP + FP), recall_k = TP / (TP + FN), F1_k = 2 TP / (2 TP + FP + FN)
(the harmonic mean of precision_k and recall_k). A 0/0 precision or recall counts as 0 (scikit-learn's
``zero_division=0``). A class that is neither in ``y_true`` nor predicted has undefined (``None``) scores and
is left out of macro averages, as in scikit-learn's default ``average="macro"``.

Binary (K = 2):
  ``f1``, ``precision``, ``recall`` (= ``sensitivity``) are those of the positive class (index 1, malignant);
  ``specificity`` = TN / (TN + FP) = recall of class 0; ``f1_macro`` is the unweighted mean of both classes' F1;
  ``auc`` is the ROC AUC of the positive-class probability ``probs[:, 1]``.
K > 2:
  ``f1``, ``precision``, ``recall`` are macro averages (unweighted means over classes), so ``f1 == f1_macro``;
  ``auc`` is the one-vs-rest macro AUC: the mean over the classes present in ``y_true`` of the ROC AUC of
  ``probs[:, k]`` for "class k vs the rest".
Both: ``accuracy`` = trace(C) / N; ``nll`` = mean of -log p(true class) (probabilities clipped at 1e-15).

A value that is undefined on the given data (e.g. AUC when ``y_true`` holds a single class) is ``None``
(``null`` in JSON) and ``metrics["notes"][name]`` says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from lungnet.errors import DataError

_ROW_SUM_TOL = 1e-2  # float16 softmax outputs (mixed precision) are off by ~1e-3; logits are off by far more


# ----------------------------------------------------------------------------------------------------- inputs
def as_probs(probs, n_classes: int | None = None) -> np.ndarray:
    """Validate probabilities and return them as float64 [N, K].

    A 1-D array (or [N, 1]) of positive-class probabilities becomes ``[1 - p, p]`` (binary). Raises
    `DataError` for non-finite values, values outside [0, 1], rows that do not sum to 1 (e.g. logits passed by
    mistake) or a column count that differs from ``n_classes``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        if n_classes not in (None, 2):
            raise DataError(
                f"probs is 1-D (binary malignant probabilities) but there are {n_classes} classes"
            )
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise DataError(f"probs must be an [N, K] array of class probabilities, got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise DataError(f"probs has {p.shape[1]} columns but there are {n_classes} class names")
    if p.shape[0] == 0:
        raise DataError("probs is empty (no samples to evaluate)")
    if not np.all(np.isfinite(p)):
        row = int(np.argwhere(~np.isfinite(p))[0, 0])
        raise DataError(f"probs row {row} is not finite: {p[row].tolist()}")
    bad = np.flatnonzero((p < -1e-6).any(axis=1) | (p > 1 + 1e-6).any(axis=1))
    if bad.size:
        raise DataError(
            f"probs row {bad[0]} has values outside [0, 1]: {p[bad[0]].tolist()} (pass probabilities, not logits)"
        )
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _ROW_SUM_TOL)
    if bad.size:
        raise DataError(
            f"probs row {bad[0]} sums to {sums[bad[0]]:.4g}, not 1 ({bad.size} such rows; pass softmax "
            "probabilities, not logits or independent sigmoids)"
        )
    return np.clip(p, 0.0, 1.0)


def as_labels(y, n_classes: int, name: str = "y_true") -> np.ndarray:
    """Validate class indices (int, or floats holding integers) in 0..n_classes-1; return int64 [N]."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class indices, got shape {a.shape}")
    if a.size == 0:
        raise DataError(f"{name} is empty (no samples to evaluate)")
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iuf":
        raise DataError(f"{name} must hold integer class indices, got dtype {a.dtype} (first value {a[0]!r})")
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if bad.size:
            raise DataError(f"{name}[{bad[0]}] = {a[bad[0]]} is not a class index")
    a = a.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= n_classes))
    if bad.size:
        raise DataError(f"{name}[{bad[0]}] = {a[bad[0]]} is outside 0..{n_classes - 1} ({n_classes} classes)")
    return a


def _check(y_true, probs, class_names) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    names = tuple(str(c) for c in class_names)
    if len(names) < 2:
        raise DataError(f"class_names needs at least 2 names, got {list(names)}")
    p = as_probs(probs, len(names))
    y = as_labels(y_true, len(names))
    if len(y) != len(p):
        raise DataError(f"y_true has {len(y)} samples but probs has {len(p)} rows")
    return y, p, names


# ------------------------------------------------------------------------------------------------ predictions
def predictions_from_probs(probs) -> np.ndarray:
    """Predicted class indices: argmax over classes (binary: malignant iff p(malignant) > 0.5; a tie -> benign)."""
    return np.argmax(as_probs(probs), axis=1).astype(np.int64)


def _stack(list_of_probs: Sequence) -> np.ndarray:
    if len(list_of_probs) == 0:
        raise DataError("need at least one probability array (one per test-time transform)")
    arrays = [as_probs(p) for p in list_of_probs]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"test-time transforms' probability arrays differ in shape: {sorted(shapes)}")
    return np.stack(arrays)  # [M, N, K]


def mean_probability(list_of_probs: Sequence) -> np.ndarray:
    """Mean of M [N, K] probability arrays (e.g. the test-time transforms' outputs): [N, K]."""
    return _stack(list_of_probs).mean(axis=0)


def mode_of_predictions(list_of_probs: Sequence) -> np.ndarray:
    """Test-time augmentation vote: each sample's most frequent predicted label over the M transforms.

    Each transform votes for its argmax class; the label with most votes wins. A tie between labels is
    broken by the higher mean probability over the transforms (then by the lower class index).
    Returns int64 [N].
    """
    stack = _stack(list_of_probs)
    n_classes = stack.shape[2]
    votes = np.eye(n_classes, dtype=np.int64)[stack.argmax(axis=2)].sum(axis=0)  # [N, K]
    tied = votes == votes.max(axis=1, keepdims=True)
    score = np.where(tied, stack.mean(axis=0), -np.inf)
    return np.argmax(score, axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------------- metrics
def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as class j (int64 [K, K])."""
    y = as_labels(y_true, n_classes)
    yp = as_labels(y_pred, n_classes, "y_pred")
    if len(y) != len(yp):
        raise DataError(f"y_true has {len(y)} samples but y_pred has {len(yp)}")
    return np.bincount(y * n_classes + yp, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _per_class_scores(cm: np.ndarray) -> list[dict]:
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    out = []
    for k in range(cm.shape[0]):
        if support[k] == 0 and predicted[k] == 0:
            out.append({"precision": None, "recall": None, "f1": None, "support": 0})
            continue
        fp, fn = predicted[k] - tp[k], support[k] - tp[k]
        out.append(
            {
                "precision": _ratio(tp[k], predicted[k]),
                "recall": _ratio(tp[k], support[k]),
                "f1": _ratio(2 * tp[k], 2 * tp[k] + fp + fn),
                "support": int(support[k]),
            }
        )
    return out


def _auc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic P(score_pos > score_neg) + P(tie) / 2 (tests check sklearn's)."""
    n_pos = int(is_pos.sum())
    n_neg = len(is_pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)  # average ranks for ties
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(y_true, probs, class_names: Sequence[str], y_pred=None) -> dict:
    """Metrics of one model on one split; see the module docstring for every definition.

    Args:
        y_true: int [N] true class indices.
        probs: float [N, K] class probabilities (binary: column 1 = malignant; 1-D p(malignant) accepted).
        class_names: the K class names, in column order.
        y_pred: optional int [N] predicted labels used for the thresholded metrics instead of the argmax of
            ``probs`` (e.g. `mode_of_predictions` for test-time augmentation); AUC always uses ``probs``.

    Returns a JSON-ready dict: ``f1, f1_macro, precision, recall, accuracy, auc, nll, confusion_matrix``
    (list of lists, rows = true class), ``n``, ``n_classes``, ``class_names``, ``task`` ("binary" or
    "multiclass"), ``per_class`` ({name: {precision, recall, f1, support, auc}}), ``notes`` ({metric: why it is
    None or otherwise special}); binary adds ``sensitivity`` and ``specificity``.
    """
    y, p, names = _check(y_true, probs, class_names)
    k = len(names)
    yp = predictions_from_probs(p) if y_pred is None else as_labels(y_pred, k, "y_pred")
    if len(yp) != len(y):
        raise DataError(f"y_true has {len(y)} samples but y_pred has {len(yp)}")
    cm = confusion_matrix(y, yp, k)
    scores = _per_class_scores(cm)
    notes: dict[str, str] = {}

    class_auc = [_auc(y == c, p[:, c]) for c in range(k)]
    for c, s in enumerate(scores):
        s["auc"] = class_auc[c]
    undefined = [names[c] for c, s in enumerate(scores) if s["f1"] is None]
    if undefined:
        notes["per_class"] = (
            f"classes {undefined} are neither in y_true nor predicted: their scores are null and left out of "
            "macro averages"
        )

    out: dict = {"task": "binary" if k == 2 else "multiclass", "n": int(len(y)), "n_classes": k}
    out["class_names"] = list(names)
    f1_macro = _macro([s["f1"] for s in scores])
    if k == 2:
        pos, neg = scores[1], scores[0]
        out["f1"], out["precision"], out["recall"] = pos["f1"], pos["precision"], pos["recall"]
        out["sensitivity"] = pos["recall"]
        out["specificity"] = neg["recall"]
        if pos["f1"] is None:
            notes["f1"] = f"no '{names[1]}' samples in y_true and none predicted: F1 is undefined"
        elif cm[:, 1].sum() == 0:
            notes["precision"] = f"no sample predicted '{names[1]}': precision 0/0 counted as 0"
        if cm[1].sum() == 0:
            notes["recall"] = f"no '{names[1]}' samples in y_true: recall (sensitivity) 0/0 counted as 0"
        if cm[0].sum() == 0:
            notes["specificity"] = f"no '{names[0]}' samples in y_true: specificity 0/0 counted as 0"
        out["auc"] = class_auc[1]
        if out["auc"] is None:
            notes["auc"] = f"y_true holds only '{names[int(y[0])]}': ROC AUC is undefined"
    else:
        out["f1"] = f1_macro
        out["precision"] = _macro([s["precision"] for s in scores])
        out["recall"] = _macro([s["recall"] for s in scores])
        present = [c for c in range(k) if cm[c].sum() > 0]
        out["auc"] = _macro([class_auc[c] for c in present])
        if out["auc"] is None:
            notes["auc"] = f"y_true holds only '{names[int(y[0])]}': one-vs-rest AUC is undefined"
        elif len(present) < k:
            absent = [names[c] for c in range(k) if c not in present]
            notes["auc"] = (
                f"classes {absent} are absent from y_true: macro AUC averages the {len(present)} present"
            )
    out["f1_macro"] = f1_macro
    out["accuracy"] = float(np.trace(cm) / len(y))
    out["nll"] = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))))
    out["confusion_matrix"] = cm.tolist()
    out["per_class"] = {names[c]: scores[c] for c in range(k)}
    out["notes"] = notes
    return out


def metric_definitions(n_classes: int) -> dict[str, str]:
    """One-line definitions of the headline metrics for a report, for a K-class task."""
    common = {
        "accuracy": "fraction of samples whose predicted class (argmax of the probabilities) is the true class",
        "nll": "mean negative log-likelihood of the true class, -mean(log p_true)",
        "confusion_matrix": "rows = true class, columns = predicted class, entries = counts",
        "ece": "expected calibration error: over 10 equal-width bins of predicted-class confidence, the"
        " sample-weighted mean of |accuracy - mean confidence|",
        "calibration": "fitted on validation: a temperature T (logits / T), after moving the probabilities of"
        " a model trained on balanced classes to the training split's class frequencies (prior correction)"
        " when that lowers validation NLL; F1 and accuracy stay those of the uncalibrated decision",
    }
    if n_classes == 2:
        return {
            "f1": "F1 of the malignant (positive) class: 2TP / (2TP + FP + FN)",
            "precision": "precision of the malignant class: TP / (TP + FP) (positive predictive value)",
            "recall": "recall (sensitivity) of the malignant class: TP / (TP + FN)",
            "specificity": "recall of the benign class: TN / (TN + FP)",
            "f1_macro": "unweighted mean of the benign and malignant F1",
            "auc": "ROC AUC of the predicted malignant probability",
            **common,
        }
    return {
        "f1": "macro F1: unweighted mean over classes of 2TP / (2TP + FP + FN) (equals f1_macro)",
        "precision": "macro precision: unweighted mean over classes of TP / (TP + FP)",
        "recall": "macro recall: unweighted mean over classes of TP / (TP + FN)",
        "f1_macro": "unweighted mean over classes of the per-class F1",
        "auc": "one-vs-rest macro ROC AUC: mean over the classes present in y_true of AUC(p_k, class k vs rest)",
        **common,
    }


# -------------------------------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    y_true,
    probs,
    class_names: Sequence[str],
    metrics: Sequence[str] = ("f1", "auc", "accuracy"),
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups=None,
    y_pred=None,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap (1 - alpha) confidence intervals of headline metrics: {metric: [low, high]}.

    Samples are resampled with replacement; with ``groups`` (e.g. patient IDs, one per sample) whole groups
    are resampled, so nodules of one patient stay together. Resamples in which a metric is undefined are
    skipped; a metric undefined in every resample maps to None.
    """
    y, p, names = _check(y_true, probs, class_names)
    yp = None if y_pred is None else as_labels(y_pred, len(names), "y_pred")
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y))]
    else:
        g = np.asarray(groups)
        if len(g) != len(y):
            raise DataError(f"groups has {len(g)} entries but there are {len(y)} samples")
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == u) for u in range(inverse.max() + 1)]
    values: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[i] for i in pick])
        m = classification_metrics(y[idx], p[idx], names, None if yp is None else yp[idx])
        for name in metrics:
            if name not in m:
                raise DataError(
                    f"unknown metric {name!r}; choose from {sorted(k for k in m if k != 'notes')}"
                )
            if m[name] is not None:
                values[name].append(m[name])
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {name: (np.percentile(v, q).tolist() if v else None) for name, v in values.items()}


def summarise(results: Mapping[str, Mapping], keys: Sequence[str] = ("f1", "auc", "accuracy")) -> str:
    """A plain-text table of several models' headline metrics (rows = models), for logs and the CLI."""
    width = max([len(m) for m in results] + [5])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{k:>8}" for k in keys)]
    for model, m in results.items():
        cells = ["     n/a" if m.get(k) is None else f"{m[k]:8.3f}" for k in keys]
        lines.append(f"{model:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def best_f1_threshold(y_true, probs) -> float:
    """Binary: the malignant-probability threshold that maximises F1 (of the malignant class) on these labels.

    Meant for the validation split; apply the result to the test split with `predictions_at_threshold`.
    Candidates are the distinct predicted probabilities; ties go to the threshold closest to 0.5.
    """
    y = np.asarray(y_true).astype(int)
    p = as_probs(probs, 2)[:, 1]
    best, best_f1 = 0.5, -1.0
    for t in np.unique(np.concatenate([p, [0.5]])):
        pred = (p >= t).astype(int)
        tp = int(((pred == 1) & (y == 1)).sum())
        f1 = _ratio(
            2 * tp, 2 * tp + int(((pred == 1) & (y == 0)).sum()) + int(((pred == 0) & (y == 1)).sum())
        )
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_f1 = float(t), f1
    return best


def predictions_at_threshold(probs, threshold: float) -> np.ndarray:
    """Binary labels: malignant where p(malignant) >= threshold."""
    return (as_probs(probs, 2)[:, 1] >= threshold).astype(int)
