"""The Inf-Net study's report: the segmentation report's sections, then the label budget, Inf-Net's
evaluation set, Semi-Inf-Net's rounds, side outputs and reverse-attention maps, and the radiomics baselines."""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lungnet.evaluation.figures import save_figure
from lungnet.evaluation.segmentation_figures import attention_maps_figure
from lungnet.models.contract import EDGE_OUTPUT
from lungnet.models.segmenters.inf_net import GLOBAL_OUTPUT, RA_STAGES
from lungnet.reports.segmentation import _model_input, sample_rows, segmentation_report

MAP_COLUMNS = (
    ("dice", "Dice"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("s_measure", "S-measure"),
    ("e_measure", "Mean E-measure"),
    ("mae", "MAE"),
)
SIDE_MAPS = (
    (GLOBAL_OUTPUT, "global (PPD)"),
    *((s[1], f"RA on {s[0]}") for s in RA_STAGES),
    (EDGE_OUTPUT, "edge"),
)


def map_table(summary: dict, published: dict) -> pd.DataFrame:
    rows = {
        f"{name} (published)": {label: values.get(key) for key, label in MAP_COLUMNS}
        for name, values in published.items()
    }
    for name, metrics in summary["models"].items():
        scores = metrics["inf_net"]
        detection = scores["detection"]
        rows[f"{name} (ours)"] = {
            **{label: scores.get(key) for key, label in MAP_COLUMNS},
            "Detection accuracy": detection["accuracy"],
            "accuracy covers": detection["accuracy_covers"],
        }
    return pd.DataFrame(rows).T.rename_axis("model")


def side_output_maps(model: keras.Model, image: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Every probability map an Inf-Net model outputs for one preprocessed image, deepest supervision first."""
    outputs = model(image[None], training=False)
    if not isinstance(outputs, dict):
        return [], []
    present = [(key, label) for key, label in SIDE_MAPS if key in outputs]
    return [np.asarray(outputs[key])[0, ..., 0] for key, _ in present], [label for _, label in present]


def reverse_attention_maps(model: keras.Model, image: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """The reverse-attention weights ``1 - sigmoid(previous map)`` each RA module applies to its stage."""
    names = [f"ra{stage[0][1:]}_previous" for stage in RA_STAGES]
    try:
        layers = [model.get_layer(n) for n in names]
    except ValueError:
        return [], []
    probe = keras.Model(model.input, [layer.output for layer in layers])
    logits = probe(image[None], training=False)
    maps = [1.0 - 1.0 / (1.0 + np.exp(-np.asarray(x)[0, ..., 0])) for x in logits]
    return maps, [f"1 - sigmoid(input of RA on {stage[0]})" for stage in RA_STAGES]


def rounds_figure(rounds: dict[str, pd.DataFrame]):
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, table in rounds.items():
        left.plot(table["round"], table["kept"], marker="o", label=f"{name}: kept")
        left.plot(table["round"], table["group_images"], ls="--", color="grey", label="offered")
        right.plot(table["round"], table["kept_dice_vs_hidden"], marker="o", label=f"{name}: kept")
        right.plot(table["round"], table["all_dice_vs_hidden"], marker="x", ls=":", label=f"{name}: all")
    left.set(xlabel="round", ylabel="pseudo-labels", title="Pseudo-labels per round")
    right.set(xlabel="round", ylabel="Dice", title="Agreement with the hidden masks", ylim=(0, 1))
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def radiomics_table(radiomics: dict) -> pd.DataFrame:
    rows = {}
    for name, scores in radiomics["models"].items():
        nodule = scores.get("levels", {}).get("nodule", {})
        rows[name] = {
            "AUC": scores.get("auc"),
            "macro F1": scores.get("f1_macro"),
            "F1 (malignant)": scores.get("f1"),
            "accuracy": scores.get("accuracy"),
            "nodule AUC": nodule.get("auc"),
            "nodule macro F1": nodule.get("f1_macro"),
        }
    return pd.DataFrame(rows).T.rename_axis("model (test slices)")


def write_inf_net_report(
    run_dir, config, data, results, selected, summary, reader_table, rounds, trained
) -> Path:
    run_dir = Path(run_dir)
    figures_dir = run_dir / "figures"
    report = segmentation_report(
        run_dir, config, data, results, selected, summary, reader_table, title="Inf-Net and Semi-Inf-Net"
    )
    budget = summary["label_budget"]
    report.heading("Label budget")
    report.paragraph(
        f"{budget['fraction']:.0%} of the training patients labelled (seed {budget['seed']}): "
        f"{budget['labelled_patients']} patients, {budget['labelled_images']} images. Unlabelled: "
        f"{budget['unlabelled_patients']} patients, {budget['unlabelled_images']} images, their masks hidden "
        "from training (used only to report the pseudo-labels' agreement). Validation and test are untouched."
    )
    for name, reason in summary.get("skipped", {}).items():
        report.paragraph(f"{name}: not trained: {reason}.", css="small")

    report.heading("Inf-Net's evaluation set")
    report.table(
        map_table(summary, config.published),
        f"Published: {config.published_source}. Ours: the test split, thresholded at "
        f"{config.postprocess.threshold} (no CRF).",
    )
    report.paragraph(f"Detection accuracy: {summary['definitions']['detection_accuracy']}.", css="small")

    if rounds:
        report.heading("Semi-Inf-Net: pseudo-label rounds")
        for name, table in rounds.items():
            semi = next(s.semi for s in config.models if s.name == name)
            report.paragraph(
                f"{name}: groups of {semi.group_size} unlabelled images, confidence threshold "
                f"{semi.confidence_threshold:g} (mean probability over the predicted nodule pixels), "
                f"{semi.epochs_per_round} epoch(s) per round, {semi.final_epochs} final epoch(s) on the "
                "labelled patients."
            )
            report.table(table.set_index("round"), f"{name}: every round")
        report.image(
            save_figure(rounds_figure(rounds), figures_dir / "semi_rounds.png"), "Pseudo-label rounds"
        )

    rows = sample_rows(selected.test.masks, 2)
    for result in results:
        model = trained.get(result.name)
        if model is None:
            continue
        for k, i in enumerate(rows):
            image = _model_input(result.test.images[i], data.preprocess.channels)
            for kind, (maps, names) in (
                ("side_outputs", side_output_maps(model, image)),
                ("reverse_attention", reverse_attention_maps(model, image)),
            ):
                if not maps:
                    continue
                path = figures_dir / f"{kind}_{result.name}_{k}.png"
                what = "probability" if kind == "side_outputs" else "reverse-attention weight"
                figure = attention_maps_figure(
                    result.test.images[i], maps, names, mask=result.test.masks[i], what=what
                )
                caption = (
                    "every supervised output (probabilities)"
                    if kind == "side_outputs"
                    else "reverse-attention weights: where each RA module looks (outside the map it was given)"
                )
                report.image(save_figure(figure, path), f"{result.name}, test image {i}: {caption}")

    radiomics = summary.get("radiomics")
    if radiomics:
        report.heading("Hand-crafted baselines: radiomics SVM and size-only (malignancy)")
        report.paragraph(
            f"Malignancy, grouping '{radiomics['grouping']}'. Features of each slice inside its mask: first-order "
            "intensity statistics, shape and a masked GLCM (scikit-image). Training: the labelled patients' "
            f"slices ({radiomics['n_train_labelled']}) with their labels; self-training adds the unlabelled "
            f"patients' slices ({radiomics['n_train_unlabelled']}) without labels. Test: "
            f"{radiomics['n_test']} slices, described inside the consensus mask and inside the predicted mask of "
            f"{radiomics['predicted_masks_from']}. Slices that could not be described (an empty predicted "
            f"mask): {radiomics['n_problems']}."
        )
        report.table(radiomics_table(radiomics))
    return report.save(run_dir / "report.html")
