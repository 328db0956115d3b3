"""The classification study's report: published numbers beside ours, each labelled with its data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungnet.evaluation import Calibration, fit_calibration, metric_definitions
from lungnet.evaluation import figures as evaluation_figures
from lungnet.evaluation.figures import save_figure
from lungnet.evaluation.measured_nodule import MEASURED_ROW
from lungnet.evaluation.recommended import CRITERION, candidates, recommended_name
from lungnet.reports.html import HtmlReport
from lungnet.reports.training import CAPTION, convergence_notes, learning_curves, run_note

PHANTOM_CAVEAT = (
    "These results come from lidc-phantom, a phantom rendered from real LIDC-IDRI annotations: the contours, "
    "ratings and patient ids are the radiologists' own, the pixels are synthetic. They show how the methods "
    "behave on real nodule shapes and label statistics, not how they perform on real CT."
)
AGAINST_CAPTION = (
    "Against the diameter (size-only baseline, fitted on the run's training split) on the same patients: "
    "the difference and its 95 % interval from {samples} patient-bootstrap resamples"
)
OUT_OF_FOLD_CAPTION = (
    "Out of fold, on every patient in the fold ensemble's folds (the training patients, and the validation "
    "patients where the folds pool them): each slice predicted by the one fold-ensemble "
    "member that never saw its patient (one member, not the ensemble's mean; each member's epoch was chosen "
    "on its own fold, which flatters it a little), against the size-only baseline cross-fitted over the same "
    "patient folds; 95 % intervals from {samples} patient-bootstrap resamples. The image-only rows' held-out "
    "predictions: the measured classifier's on training patients cross-fitted over them (its segmenter was "
    "trained on those patients, which can flatter it: its Dice per split is below), on validation patients "
    "from its fit on the training split"
)
METRIC_COLUMNS = ("f1", "f1_macro", "auc", "accuracy", "precision", "recall")


def _split_table(data) -> pd.DataFrame:
    table = data.manifest.pivot_table(
        index="split", columns="class_name", values="patient_id", aggfunc="count"
    )
    table = table.reindex(["train", "val", "test"]).fillna(0).astype(int)
    table["patients"] = data.manifest.groupby("split")["patient_id"].nunique().reindex(table.index)
    table.loc["train (after oversampling)"] = [
        *(int((data.train_manifest["class_name"] == c).sum()) for c in table.columns[:-1]),
        table.loc["train", "patients"],
    ]
    table.index.name = "split"
    return table


def comparison_table(summary: dict, config, data_label: str) -> pd.DataFrame:
    rows = []
    for name, result in summary["models"].items():
        test = result["test"]
        rows.append(
            {
                "model": name,
                "data": data_label,
                "published F1 (%)": config.published.get(name),
                **{m: test.get(m) for m in METRIC_COLUMNS},
            }
        )
    extra = {f"image-only: {k}": v for k, v in summary.get("image_only", {}).items()}
    extra.update({f"baseline: {k}": v for k, v in summary["baselines"].items()})
    for name, metrics in extra.items():
        rows.append(
            {
                "model": name,
                "data": data_label,
                "published F1 (%)": None,
                **{m: metrics.get(m) for m in METRIC_COLUMNS},
            }
        )
    return pd.DataFrame(rows).set_index("model")


def levels_table(summary: dict) -> pd.DataFrame:
    """The selected model and the size-only baseline at slice, nodule and patient level (test split)."""
    rows = []
    selected = summary["models"][summary["selected_model"]]["test"]
    sources = {summary["selected_model"]: {"slice": selected, **summary.get("levels", {})}}
    for name, result in summary.get("image_only", {}).items():
        sources[f"image-only: {name}"] = {"slice": result, **result.get("levels", {})}
    size = summary["baselines"].get("size_only")
    if size:
        sources["baseline: size_only"] = {"slice": size, **size.get("levels", {})}
    for model, levels in sources.items():
        for level, metrics in levels.items():
            rows.append(
                {
                    "model": model,
                    "level": level,
                    "n": metrics.get("n"),
                    "f1_macro": metrics.get("f1_macro"),
                    "auc": metrics.get("auc"),
                    "accuracy": metrics.get("accuracy"),
                }
            )
    return pd.DataFrame(rows).set_index(["model", "level"])


def recommended_table(summary: dict) -> pd.DataFrame:
    """Each image-only candidate's validation F1 (what ranks them) beside its test AUC and macro F1 at
    every level and its test ECE after calibration; the recommended one marked."""
    chosen = recommended_name(summary)
    rows = []
    for name, record in candidates(summary).items():
        row = {
            "model": name,
            "recommended": "yes" if name == chosen else "",
            "validation F1": record.get("val", {}).get("f1"),
        }
        for level, scores in {"slice": record, **record.get("levels", {})}.items():
            row[f"{level} AUC"] = scores.get("auc")
            row[f"{level} macro F1"] = scores.get("f1_macro")
        row["ECE after calibration"] = (record.get("calibration") or {}).get("ece_after")
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def against_size_only_rows(summary: dict, model: str) -> dict[str, dict | None]:
    """``{row: comparison}`` for `model` and each image-only row of a classification `summary`."""
    rows = {model: summary.get("against_size_only")}
    for name, result in summary.get("image_only", {}).items():
        rows[f"image-only: {name}"] = result.get("against_size_only")
    return rows


def against_size_only_table(
    comparisons: dict[str, dict | None], reference: str = "size-only"
) -> pd.DataFrame | None:
    """Each row's AUC and macro F1 minus the size-only baseline's (or another `reference` model's, as each
    comparison's ``b``), with their bootstrap intervals."""
    rows = []
    for model, comparison in comparisons.items():
        for level in ("slice", "nodule", "patient"):
            if not comparison or level not in comparison:
                continue
            row = {"model": model, "level": level, "patients": comparison[level]["n_patients"]}
            for metric in ("auc", "f1_macro"):
                entry = comparison[level][metric]
                row[f"{metric}"] = entry["a"]
                row[f"{metric} {reference}"] = entry["b"]
                interval = "" if entry["ci95"] is None else " ({:+.3f} .. {:+.3f})".format(*entry["ci95"])
                row[f"{metric} difference (95 % CI)"] = (
                    "n/a" if entry["difference"] is None else f"{entry['difference']:+.3f}{interval}"
                )
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "level"]) if rows else None


def measured_segmenter_sentence(segmenter: dict) -> str:
    """The measured-nodule classifier's segmenter against the readers, per split: whether the training
    rows it was fitted on had sharper masks than the test's."""
    dice = segmenter["dice_by_split"]
    said = [
        f"{label} {dice[split]['dice_mean']:.3f} ({dice[split]['slices']} slices)"
        for split, label in (("train", "training patients"), ("val", "validation"), ("test", "test"))
        if dice.get(split, {}).get("slices")
    ]
    return (
        f"The measured-nodule classifier's segmenter ({segmenter['run']}) against the readers' outlines, Dice "
        f"on each image's own pixels: {', '.join(said)}. It trained on the training patients, so its "
        "classifier was fitted on their masks as that segmenter drew them: a training Dice well above the "
        "test's would mean sharper masks in training than at test."
    )


def write_report(
    run_dir: Path, config, data, results: dict, selected, summary: dict, explanations: dict
) -> Path:
    names = data.class_names
    figures_dir = run_dir / "figures"
    y_val = data.split("val")["target"].to_numpy()
    y_test = data.split("test")["target"].to_numpy()
    data_label = "lidc-phantom" if data.source.is_phantom else data.source.spec
    report = HtmlReport(f"{config.name}: nodule malignancy classification")
    if data.source.is_phantom:
        report.note(PHANTOM_CAVEAT)
    report.paragraph(
        f"Data: {data.source.description}. Label grouping '{config.data.grouping}', view '{config.data.view}', "
        f"{config.data.split_level}-level split {list(config.data.split)} (seed {config.data.split_seed}). "
        f"Profile: {config.profile}."
    )
    note = run_note(run_dir)
    if note:
        report.paragraph(note, css="small")
    report.table(_split_table(data), "Samples per split and class")

    report.heading("Published numbers beside ours")
    report.paragraph(
        f"Published F1 is from {config.published_source or 'the original study'}, on its own test set. Ours are "
        f"on the test split of {data_label} ({summary['n_test']} samples). Selected model: "
        f"{selected.name} ({summary['selection']})."
    )
    report.table(comparison_table(summary, config, data_label))
    report.table(levels_table(summary))
    if summary.get("image_only"):
        report.table(
            recommended_table(summary),
            f"Recommended model: the {CRITERION} (test scores beside it)",
        )
    against = against_size_only_table(against_size_only_rows(summary, summary["selected_model"]))
    if against is not None:
        report.table(against, AGAINST_CAPTION.format(samples=summary["against_size_only"]["samples"]))
    records = {
        **summary["models"],
        **{f"image-only: {k}": v for k, v in summary.get("image_only", {}).items()},
    }
    out_of_fold = {
        name: record["out_of_fold_against_size_only"]
        for name, record in records.items()
        if record.get("out_of_fold_against_size_only")
    }
    if out_of_fold:
        samples = next(iter(out_of_fold.values()))["samples"]
        report.table(against_size_only_table(out_of_fold), OUT_OF_FOLD_CAPTION.format(samples=samples))
    segmenter = summary.get("image_only", {}).get(MEASURED_ROW, {}).get("segmenter", {})
    if segmenter.get("dice_by_split"):
        report.paragraph(measured_segmenter_sentence(segmenter))
    report.paragraph(
        "Slice level is every test image; nodule level averages a nodule's slice probabilities; patient level "
        "takes the highest nodule probability of malignancy (binary) or the mean over nodules."
    )
    thresholds = {
        name: {
            "threshold": r["threshold_from_val"]["threshold"],
            # a fold ensemble's comes from its out-of-fold predictions
            "chosen on": r["threshold_from_val"].get("chosen_on", "validation"),
            **{m: r["threshold_from_val"]["test"].get(m) for m in ("f1", "f1_macro", "precision", "recall")},
        }
        for name, r in summary["models"].items()
        if r.get("threshold_from_val")
    }
    if thresholds:
        report.table(
            pd.DataFrame(thresholds).T,
            "Beside the study's 0.5 threshold: test metrics at the threshold that maximises F1 on held-out "
            "predictions (the validation split's, or a fold ensemble's out-of-fold ones)",
        )
    for name, why in summary.get("skipped_models", {}).items():
        report.note(f"{name}: {why}")
    report.table(
        pd.DataFrame.from_dict(metric_definitions(len(names)), orient="index", columns=["definition"]),
        "Metric definitions",
    )
    results_for_figure = {name: r.test_metrics for name, r in results.items()}
    results_for_figure.update({f"baseline: {k}": v for k, v in summary["baselines"].items()})
    fig = evaluation_figures.metric_comparison_figure(
        results_for_figure,
        published={k: v / 100 for k, v in config.published.items()},
        baselines=[f"baseline: {k}" for k in summary["baselines"]],
    )
    report.image(
        save_figure(fig, figures_dir / "metrics.png"),
        "Test metrics per model; black diamonds: published F1 (their data)",
    )

    report.heading(f"Selected model: {selected.name}")
    fig = evaluation_figures.confusion_matrix_figure(selected.test_metrics["confusion_matrix"], names)
    report.image(save_figure(fig, figures_dir / "confusion_matrix.png"), "Confusion matrix on the test split")
    fig = evaluation_figures.roc_figure(y_test, {n: r.test_probs for n, r in results.items()}, names)
    report.image(save_figure(fig, figures_dir / "roc.png"), "ROC curves on the test split")

    report.heading("Confidence and calibration")
    # the calibration evaluate_model fitted and scored, refitted only where the run turned it off
    calibration = Calibration.from_dict(selected.calibration) or fit_calibration(
        selected.val_probs, y_val, data.split("train")["target"].to_numpy()
    )
    fig = evaluation_figures.reliability_figure(
        y_test, selected.test_probs, calibration.apply(selected.test_probs), label=calibration.describe()
    )
    report.image(
        save_figure(fig, figures_dir / "reliability.png"),
        f"Reliability diagram before and after calibration ({calibration.describe()}, fitted on"
        f" {calibration.fitted_on};"
        " the prior correction is used when it lowers validation NLL, see Metric definitions)",
    )
    fig = evaluation_figures.confidence_histogram_figure(y_test, selected.test_probs, names)
    report.image(
        save_figure(fig, figures_dir / "confidence.png"), "Predicted-label confidence, correct vs wrong"
    )
    fig = evaluation_figures.class_probability_figure(y_test, selected.test_probs, names)
    report.image(
        save_figure(fig, figures_dir / "class_probabilities.png"),
        "Predicted probability of each class, by true class",
    )
    calibration_rows = {n: r.calibration for n, r in results.items() if r.calibration}
    calibration_rows.update(
        {f"image-only: {n}": r["calibration"] for n, r in summary.get("image_only", {}).items()}
    )
    if calibration_rows:
        report.table(
            pd.DataFrame(calibration_rows).T,
            "Calibration per model (fitted_on: the held-out predictions it was fitted on; test-split ECE)",
        )
    tta_rows = {
        f"{n} ({k})": {m: v.get(m) for m in METRIC_COLUMNS}
        for n, r in results.items()
        if r.tta
        for k, v in r.tta.items()
    }
    if tta_rows:
        report.table(
            pd.DataFrame(tta_rows).T,
            "Test-time augmentation (5 transforms: identity, 2 flips, 2 quarter turns)",
        )

    if explanations:
        report.heading("Explanations")
        for path, caption in explanations.values():
            report.image(path, caption)

    report.heading("Training")
    curves = learning_curves(run_dir, config.training.steps_per_epoch, config.training.monitor)
    if curves is not None:
        report.image(curves, CAPTION)
    convergence_notes(report, run_dir)
    report.table(phase_table(results), "Per phase (logs/ holds the curves); an ensemble has a row per member")
    return report.save(run_dir / "report.html")


def phase_table(results: dict) -> pd.DataFrame:
    """One row per trained phase: an ensemble's members get their own rows under the ensemble's."""
    rows = {}
    for name, result in results.items():
        training = dict(result.training)
        members = training.pop("members", None)
        rows[name] = training
        for i, member in enumerate(members or [], start=1):
            rows[f"{name} member {i}"] = member
    return pd.DataFrame(rows).T
