"""Label budgets and pseudo-label rounds (Semi-Inf-Net, Fan et al. 2020): the settings and the plain parts.

A label budget keeps the masks of a fraction of the training *patients* (chosen with a seed, at least one
patient); the other training patients' masks are hidden from training and used only to report how well
the pseudo-labels agree with them.

Semi-Inf-Net, as the reference implementation does it: the unlabelled images, in a fixed random order, are
cut into groups (5 images each in the reference); each round predicts one group with the current model,
keeps the pseudo-labels that pass the confidence threshold, adds them to the labelled set and every earlier
round's pseudo-labels, and fine-tunes on the union. After the last round the model is fine-tuned on the
labelled set alone.

Confidence of one pseudo-label: the mean predicted probability over the pixels it calls nodule
(``p >= 0.5``); an image with no such pixel has confidence 0 and is never kept (nearly every slice of these
sources is drawn around a nodule, so an empty prediction is far more often a miss than a true negative; the
phantom's nodule-free slices are therefore never pseudo-labelled). The reference keeps every pseudo-label:
``confidence_threshold: 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lungnet.config import is_int
from lungnet.errors import ConfigError, DataError


@dataclass(frozen=True)
class LabelBudgetConfig:
    """``fraction`` of the training patients keep their masks (1.0: all of them); chosen with ``seed``."""

    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float):
            raise ConfigError(f"labels.fraction: {self.fraction!r} must be a number in (0, 1]")
        if not 0 < self.fraction <= 1:
            raise ConfigError(
                f"labels.fraction: {self.fraction} must be in (0, 1] (1.0: every patient labelled)"
            )


@dataclass(frozen=True)
class SemiConfig:
    """Semi-Inf-Net's pseudo-label rounds (module docstring). ``rounds``: at most this many groups (null: until
    the unlabelled images are used up); ``learning_rate``: of the rounds and the final fine-tuning (null: the
    training learning rate). ``pseudo_labels: false`` is the compute-matched control: the same rounds, epochs
    and steps, each group still predicted and logged, but no pseudo-label is ever added to the training set."""

    confidence_threshold: float = 0.0
    group_size: int = 5
    rounds: int | None = None
    epochs_per_round: int = 1
    final_epochs: int = 1
    learning_rate: float | None = None
    pseudo_labels: bool = True

    def __post_init__(self):
        if not isinstance(self.pseudo_labels, bool):
            raise ConfigError(f"semi.pseudo_labels: {self.pseudo_labels!r} must be true or false")
        if isinstance(self.confidence_threshold, bool) or not 0 <= self.confidence_threshold < 1:
            raise ConfigError(
                f"semi.confidence_threshold: {self.confidence_threshold!r} must be in [0, 1) (0 keeps every "
                "pseudo-label, as the reference does)"
            )
        for name, low in (("group_size", 1), ("epochs_per_round", 1), ("final_epochs", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ConfigError(f"semi.{name}: {value!r} must be an integer >= {low}")
        if self.rounds is not None and (not is_int(self.rounds) or self.rounds < 1):
            raise ConfigError(f"semi.rounds: {self.rounds!r} must be an integer >= 1 (or null: every group)")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"semi.learning_rate: {self.learning_rate!r} must be > 0 (or null)")


def split_label_budget(train: pd.DataFrame, budget: LabelBudgetConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled rows, unlabelled rows) of the training split, by patient."""
    if "patient_id" not in train.columns:
        raise DataError("a label budget splits by patient: the training rows have no 'patient_id' column")
    patients = np.array(sorted(train["patient_id"].astype(str).unique()))
    if patients.size == 0:
        raise DataError("the training split is empty: no patients to label")
    n_labelled = max(1, int(round(budget.fraction * patients.size)))
    chosen = np.random.default_rng(budget.seed).permutation(patients)[:n_labelled]
    labelled = train["patient_id"].astype(str).isin(set(chosen))
    return train[labelled].reset_index(drop=True), train[~labelled].reset_index(drop=True)


def round_groups(unlabelled: pd.DataFrame, config: SemiConfig, seed: int) -> list[pd.DataFrame]:
    """The unlabelled rows in a fixed random order (`seed`), cut into groups of ``group_size``; at most
    ``rounds`` of them."""
    order = unlabelled.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    groups = [order.iloc[i : i + config.group_size] for i in range(0, len(order), config.group_size)]
    return groups[: config.rounds] if config.rounds is not None else groups


def pseudo_label_confidence(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[N] confidence of each probability map [N, H, W]: the mean probability over its predicted nodule
    pixels (``p >= threshold``), 0 where it predicts none."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise DataError(f"pseudo-label confidence: expected maps [N, H, W], got shape {probs.shape}")
    foreground = probs >= threshold
    counts = foreground.sum(axis=(1, 2))
    sums = np.where(foreground, probs, 0.0).sum(axis=(1, 2))
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
