"""`lungnet predict` on a segmentation run (the segmentation and Inf-Net studies): masks for images without
any.

The run's selected model (or a named one), with the preprocessing, test-time augmentation and threshold the
run evaluated it with, outlines every image of a source; each mask is mapped back onto its image's own pixels
(`lungnet.studies.mask_prediction.to_native`) and written as a PNG of the image's size, so it overlays the
image it came from. Where the run post-processes with a dense CRF, the CRF's masks (with the setting the
run chose on its validation split) are written beside the raw ones.

Writes to ``RUN/predictions/<source>-<time>/``: ``masks/<model>/NNNNN.png`` (and ``masks/<model>-crf/``),
``predictions.csv`` (per image: its mask, area in pixels and, where the source gives the pixel spacing, in
mm² with the equivalent diameter), ``nodules.csv`` (where there are nodule ids: the largest slice of each),
``masks.png`` (a few images with their masks) and ``prediction.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from lungnet.data.dataset import check_source_images
from lungnet.data.io import read_image
from lungnet.data.pipelines import sample_spacings, spacing_column
from lungnet.data.registry import load_source
from lungnet.data.segmentation import view_columns
from lungnet.errors import DataError
from lungnet.evaluation.figures import save_figure
from lungnet.evaluation.segmentation_figures import mask_gallery_figure
from lungnet.fileio import write_csv, write_json
from lungnet.postprocess.crf import dense_crf_batch, require_crf
from lungnet.runs import load_run_config
from lungnet.runs.artifacts import evaluation_dir, run_metrics
from lungnet.studies.mask_prediction import Segmenter, segmented_batches, to_native, write_mask_png
from lungnet.studies.segmentation import check_run_intensity, with_tuned_crf

MASKS_DIR = "masks"
FIGURE_ROWS = 6


def mask_measures(mask: np.ndarray, spacing_mm: float | None) -> dict:
    """Area (pixels; mm² and the diameter of a circle of that area where the spacing is known) and the
    number of connected regions of one binary mask."""
    area = int(mask.sum())
    out = {"area_px": area, "regions": int(ndimage.label(mask)[1])}
    if spacing_mm is not None and spacing_mm > 0:
        area_mm2 = area * float(spacing_mm) ** 2
        out.update(area_mm2=area_mm2, diameter_mm=2.0 * np.sqrt(area_mm2 / np.pi))
    return out


def source_spacings(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """Each image's pixel spacing (mm) from the source's spacing column, or None where it has none."""
    name = spacing_column(column)
    if name not in frame.columns:
        return None
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
    return np.where(values > 0, values, np.nan)


def nodule_table(slices: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    """Per nodule: its slices, how many have a mask, and its largest slice's area (and diameter)."""
    grouped = slices.groupby("nodule_id", sort=True)
    table = grouped.agg(
        patient_id=("patient_id", "first"),
        slices=("image", "size"),
        slices_with_mask=(f"area_px{suffix}", lambda a: int((a > 0).sum())),
        max_area_px=(f"area_px{suffix}", "max"),
    )
    if f"area_mm2{suffix}" in slices.columns:
        table["max_area_mm2"] = grouped[f"area_mm2{suffix}"].max()
        table["max_diameter_mm"] = grouped[f"diameter_mm{suffix}"].max()
    return table.reset_index()


def shown_rows(areas: np.ndarray, n: int = FIGURE_ROWS) -> np.ndarray:
    """Up to `n` row indices spread evenly over the images that got a mask (over all, where none did)."""
    candidates = np.flatnonzero(areas > 0)
    if candidates.size == 0:
        candidates = np.arange(len(areas))
    picks = np.linspace(0, candidates.size - 1, min(n, candidates.size)).round().astype(int)
    return candidates[np.unique(picks)]


def predict_masks_of_run(
    run_dir, source_spec: str, out=None, model_name: str | None = None, progress: bool = True
) -> Path:
    """Masks from a segmentation run's model for every image of `source_spec`; returns the folder."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    recorded = run_metrics(run_dir)
    segmenter = Segmenter.from_run(run_dir, model_name)
    config = with_tuned_crf(config, recorded, segmenter.name)
    crf = config.postprocess.crf if config.postprocess.crf.enabled else None
    if crf is not None:
        require_crf()
    source = load_source(source_spec, config.data.phantom, progress=progress)
    frame = source.manifest.reset_index(drop=True)
    column, _ = view_columns(frame, config.data.view)
    if column not in frame.columns:
        raise DataError(f"{source.spec}: the manifest has no {column!r} column of images to segment")
    check_source_images(source, frame, column, progress=progress)
    check_run_intensity(frame[column], config, recorded, source.spec, run_dir)
    model_spacings = None
    if segmenter.preprocess.pixel_spacing_mm is not None:
        model_spacings = sample_spacings(frame, segmenter.preprocess, image_column=column)
    spacings = source_spacings(frame, column)

    out = evaluation_dir(run_dir, source.spec, out, folder="predictions")
    variants = {"": segmenter.name, **({"_crf": f"{segmenter.name}-crf"} if crf is not None else {})}
    rows: dict[str, list[dict]] = {suffix: [] for suffix in variants}
    paths = frame[column].astype(str).tolist()
    index = 0
    for part in segmented_batches(segmenter, paths, model_spacings, progress=progress):
        maps = {"": part.native}
        if crf is not None:
            refined = dense_crf_batch(part.inputs, part.probs, crf)
            maps["_crf"] = [
                to_native(p, image.shape[:2], segmenter.preprocess, _at(model_spacings, index + i))
                for i, (p, image) in enumerate(zip(refined, part.images, strict=True))
            ]
        for suffix, native in maps.items():
            for i, prob in enumerate(native):
                mask = prob >= segmenter.threshold
                target = out / MASKS_DIR / variants[suffix] / f"{index + i:05d}.png"
                write_mask_png(target, mask)
                measures = mask_measures(mask, _at(spacings, index + i))
                rows[suffix].append({"mask": str(target.relative_to(out)), **measures})
        index += len(part.paths)

    ids = [c for c in ("patient_id", "nodule_id") if c in frame.columns]
    table = pd.DataFrame({"image": frame[column].to_numpy(), **{c: frame[c].to_numpy() for c in ids}})
    for suffix, found in rows.items():
        table = table.join(pd.DataFrame(found).add_suffix(suffix))
    write_csv(out / "predictions.csv", table)
    files = ["predictions.csv", f"{MASKS_DIR}/"]
    if "nodule_id" in table.columns:
        write_csv(out / "nodules.csv", nodule_table(table))
        files.append("nodules.csv")

    shown = shown_rows(table["area_px"].to_numpy())
    figure = mask_gallery_figure(
        [read_image(paths[i]) for i in shown],
        [read_image(str(out / table.loc[i, "mask"])) > 0 for i in shown],
        [_figure_title(Path(paths[i]).name, table.loc[i]) for i in shown],
        f"Predicted masks of {segmenter.name}: {len(shown)} of the {len(table)} images, spread over those with a mask",
    )
    save_figure(figure, out / "masks.png")
    files += ["masks.png", "prediction.json"]

    with_mask = int((table["area_px"] > 0).sum())
    summary = (
        f"{segmenter.name}: a mask on {with_mask} of {len(table)} images (threshold {segmenter.threshold}, "
        f"TTA {'on' if segmenter.tta else 'off'}{', with dense CRF' if crf is not None else ''})"
    )
    write_json(
        out / "prediction.json",
        {
            "run": str(run_dir),
            "model": segmenter.name,
            "summary": summary,
            "files": files,
            "threshold": segmenter.threshold,
            "tta": segmenter.tta,
            "crf": None
            if crf is None
            else {"bilateral_srgb": crf.bilateral_srgb, "bilateral_compat": crf.bilateral_compat},
            "data": source.description,
            "images": int(len(table)),
            "images_with_mask": with_mask,
            "nodules": int(table["nodule_id"].nunique()) if "nodule_id" in table.columns else None,
            "patients": int(table["patient_id"].nunique()) if "patient_id" in table.columns else None,
            "sizes": "mm from the source's pixel spacing"
            if spacings is not None
            else "pixels only (no spacing column)",
        },
    )
    return out


def _figure_title(name: str, row: pd.Series) -> str:
    size = f"{int(row['area_px'])} px"
    if pd.notna(row.get("diameter_mm")):
        size += f", {row['diameter_mm']:.1f} mm"
    return f"{name}\n{size}"


def _at(values: np.ndarray | None, i: int) -> float | None:
    if values is None or not np.isfinite(values[i]):
        return None
    return float(values[i])
