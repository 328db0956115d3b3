"""Baselines that every model is compared against: nodule size alone, and the majority class.

Nodule diameter alone predicts LIDC malignancy ratings well (radiologists rate large nodules as suspicious;
on the real LIDC crops a size-only classifier reaches an AUC of about 0.90), so a model that does not beat
`size_only_baseline` has not learnt much beyond size. Both baselines are fitted on the training split only
and return test-set probabilities in the same [N, K] layout as the models, so `classification_metrics` and
the figures treat them like any model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from lungnet.errors import DataError
from lungnet.evaluation.metrics import as_labels


def _sizes(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array of diameters in mm, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a) | (a < 0))
    if bad.size:
        raise DataError(f"{name}[{bad[0]}] = {a[bad[0]]} is not a valid diameter in mm")
    return a


def _class_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=n_classes) / len(y)


@dataclass(frozen=True)
class SizeOnly:
    """A fitted size-only baseline, kept in a run's ``metrics.json`` so external sets are scored with it.

    ``coef`` / ``intercept`` are scikit-learn's for the standardised diameter (one row per present class, or
    one row for two classes); ``prior`` replaces them when training had a single class."""

    n_classes: int
    mean: float
    sd: float
    classes: tuple[int, ...]
    coef: tuple[float, ...]
    intercept: tuple[float, ...]
    prior: tuple[float, ...] | None = None

    def predict(self, sizes, name: str = "sizes") -> np.ndarray:
        x = _sizes(sizes, name)
        if self.prior is not None:
            return np.tile(np.asarray(self.prior), (len(x), 1))
        z = (x - self.mean) / self.sd
        logits = np.asarray(self.intercept)[None, :] + z[:, None] * np.asarray(self.coef)[None, :]
        if len(self.classes) == 2:  # scikit-learn's binary form: one logit for the second class
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            fitted = np.stack([1.0 - p1, p1], axis=1)
        else:
            logits -= logits.max(axis=1, keepdims=True)
            fitted = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        probs = np.zeros((len(x), self.n_classes))
        probs[:, list(self.classes)] = fitted
        return probs

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict | None) -> SizeOnly | None:
        if not record:
            return None
        prior = record.get("prior")
        return cls(
            n_classes=int(record["n_classes"]),
            mean=float(record["mean"]),
            sd=float(record["sd"]),
            classes=tuple(int(c) for c in record["classes"]),
            coef=tuple(float(c) for c in record["coef"]),
            intercept=tuple(float(c) for c in record["intercept"]),
            prior=None if prior is None else tuple(float(v) for v in prior),
        )


def fit_size_only(
    train_sizes, train_y, class_names: Sequence[str], *, C: float = 1.0, balanced: bool = True
) -> SizeOnly:
    """Logistic regression on nodule diameter (mm), fitted on the training split.

    Binary: p(malignant) = sigmoid(a + b * z) with z the diameter standardised by the training mean and SD.
    K > 2: multinomial (softmax) logistic regression on the same feature. ``C`` is scikit-learn's inverse L2
    strength on the standardised feature (1.0 barely regularises a single feature on hundreds of nodules).
    ``balanced`` weights classes inversely to their training frequency, as the models' oversampling does.
    Classes absent from the training split get probability 0; with a single training class the baseline
    predicts that class with probability 1.
    """
    k = len(class_names)
    if k < 2:
        raise DataError(f"class_names needs at least 2 names, got {list(class_names)}")
    x_train = _sizes(train_sizes, "train_sizes")
    y = as_labels(train_y, k, "train_y")
    if len(y) != len(x_train):
        raise DataError(f"train_y has {len(y)} labels but train_sizes has {len(x_train)} diameters")
    mean, sd = float(x_train.mean()), float(x_train.std())
    sd = sd if sd > 0 else 1.0
    present = np.unique(y)
    if len(present) == 1:
        return SizeOnly(k, mean, sd, tuple(int(c) for c in present), (), (), tuple(_class_prior(y, k)))
    # Balanced class weights by default: the models are trained on class-balanced data, and an unweighted fit
    # on imbalanced labels puts every prediction in the majority class (F1 0), which is no useful reference.
    model = LogisticRegression(C=C, max_iter=1000, class_weight="balanced" if balanced else None)
    model.fit(((x_train - mean) / sd)[:, None], y)
    return SizeOnly(
        k,
        mean,
        sd,
        tuple(int(c) for c in model.classes_),
        tuple(float(c) for c in model.coef_[:, 0]),
        tuple(float(c) for c in model.intercept_),
    )


def size_only_baseline(
    train_sizes,
    train_y,
    test_sizes,
    class_names: Sequence[str],
    *,
    C: float = 1.0,
    balanced: bool = True,
) -> np.ndarray:
    """`fit_size_only` on the training split; returns its test probabilities [N, K]."""
    fitted = fit_size_only(train_sizes, train_y, class_names, C=C, balanced=balanced)
    return fitted.predict(test_sizes, "test_sizes")


def cross_fitted_size_only(sizes, y, folds, class_names: Sequence[str]) -> np.ndarray:
    """Each row's size-only probabilities from `fit_size_only` on the rows of the other `folds` (0-based
    fold per row): the baseline beside a fold ensemble's out-of-fold predictions, held out the same way."""
    sizes, y, folds = np.asarray(sizes), np.asarray(y), np.asarray(folds)
    if not len(sizes) == len(y) == len(folds):
        raise DataError(f"cross-fitted size-only: {len(sizes)} sizes, {len(y)} labels, {len(folds)} folds")
    out = np.zeros((len(y), len(class_names)))
    for fold in np.unique(folds):
        held = folds == fold
        fitted = fit_size_only(sizes[~held], y[~held], class_names)
        out[held] = fitted.predict(sizes[held], "sizes")
    return out


def majority_baseline(train_y, n_test: int, class_names: Sequence[str]) -> np.ndarray:
    """Training class frequencies repeated for each of ``n_test`` samples: [n_test, K].

    Its argmax is the majority training class (ties -> lower index), so its accuracy is that class's share of
    the test set; its AUC is 0.5 (constant scores).
    """
    k = len(class_names)
    if k < 2:
        raise DataError(f"class_names needs at least 2 names, got {list(class_names)}")
    if int(n_test) < 1:
        raise DataError(f"n_test must be a positive number of test samples, got {n_test}")
    y = as_labels(train_y, k, "train_y")
    return np.tile(_class_prior(y, k), (int(n_test), 1))
