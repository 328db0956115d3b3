"""Baselines that every model is compared against: nodule size alone, and the majority class.

Nodule diameter alone predicts LIDC malignancy ratings well (radiologists rate large nodules as suspicious;
on the real LIDC crops a size-only classifier reaches an AUC of about 0.90), so a model that does not beat
`size_only_baseline` has not learnt much beyond size. Both baselines are fitted on the training split only
and return test-set probabilities in the same [N, K] layout as the models, so `classification_metrics` and
the figures treat them like any model.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def size_only_baseline(
    train_sizes,
    train_y,
    test_sizes,
    class_names: Sequence[str],
    *,
    C: float = 1.0,
    balanced: bool = True,
) -> np.ndarray:
    """Logistic regression on nodule diameter (mm), fitted on the training split; returns test probs [N, K].

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
    x_test = _sizes(test_sizes, "test_sizes")
    y = as_labels(train_y, k, "train_y")
    if len(y) != len(x_train):
        raise DataError(f"train_y has {len(y)} labels but train_sizes has {len(x_train)} diameters")
    present = np.unique(y)
    if len(present) == 1:
        return np.tile(_class_prior(y, k), (len(x_test), 1))
    mean, sd = x_train.mean(), x_train.std()
    sd = sd if sd > 0 else 1.0
    # Balanced class weights by default: the models are trained on class-balanced data, and an unweighted fit
    # on imbalanced labels puts every prediction in the majority class (F1 0), which is no useful reference.
    model = LogisticRegression(C=C, max_iter=1000, class_weight="balanced" if balanced else None)
    model.fit(((x_train - mean) / sd)[:, None], y)
    fitted = model.predict_proba(((x_test - mean) / sd)[:, None])
    probs = np.zeros((len(x_test), k))
    probs[:, model.classes_] = fitted
    return probs


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
