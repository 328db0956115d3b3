"""Class balancing for the training split: oversampling with augmented copies, a weighted random draw
(inverse class frequency, the multi-dataset study's sampler), or class weights."""

from __future__ import annotations

import numpy as np
import pandas as pd


def oversample(train: pd.DataFrame, extra: int = 200, seed: int = 0) -> pd.DataFrame:
    """Bring every class to (largest class + `extra`) rows, the largest class included.

    Added rows are copies marked ``augment_copy = True``; the pipeline always augments them, so they are
    augmented copies rather than repeats. Copies cycle through a class's shuffled rows, so each original is
    copied as evenly as possible.
    """
    rng = np.random.default_rng(seed)
    counts = train["target"].value_counts()
    goal = int(counts.max()) + int(extra)
    parts = [train.assign(augment_copy=False)]
    for target in sorted(counts.index):
        rows = train[train["target"] == target]
        need = goal - len(rows)
        if need <= 0:
            continue
        cycles = -(-need // len(rows))
        order = np.concatenate([rng.permutation(len(rows)) for _ in range(cycles)])[:need]
        parts.append(rows.iloc[order].assign(augment_copy=True))
    out = pd.concat(parts, ignore_index=True)
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def class_weights(targets, num_classes: int) -> dict[int, float]:
    """'Balanced' weights n / (k * n_c), the alternative to oversampling; absent classes get weight 0."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=num_classes).astype(float)
    total = counts.sum()
    return {c: (total / (num_classes * counts[c]) if counts[c] else 0.0) for c in range(num_classes)}


def weighted_resample(train: pd.DataFrame, seed: int = 0, size: int | None = None) -> pd.DataFrame:
    """`size` rows (default: as many as `train`) drawn with replacement, each with probability proportional to
    1 / (its class's row count), so every class is drawn equally often in expectation (a weighted random
    sampler, drawn once per run). Repeats are marked ``augment_copy`` so the pipeline augments them."""
    rng = np.random.default_rng(seed)
    counts = train["target"].map(train["target"].value_counts()).to_numpy(dtype=float)
    p = (1.0 / counts) / (1.0 / counts).sum()
    picks = rng.choice(len(train), size=size or len(train), replace=True, p=p)
    out = train.iloc[picks].reset_index(drop=True)
    return out.assign(augment_copy=pd.Series(picks).duplicated().to_numpy())
