"""The segmentation study's report: the published table beside ours (with and without the CRF), the readers'
own agreement, overlays, attention-gate maps and the intensity test."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lungnet.evaluation.figures import save_figure
from lungnet.evaluation.segmentation import READERS_SLICES, binarize
from lungnet.evaluation.segmentation_figures import (
    attention_maps_figure,
    dice_distribution_figure,
    overlay_comparison_figure,
    perturbation_figure,
    segmentation_metrics_figure,
)
from lungnet.models.segmenters.unet import attention_layer_names
from lungnet.reports.classification import PHANTOM_CAVEAT
from lungnet.reports.html import HtmlReport
from lungnet.reports.training import CAPTION, convergence_notes, learning_curves, run_note

TABLE_COLUMNS = (
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("small_tumour_recall", "Small-tumour recall"),
    ("intensity_std", "Std under intensity variation"),
    ("accuracy", "Accuracy"),
    ("precision", "Precision"),
    ("sensitivity", "Sensitivity"),
    ("f_score", "F-score"),
)


def comparison_table(config, summary: dict, data_label: str) -> pd.DataFrame:
    rows = []
    for name, published in config.published.items():
        rows.append({"model": f"{name} (published)", "data": "the study's own test set", **published})
    for name, result in summary["models"].items():
        for kind, label in (("raw", ""), ("crf", " + CRF")):
            if kind in result:
                rows.append({"model": f"{name}{label} (ours)", "data": data_label, **result[kind]})
    readers = summary.get("reader_agreement")
    if readers:
        rows.append(
            {
                "model": "radiologist vs other radiologists",
                "data": data_label,
                "dice": readers.get("mean_dice"),
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    columns = ["data", *[key for key, _ in TABLE_COLUMNS if key in table.columns]]
    return table[columns].rename(columns=dict(TABLE_COLUMNS))


def sample_rows(masks: np.ndarray, n: int) -> list[int]:
    """`n` test images with a nodule, spread over nodule sizes (smallest to largest)."""
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    candidates = np.flatnonzero(areas > 0)
    if candidates.size == 0:
        candidates = np.arange(len(masks))
    ordered = candidates[np.argsort(areas[candidates], kind="stable")]
    picks = np.linspace(0, len(ordered) - 1, min(n, len(ordered))).round().astype(int)
    return [int(ordered[i]) for i in dict.fromkeys(picks)]


def attention_maps(model: keras.Model, image: np.ndarray) -> list[np.ndarray]:
    """The attention coefficients α of every gate for one preprocessed image ``[S, S, C]``."""
    names = attention_layer_names(model)
    if not names:
        return []
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    outputs = probe(image[None], training=False)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    return [np.asarray(o)[0, ..., 0] for o in outputs]


def write_segmentation_report(
    run_dir: Path, config, data, results: list, selected, summary: dict, reader_table: pd.DataFrame | None
) -> Path:
    report = segmentation_report(run_dir, config, data, results, selected, summary, reader_table)
    return report.save(run_dir / "report.html")


def segmentation_report(
    run_dir: Path,
    config,
    data,
    results: list,
    selected,
    summary: dict,
    reader_table: pd.DataFrame | None,
    title: str = "nodule segmentation",
) -> HtmlReport:
    """The segmentation report's sections (the Inf-Net study adds its own after them)."""
    figures_dir = run_dir / "figures"
    threshold = config.postprocess.threshold
    data_label = "lidc-phantom" if data.source.is_phantom else data.source.spec
    test = data.split("test")
    report = HtmlReport(f"{config.name}: {title}")
    # `view` only picks between the phantom's crops and full slices; other sources hold one kind of image
    view = f"view '{config.data.view}', " if "crop_image" in data.manifest.columns else ""
    if data.source.is_phantom:
        report.note(PHANTOM_CAVEAT)
    report.paragraph(
        f"Data: {data.source.description}; {view}{config.data.image_size} px, "
        f"{config.data.split_level}-level split {list(config.data.split)} (seed {config.data.split_seed}): "
        f"{', '.join(f'{s} {int((data.manifest.split == s).sum())}' for s in ('train', 'val', 'test'))} images "
        f"({test.patient_id.nunique()} test patients). Intensities: {data.intensity}; "
        f"{'dataset' if data.preprocess.zscore_mean is not None else 'per-image'} z-score"
        f"{f' after clipping to {list(config.data.hu_clip)} HU' if data.intensity == 'ct' else ''}. "
        f"Empty masks: {data.n_empty_masks} ({config.data.empty_masks}). Loss: {loss_description(config.loss)}. "
        f"Profile: {config.profile}."
        + (
            " Predictions: mean over flips and quarter turns (test-time augmentation)."
            if config.evaluation.tta
            else ""
        )
    )
    note = run_note(run_dir)
    if note:
        report.paragraph(note, css="small")

    report.heading("Published numbers beside ours")
    report.paragraph(
        f"Published: {config.published_source or 'the original study'}. Ours: the test split named above, "
        f"thresholded at {threshold}, without and with the dense CRF. Selected model: {summary['selected_model']} "
        "(best validation Dice)."
    )
    report.table(comparison_table(config, summary, data_label))
    report.table(
        leaderboard_table(results, summary),
        "Leaderboard, by validation Dice (the selection rule; test Dice is never used to choose)",
    )
    report.table(
        levels_table(summary), "Test Dice by level: " + READERS_SLICES + " ; per nodule; per patient"
    )
    for result in results:
        tuning = result.metrics.get("crf_tuning")
        if tuning:
            chosen = tuning["selected"]
            report.paragraph(
                f"CRF of {result.name}: bilateral_srgb {chosen['bilateral_srgb']:g}, bilateral_compat "
                f"{chosen['bilateral_compat']:g}, chosen on the validation split from {len(tuning['grid'])} "
                f"settings (validation Dice {tuning['val_dice_raw']:.3f} without the CRF, "
                f"{tuning['val_dice_crf']:.3f} with it).",
                css="small",
            )
    for key, text in summary["definitions"].items():
        report.paragraph(f"{key}: {text}.", css="small")
    if summary.get("reader_agreement"):
        readers = summary["reader_agreement"]
        report.paragraph(
            f"Radiologists: {readers.get('definition', '')} ({readers.get('n_nodules')} test nodules, "
            f"{readers.get('n_pairs')} reader comparisons).",
            css="small",
        )

    ours = {}
    for result in results:
        ours[result.name] = result.metrics["raw"]
        if "crf" in result.metrics:
            ours[f"{result.name} + CRF"] = result.metrics["crf"]
    published = {f"{name}": values for name, values in config.published.items()}
    report.image(
        save_figure(segmentation_metrics_figure(ours, published), figures_dir / "metrics.png"),
        "Test metrics, ours (solid) and published (hatched)",
    )

    rows = sample_rows(selected.test.masks, config.evaluation.figure_samples)
    masks = {"ground truth": [selected.test.masks[i] for i in rows]}
    for result in results:
        masks[result.name] = [binarize(result.test.probs[i], threshold) for i in rows]
    if selected.crf_probs is not None:
        masks[f"{selected.name} + CRF"] = [binarize(selected.crf_probs[i], threshold) for i in rows]
    ids = test["nodule_id"] if "nodule_id" in test.columns else test["image_ref"]
    titles = [
        f"{ids.iloc[i]} · Dice " + " / ".join(f"{r.per_image['raw']['dice'].iloc[i]:.2f}" for r in results)
        for i in rows
    ]
    images = [selected.test.images[i] for i in rows]
    report.image(
        save_figure(overlay_comparison_figure(images, masks, titles), figures_dir / "overlays.png"),
        "Ground truth and each model's mask on test images, smallest to largest nodule "
        f"(Dice per model: {' / '.join(r.name for r in results)})",
    )
    for result in results:
        if not attention_layer_names(result.model):
            continue
        for k, i in enumerate(rows[-2:]):
            pre_image = _model_input(result.test.images[i], data.preprocess.channels)
            maps = attention_maps(result.model, pre_image)
            report.image(
                save_figure(
                    attention_maps_figure(
                        result.test.images[i],
                        maps,
                        [f"gate {level + 1}" for level in range(len(maps))],
                        mask=result.test.masks[i],
                    ),
                    figures_dir / f"attention_{result.name}_{k}.png",
                ),
                f"{result.name}: attention coefficients of each gate (gate 1 = full resolution), {ids.iloc[i]}",
            )

    robustness = {
        r.name: r.metrics["raw"]["dice_by_condition"]
        for r in results
        if "dice_by_condition" in r.metrics["raw"]
    }
    if robustness:
        report.image(
            save_figure(perturbation_figure(robustness), figures_dir / "intensity_test.png"),
            "Mean test Dice under each intensity perturbation of the raw images (no CRF)",
        )
    reader_dice = reader_table["dice"].tolist() if reader_table is not None else None
    report.image(
        save_figure(
            dice_distribution_figure(
                {r.name: r.per_image["raw"]["dice"].dropna().tolist() for r in results}, reader_dice
            ),
            figures_dir / "dice_distribution.png",
        ),
        "Per-image test Dice"
        + (" beside each radiologist's Dice against the others on the test nodules" if reader_dice else ""),
    )
    training = pd.DataFrame(
        {name: result["training"] for name, result in summary["models"].items()}
    ).T.rename_axis("model")
    curves = learning_curves(run_dir, config.training.steps_per_epoch, config.training.monitor)
    if curves is not None:
        report.image(curves, CAPTION)
    convergence_notes(report, run_dir)
    report.table(training, "Training (phases: epochs run, best epoch, best validation loss)")
    return report


def leaderboard_table(results: list, summary: dict) -> pd.DataFrame:
    """One row per model: parameters, validation and test Dice, test IoU, Dice on the readers' slices, epochs
    and training minutes, best validation Dice first."""
    rows = []
    for result in results:
        entry = summary["models"][result.name]
        raw, training = entry["raw"], entry.get("training", {})
        readers = raw.get("levels", {}).get("readers_slices", {})
        rows.append(
            {
                "model": result.name,
                "parameters": f"{result.model.count_params():,}",
                "validation Dice": entry.get("val_dice"),
                "test Dice": raw.get("dice"),
                "test IoU": raw.get("iou"),
                "test Dice, readers' slices": readers.get("dice"),
                "epochs": training.get("epochs_run"),
                # as text: the report's tables print numbers to three decimals
                "training minutes": f"{training['wall_seconds'] / 60:.1f}"
                if "wall_seconds" in training
                else None,
            }
        )
    table = pd.DataFrame(rows).sort_values("validation Dice", ascending=False, na_position="last")
    return table.set_index("model")


def loss_description(loss) -> str:
    if loss.name == "hybrid":
        return f"hybrid (lambda {loss.lam}, alpha {loss.alpha}, gamma {loss.gamma})"
    if loss.name == "structure":
        return (
            f"structure (weighted IoU + weighted BCE, pixel weights 1 + {loss.boundary_weight:g} x |avgpool"
            f"{loss.boundary_kernel}(mask) - mask|) on every side output, BCE on the mask's edges for the edge map"
        )
    return loss.name


def levels_table(summary: dict) -> pd.DataFrame:
    """Each model's test Dice (raw and with the CRF) on all slices, the readers' slices, per nodule, per patient."""
    rows = []
    for name, metrics in summary["models"].items():
        for kind in ("raw", "crf"):
            if kind not in metrics:
                continue
            block = metrics[kind]
            levels = {
                "all slices": {"dice": block["dice"], "n": block.get("n_images")},
                **block.get("levels", {}),
            }
            for level, values in levels.items():
                rows.append(
                    {
                        "model": name if kind == "raw" else f"{name} + CRF",
                        "level": level,
                        "dice": values.get("dice"),
                        "n": values.get("n"),
                    }
                )
    return pd.DataFrame(rows).set_index(["model", "level"])


def _model_input(image: np.ndarray, channels: int) -> np.ndarray:
    x = image[..., None].astype(np.float32)
    return np.repeat(x, channels, axis=-1) if channels > 1 else x
