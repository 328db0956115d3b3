"""2.5-D inputs: a slice with its neighbours above and below as three channels.

A nodule is a 3-D object; one axial slice shows a cross-section, and whether it grows, shrinks or keeps its
shape across slices (a vessel runs through, a nodule ends) is a cue a 2-D model cannot see. Sources that keep
neighbouring slices of a nodule (lidc-crops: the central slice and its neighbours +-1) list them with the
same ``nodule_id`` and consecutive ``slice_index``; `add_neighbour_columns` finds, per row, the images of
slice_index - 1 and + 1 of the same nodule. A missing neighbour (the first or last slice kept) repeats the
slice itself, so every row has three channels: (below, slice, above).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.data.manifest import row_labels
from lungnet.errors import DataError

NEIGHBOUR_COLUMNS = ("image_below", "image_above")
KEY_COLUMNS = ("nodule_id", "slice_index")


def add_neighbour_columns(frame: pd.DataFrame, image_column: str, origin: str = "manifest") -> pd.DataFrame:
    """`frame` with ``image_below`` / ``image_above``: the images of the same nodule one slice away.

    Looks the neighbours up in `frame` itself, so pass every slice of a nodule (before any filtering by
    split). Needs ``nodule_id`` and an integer ``slice_index``; a missing column or a bad index is a
    `DataError` naming it.
    """
    missing = [c for c in KEY_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{origin}: neighbouring slices as channels (data.neighbour_slices) need the columns "
            f"{list(KEY_COLUMNS)}; missing {missing}"
        )
    index = pd.to_numeric(frame["slice_index"], errors="coerce")
    bad = index.isna() | (index != np.round(index))
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise DataError(
            f"{row_labels(frame)[row]}: slice_index {frame['slice_index'].tolist()[row]!r} is not an integer"
        )
    nodule = frame["nodule_id"].astype(str).to_numpy()
    index = index.astype(int).to_numpy()
    image = frame[image_column].astype(str).to_numpy()
    lookup = dict(zip(zip(nodule, index, strict=True), image, strict=True))
    out = frame.copy()
    for column, step in zip(NEIGHBOUR_COLUMNS, (-1, 1), strict=True):
        out[column] = [lookup.get((n, i + step), own) for n, i, own in zip(nodule, index, image, strict=True)]
    return out


def has_neighbour_columns(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in NEIGHBOUR_COLUMNS)
