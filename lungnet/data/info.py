"""`lungnet data info`: what is in a data source, as tables for people or one JSON object for programs.

Masks, when the manifest has them, are all checked as the segmentation study checks them
(`lungnet.data.manifest.check_mask_pairs`: values 0/1 or 0/255, the image's shape), so a bad mask is an
error here, naming its row and file, rather than later in a study. The embedded phantom's masks, which
lungnet renders itself, are not re-read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungnet.data.io import read_image
from lungnet.data.labels import assign_labels, class_names, label_counts
from lungnet.data.manifest import check_mask_pairs, outlined, row_labels
from lungnet.data.registry import Source
from lungnet.data.splits import SPLIT_NAMES, split_manifest
from lungnet.errors import DataError

IMAGE_COLUMNS = ("image", "crop_image")
MASK_COLUMNS = {"mask": "image", "crop_mask": "crop_image"}  # mask column -> the column of its image


def summarize(
    source: Source,
    grouping: str = "paper",
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    max_images: int = 200,
    progress: bool = True,
) -> dict:
    """Counts per class and split, patients, and image sizes/intensities from up to `max_images` images.

    Every mask is checked against its image (see the module docstring); a bad one is a `DataError` naming
    its row and file. ``info["masks"]`` counts the masks checked and the empty ones per mask column.
    """
    manifest = source.manifest
    masks = {} if source.is_phantom else _check_masks(manifest, source.spec, progress)
    labelled = assign_labels(manifest, grouping, origin=source.spec)
    names = class_names(grouping, manifest)
    info = {
        "source": source.spec,
        "description": source.description,
        "n_samples": len(labelled),
        "n_rows_in_source": len(manifest),
        "n_patients": int(labelled["patient_id"].nunique()),
        "grouping": grouping,
        "class_names": list(names),
        "label_counts": label_counts(labelled, names),
    }
    if "nodule_id" in labelled.columns:
        info["n_nodules"] = int(labelled["nodule_id"].nunique())
    if "mask" in labelled.columns:
        info["n_with_mask"] = int((labelled["mask"] != "").sum())
    try:
        split = split_manifest(labelled, fractions, seed=seed, class_names=names)
        info["splits"] = {
            name: {
                "n_samples": int((split["split"] == name).sum()),
                "n_patients": int(split.loc[split["split"] == name, "patient_id"].nunique()),
                "label_counts": label_counts(split[split["split"] == name], names),
            }
            for name in SPLIT_NAMES
        }
    except DataError as exc:  # too little data to split is worth reporting, not fatal for `info`
        info["splits"] = {"error": str(exc)}
    info["images"] = {
        col: _image_stats(labelled, col, max_images, seed, source.spec)
        for col in IMAGE_COLUMNS
        if col in labelled
    }
    if masks:
        info["masks"] = masks
    return info


def _check_masks(manifest: pd.DataFrame, origin: str, progress: bool) -> dict:
    """{mask column: {"n_checked", "n_empty"}} after reading every listed mask with its image."""
    out = {}
    for mask_col, image_col in MASK_COLUMNS.items():
        if mask_col not in manifest.columns or image_col not in manifest.columns:
            continue
        listed = outlined(manifest, mask_col)
        if listed.empty:
            continue
        areas = check_mask_pairs(listed, image_col, mask_col, origin=origin, progress=progress)
        out[mask_col] = {"n_checked": len(listed), "n_empty": int((areas == 0).sum())}
    return out


def _image_stats(frame: pd.DataFrame, column: str, max_images: int, seed: int, origin: str) -> dict:
    labels = np.asarray(row_labels(frame, origin), dtype=object)
    listed = (frame[column] != "").to_numpy()
    refs, labels = frame[column][listed], labels[listed]
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(refs), size=min(max_images, len(refs)), replace=False))
    shapes: dict[str, int] = {}
    lows, highs, means = [], [], []
    for i in picked:
        try:
            image = read_image(refs.iloc[i])
        except DataError as exc:
            raise DataError(f"{labels[i]} ({column}): {exc}") from exc
        key = "x".join(map(str, image.shape))
        shapes[key] = shapes.get(key, 0) + 1
        lows.append(float(image.min()))
        highs.append(float(image.max()))
        means.append(float(image.mean()))
    return {
        "n_read": len(picked),
        "sizes": shapes,
        "intensity_min": min(lows),
        "intensity_max": max(highs),
        "intensity_mean": float(np.mean(means)),
    }


def format_info(info: dict) -> str:
    """The summary as plain-text tables."""
    names = info["class_names"]
    lines = [info["description"], ""]
    lines.append(
        f"samples {info['n_samples']} (of {info['n_rows_in_source']} rows)   patients {info['n_patients']}"
        + (f"   nodules {info['n_nodules']}" if "n_nodules" in info else "")
        + (f"   with mask {info['n_with_mask']}" if "n_with_mask" in info else "")
    )
    lines.append(f"label grouping: {info['grouping']}")
    lines.append("")
    width = max(9, *(len(n) for n in names))
    header = f"{'split':<8}{'patients':>10}{'samples':>10}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines += [header, "-" * len(header)]
    rows = [("all", info["n_patients"], info["n_samples"], info["label_counts"])]
    splits = info.get("splits", {})
    if "error" in splits:
        lines.append(f"(no split: {splits['error']})")
    else:
        rows += [(k, v["n_patients"], v["n_samples"], v["label_counts"]) for k, v in splits.items()]
    for name, patients, samples, counts in rows:
        lines.append(
            f"{name:<8}{patients:>10}{samples:>10}" + "".join(f"{counts[n]:>{width + 2}}" for n in names)
        )
    for col, stats in info.get("images", {}).items():
        sizes = ", ".join(f"{k} ({v})" for k, v in stats["sizes"].items())
        lines += [
            "",
            f"{col}: sizes {sizes} from {stats['n_read']} images read; intensity "
            f"min {stats['intensity_min']:.0f}, max {stats['intensity_max']:.0f}, mean {stats['intensity_mean']:.1f}",
        ]
    for col, stats in info.get("masks", {}).items():
        lines += [
            "",
            f"{col}: all {stats['n_checked']} checked against their images, {stats['n_empty']} empty",
        ]
    return "\n".join(lines)
