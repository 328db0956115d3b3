"""The nodule-fusion study's report: models against the diameter per slice / nodule / patient, on the
segmenter's masks and the readers', the segmenter's agreement, learning curves, ROC, calibration and the
seven channels the network reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungnet.evaluation.calibration import Calibration
from lungnet.evaluation.figures import (
    _figure,
    confusion_matrix_figure,
    reliability_figure,
    roc_figure,
    save_figure,
)
from lungnet.models.contract import INPUT_NAME
from lungnet.models.layers.nodule_channels import CHANNEL_NAMES, NoduleChannels
from lungnet.reports.classification import PHANTOM_CAVEAT, against_size_only_table
from lungnet.reports.html import HtmlReport
from lungnet.reports.training import CAPTION, convergence_notes, learning_curves, run_note

LEVELS = ("slice", "nodule", "patient")
OUTLINES_FIGURE = "outlines.png"  # a few slices with the segmenter's outline (evaluate and predict)


def _row(metrics: dict) -> dict:
    levels = metrics.get("levels") or {}
    row = {"slice AUC": metrics.get("auc"), "slice macro F1": metrics.get("f1_macro")}
    for level in LEVELS[1:]:
        scores = levels.get(level) or {}
        row[f"{level} AUC"] = scores.get("auc")
        row[f"{level} macro F1"] = scores.get("f1_macro")
    return row


def _mask_rows(name: str, metrics: dict) -> dict:
    """A model's row on the segmenter's masks and, where scored, on the readers' outlines."""
    rows = {f"{name} (segmenter's masks: image-only)": _row(metrics)}
    if metrics.get("with_readers_masks"):  # on the slices the readers outlined
        rows[f"{name} (readers' masks: reference)"] = _row(metrics["with_readers_masks"])
    return rows


def results_table(summary: dict) -> pd.DataFrame:
    """One row per model and mask kind, and the diameter's row, on the test split."""
    rows = {}
    for name, metrics in summary["models"].items():
        rows.update(_mask_rows(name, metrics))
    size = summary["baselines"].get("size_only")
    if size is not None:
        rows["diameter (the readers' measurement)"] = _row(size)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model (test split)"
    return table


def channels_figure(batch: dict, rows: int = 3, ring_px: int = 4, proximity_px: int = 16):
    """The seven channels of the first `rows` test slices, with each kind of mask in `batch` (the readers'
    and the segmenter's), as a network with these `ring_px` and `proximity_px` reads them."""
    kinds = len(batch["masks"])
    fig = _figure(1.6 * len(CHANNEL_NAMES), 1.7 * rows * kinds)
    axes = fig.subplots(rows * kinds, len(CHANNEL_NAMES), squeeze=False)
    layer = NoduleChannels(ring_px, proximity_px)
    for r in range(rows):
        for k, (kind, masks) in enumerate(batch["masks"].items()):
            channels = np.asarray(layer([batch[INPUT_NAME][r : r + 1], masks[r : r + 1]]))[0]
            for c, name in enumerate(CHANNEL_NAMES):
                ax = axes[kinds * r + k, c]
                ax.imshow(channels[..., c], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and k == 0:
                    ax.set_title(name, fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"slice {r + 1}\n{kind}", fontsize=7)
    return fig


def _channel_settings(config, summary: dict) -> tuple[int, int]:
    """The selected model's ``ring_px`` and ``proximity_px`` (the channels it reads)."""
    model = next(m.model for m in config.models if m.name == summary["selected_model"])
    return model.ring_px, model.proximity_px


def write_fusion_report(run_dir, config, data, results, summary, channel_batch: dict, size_probs) -> Path:
    """`channel_batch`: a few test slices' ``image`` and their ``masks`` by kind (the channels figure)."""
    run_dir = Path(run_dir)
    figures = run_dir / "figures"
    report = HtmlReport(f"Nodule fusion: {config.name}")
    report.paragraph(
        f"Data: {summary['data']}; grouping {summary['grouping']}; test split: {summary['n_test']} slices. "
        f"Selected model: {summary['selected_model']} ({summary['selection']})."
    )
    if data.source.is_phantom:
        report.note(PHANTOM_CAVEAT)
    note = run_note(run_dir)
    if note:
        report.paragraph(note, css="small")
    report.note(
        "Image-only rows read the slice and the mask the run's segmenter drew (trained on the training "
        "patients only); the readers' rows read the readers' consensus outline, which a new patient does not "
        "have: a reference, not a result. The diameter is the readers' own measurement."
    )
    report.heading("Test split: models and the diameter")
    report.table(results_table(summary))
    paired = against_size_only_table(
        {f"{name} (image-only)": m.get("against_size_only") for name, m in summary["models"].items()}
    )
    if paired is not None:
        report.table(
            paired,
            "Each image-only model against the diameter on the same test patients (patient bootstrap).",
        )
    for pair in summary.get("pairs", []):
        table = against_size_only_table({pair["a"]: pair}, reference=pair["b"])
        if table is not None:
            caption = f"{pair['a']} against {pair['b']}, both on the segmenter's masks (patient bootstrap)."
            report.table(table, caption)
    seg = summary["segmenter"]
    report.heading("The segmenter's masks")
    if seg["slices"]:
        inside = seg["dice_mean_outline_in_view"]
        report.paragraph(
            f"{seg['recipe']} (run folder {seg['run']}). Dice against the readers' outlines on the "
            f"{seg['slices']} test slices that have one, as the classifier sees both: {seg['dice_mean']:.3f} "
            + (
                f"({inside:.3f} where the outline lies in the classifier's view); "
                if inside is not None
                else "; "
            )
            + f"{seg['slices_without_predicted_mask']} slices without a predicted mask."
        )
        seen = (seg.get("by_split") or {}).get("train") or {}
        if seen.get("slices"):
            held_out = seg["by_split"]["val"]
            validation = f", on validation {held_out['dice_mean']:.3f}" if held_out.get("slices") else ""
            if seg.get("fold_runs"):
                said = (
                    f"The training patients' masks are cross-fitted ({len(seg['fold_runs'])} segmenters, "
                    f"each trained without one fold of them: {', '.join(seg['fold_runs'])}): Dice "
                    f"{seen['dice_mean']:.3f} on their {seen['slices']} slices{validation}, drawn as a new "
                    "patient's are."
                )
            else:
                said = (
                    f"On the training patients, which the segmenter trained on, its masks have Dice "
                    f"{seen['dice_mean']:.3f} ({seen['slices']} slices){validation}, against the test's "
                    f"{seg['dice_mean']:.3f}: the segmenter's-mask phase trains on masks this good. Where the "
                    "training Dice is well above the test's, `segmenter.cross_fit_folds` draws them as a new "
                    "patient's are."
                )
            report.paragraph(said)
    else:
        report.paragraph(f"{seg['recipe']} (run folder {seg['run']}); no test slice has a readers' outline.")
    test = data.split("test")
    y_test = test["target"].to_numpy()
    probs = {f"{name} (image-only)": r["test_probs"] for name, r in results.items()}
    if size_probs is not None:
        probs["diameter"] = size_probs
    report.image(
        save_figure(roc_figure(y_test, probs, data.class_names), figures / "roc.png"), "ROC, test split"
    )
    chosen = summary["models"][summary["selected_model"]]
    calibration = Calibration.from_dict(chosen["calibration"])
    calibrated = calibration.apply(results[summary["selected_model"]]["test_probs"])
    figure = reliability_figure(
        y_test, results[summary["selected_model"]]["test_probs"], calibrated, label=calibration.describe()
    )
    report.image(save_figure(figure, figures / "reliability.png"), "Calibration of the selected model")
    curves = learning_curves(run_dir, config.training.steps_per_epoch, config.training.monitor)
    if curves is not None:
        report.heading("Learning curves")
        report.image(curves, CAPTION)
        convergence_notes(report, run_dir)
    report.heading("What the network reads: seven channels")
    batch = channel_batch
    rows = min(3, len(batch[INPUT_NAME]))
    report.image(
        save_figure(
            channels_figure(batch, rows, *_channel_settings(config, summary)), figures / "channels.png"
        ),
        "ct, mask, nodule (ct inside the mask), surround (a ring outside it), edges (Sobel), texture (local "
        "standard deviation), proximity to the outline; per slice, with the readers' mask and the segmenter's.",
    )
    return report.save(run_dir / "report.html")


def outlines_figure(examples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]):
    """Each ``(image, segmenter's mask, readers' mask or None)`` on its own pixels: the segmenter's outline
    in orange, the readers' in cyan."""
    fig = _figure(2.2 * len(examples), 2.4)
    axes = fig.subplots(1, len(examples), squeeze=False)[0]
    for ax, (image, predicted, readers) in zip(axes, examples, strict=True):
        ax.imshow(image, cmap="gray")
        for mask, colour in ((predicted, "tab:orange"), (readers, "cyan")):
            if mask is not None and mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def write_fusion_evaluation_report(
    out: Path, title: str, summary: dict, y, probs, size_probs, names, examples
) -> Path:
    """The report of `lungnet evaluate` on a fusion run: `summary` its metrics.json, `probs` the image-only
    probabilities of every slice, `examples` a few slices with their masks (`outlines_figure`)."""
    out = Path(out)
    report = HtmlReport(title)
    report.paragraph(
        f"Data: {summary['data']}; every sample ({summary['n']} slices), grouping '{summary['grouping']}'."
    )
    report.note(
        "Image-only rows read each slice and the mask the run's segmenter drew on it; the readers' rows read "
        "this set's own outlines where it has them (a reference a new patient does not have). The diameter is "
        "the run's own fit (on its training split) applied to this set's diameters."
    )
    rows = _mask_rows(summary["model"], summary)
    size = summary["baselines"]["size_only"]
    if "skipped" in size:
        report.note(f"The diameter is not scored: {size['skipped']}.")
    else:
        rows["diameter (the run's fit)"] = _row(size)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model (this set)"
    report.table(table)
    paired = against_size_only_table({f"{summary['model']} (image-only)": summary.get("against_size_only")})
    if paired is not None:
        report.table(paired, "Against the diameter on the same patients (patient bootstrap).")
    calibration = summary.get("calibration")
    if calibration:
        keys = ("ece_before", "ece_before_ci95", "ece_after", "ece_after_ci95", "temperature", "fitted_on")
        report.table(
            pd.DataFrame({k: [calibration.get(k)] for k in keys}, index=[summary["model"]]),
            "Slice-level ECE before and after the run's calibration (fitted on the run's own held-out "
            "predictions, never on this set)",
        )
    curves = {f"{summary['model']} (image-only)": probs}
    if size_probs is not None:
        curves["diameter"] = size_probs
    report.image(save_figure(roc_figure(y, curves, names), out / "roc.png"), "ROC, every slice of this set")
    report.image(
        save_figure(
            confusion_matrix_figure(summary["confusion_matrix"], names), out / "confusion_matrix.png"
        ),
        "Confusion matrix (image-only, at 0.5)",
    )
    seg = summary.get("segmenter")
    if seg:
        report.paragraph(
            f"The run's segmenter on this set's {seg['slices']} outlined slices: Dice {seg['dice_mean']:.3f} "
            "against their outlines, on each image's own pixels."
        )
    if examples:
        report.image(
            save_figure(outlines_figure(examples), out / OUTLINES_FIGURE),
            "The first slices of this set: the segmenter's outline (orange), which the classifier read, and "
            "the readers' (cyan) where the set has one.",
        )
    return report.save(out / "report.html")
