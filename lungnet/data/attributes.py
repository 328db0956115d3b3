"""The readers' other ratings as extra training targets (`data.attribute_targets`).

LIDC-IDRI readers rated each nodule on eight characteristics beside malignancy; the median of each is a
manifest column in lidc-crops and in the phantom. A classifier with an attribute head (custom_cnn
``attributes: N``) learns them beside its class, the semantic multi-task design of Shen et al.'s HSCNN
(Expert Syst. Appl. 2019). Why: calcification, spiculation and texture carry malignancy cues that size does
not (on lidc-crops, a logistic regression of the readers' diameter and these ratings, fitted on the training
split, beats the diameter alone on validation), and a network asked to rate them must look at them.

Each rating is scaled to [0, 1] by its LIDC scale, so a sigmoid head regresses it with mean squared error.
The readers' diameter (``diameter_mm``) can be a target too, on a log scale, to teach the size of a
non-calcified nodule that the CNNs miss (`docs/real-ct/analysis/headroom.py`); on real CT it did not help
(README ²⁰). Only training uses it; at inference the model sees the image alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.data.manifest import row_labels
from lungnet.errors import ConfigError, DataError

# LIDC-IDRI rating scales (lowest, highest); calcification 6 = absent, internal structure 1 = soft tissue
ATTRIBUTE_SCALES: dict[str, tuple[float, float]] = {
    "subtlety": (1, 5),
    "internal_structure": (1, 4),
    "calcification": (1, 6),
    "sphericity": (1, 5),
    "margin": (1, 5),
    "lobulation": (1, 5),
    "spiculation": (1, 5),
    "texture": (1, 5),
}

# measurements (lowest, highest), scaled on a log scale: size matters in ratios (5 -> 10 mm as 10 -> 20 mm)
MEASUREMENT_SCALES: dict[str, tuple[float, float]] = {"diameter_mm": (1.0, 100.0)}
TARGETS = (*ATTRIBUTE_SCALES, *MEASUREMENT_SCALES)


def check_attribute_names(names, what: str = "data.attribute_targets") -> tuple[str, ...]:
    """`names` as a tuple of known, distinct ratings, or a `ConfigError` naming the bad one."""
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ConfigError(f"{what}: {names!r} must be a list of ratings ({', '.join(TARGETS)})")
    for name in names:
        if name not in TARGETS:
            raise ConfigError(f"{what}: unknown rating {name!r}; choose from {', '.join(TARGETS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{what}: {list(names)} names a rating twice")
    return tuple(names)


def attribute_targets(frame: pd.DataFrame, names, origin: str = "manifest") -> np.ndarray:
    """float32 ``[N, len(names)]``: each row's ratings (and measurements, on a log scale) scaled to [0, 1]; a
    missing column, an empty cell or a value outside its scale is a `DataError` naming the column and the row."""
    names = check_attribute_names(names)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise DataError(
            f"{origin}: data.attribute_targets needs the columns {missing} (the readers' median ratings); "
            f"columns present: {list(frame.columns)}"
        )
    columns = []
    for name in names:
        measured = name in MEASUREMENT_SCALES
        low, high = MEASUREMENT_SCALES[name] if measured else ATTRIBUTE_SCALES[name]
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        bad = ~((values >= low) & (values <= high))
        if bad.any():
            row = int(np.argmax(bad))
            label = row_labels(frame, origin)[row]
            what = "a measurement" if measured else "a rating"
            raise DataError(
                f"{label}: {name} {frame[name].tolist()[row]!r} is not {what} in {low:g}..{high:g}"
            )
        if measured:
            values, low, high = np.log(values), np.log(low), np.log(high)
        columns.append((values - low) / (high - low))
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((len(frame), 0), np.float32)
