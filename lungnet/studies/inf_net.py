"""The Inf-Net study (Fan et al., IEEE TMI 2020): Inf-Net and Semi-Inf-Net at a label budget, the plain
encoder-decoder baseline, the radiomics SVM baselines, and Inf-Net's evaluation set.

Per run: the training patients are cut by ``labels.fraction`` into labelled and unlabelled patients
(`lungnet.training.pseudo_labels`). Supervised models train on the labelled patients only. A model with
``semi`` is Semi-Inf-Net: it starts from the trained weights of ``start_from`` (or its own labelled
training), runs its pseudo-label rounds on the unlabelled patients (`lungnet.studies.semi_inf_net`) and a
final labelled fine-tuning. Every model is scored as the segmentation study scores them (Dice on all
slices and on the readers' slices, the readers' own agreement, CRF when enabled), plus S-measure, mean
E-measure, MAE, sensitivity, specificity and the slice detection accuracy
(`lungnet.evaluation.camouflage_metrics`). The radiomics SVMs (supervised on the labelled patients,
self-trained with the unlabelled ones) and size-only predict malignancy on the same test patients.
"""

from __future__ import annotations

from pathlib import Path

from lungnet.data.segmentation import prepare_segmentation_data
from lungnet.errors import LungnetError
from lungnet.evaluation.camouflage_metrics import (
    detection_accuracy,
    map_metrics,
    per_image_map_metrics,
    slice_detections,
)
from lungnet.evaluation.radiomics_baseline import radiomics_baselines
from lungnet.fileio import write_csv, write_json
from lungnet.postprocess.crf import require_crf
from lungnet.runs import save_config
from lungnet.studies.registry import Study, register_study
from lungnet.studies.segmentation import (
    build_study_segmenter,
    compile_segmentation,
    evaluate_segmentation_run,
    evaluate_segmenter,
    finish_study,
    predict_segmentation_run,
    segmentation_summary_line,
)
from lungnet.studies.semi_inf_net import native_masks, pseudo_label_rounds
from lungnet.training.fit import set_global_options, train_phase
from lungnet.training.multiscale import multiscale_training
from lungnet.training.pseudo_labels import split_label_budget

DETECTION_DEFINITION = (
    "per test slice: a slice with a nodule in its mask is detected when the predicted mask has at least "
    "min_area pixels, overlaps the truth, and reaches IoU >= min_iou; a slice without a nodule is a correct "
    "negative when the predicted mask has fewer than min_area pixels; accuracy = (detected + correct "
    "negatives) / slices"
)


def map_scores(masks, probs, config) -> dict:
    """Inf-Net's evaluation set of one model's maps: map metrics and the slice detection accuracy."""
    ev, threshold = config.evaluation, config.postprocess.threshold
    scores = map_metrics(per_image_map_metrics(masks, probs, threshold))
    slices = slice_detections(
        masks, probs, threshold, min_iou=ev.detection_min_iou, min_area=ev.detection_min_area
    )
    return {**scores, "detection": detection_accuracy(slices)}


def evaluate_inf_net_run(run_dir, source_spec: str, out=None, model_name=None, progress: bool = True) -> Path:
    """`lungnet evaluate` of an Inf-Net study run: the segmentation scores plus Inf-Net's evaluation set."""
    return evaluate_segmentation_run(
        run_dir,
        source_spec,
        out,
        model_name,
        progress,
        extra_scores=lambda masks, probs, config: ("inf_net", map_scores(masks, probs, config)),
    )


def label_budget_record(config, labelled, unlabelled) -> dict:
    return {
        "fraction": config.labels.fraction,
        "seed": config.labels.seed,
        "labelled_patients": int(labelled["patient_id"].nunique()),
        "labelled_images": int(len(labelled)),
        "unlabelled_patients": int(unlabelled["patient_id"].nunique()) if len(unlabelled) else 0,
        "unlabelled_images": int(len(unlabelled)),
    }


def run_inf_net_study(config, run_dir: Path, progress: bool = True) -> dict:
    """Train, evaluate and report every model of `config` into `run_dir`; returns the metrics summary."""
    from lungnet.reports.inf_net import write_inf_net_report

    if config.postprocess.crf.enabled:
        require_crf()  # before any training: a missing package must not cost a finished run
    save_config(run_dir, config)
    set_global_options(config.training)
    data = prepare_segmentation_data(config.data, progress=progress)
    labelled, unlabelled = split_label_budget(data.split("train"), config.labels)
    budget = label_budget_record(config, labelled, unlabelled)
    print(
        f"label budget {config.labels.fraction:.0%}: {budget['labelled_patients']} labelled patients "
        f"({budget['labelled_images']} images), {budget['unlabelled_patients']} unlabelled "
        f"({budget['unlabelled_images']} images, masks hidden)"
    )
    labelled_train = data.pipeline(labelled, training=True)
    compile_fn = compile_segmentation(config.loss)
    trained, results, rounds, skipped = {}, [], {}, {}
    for spec in config.models:
        if spec.semi is not None and unlabelled.empty:
            skipped[spec.name] = (
                "no unlabelled patients at this label budget: Semi-Inf-Net has nothing to add"
            )
            print(f"{spec.name}: skipped ({skipped[spec.name]})")
            continue
        model = build_study_segmenter(spec.model, config, data)
        phase_summary = None
        if spec.start_from is not None:
            model.set_weights(trained[spec.start_from].get_weights())
        else:
            fit_model, batches = multiscale_training(
                model, labelled_train, spec.multiscale_rates, data.preprocess.image_size
            )
            phase_summary = train_phase(
                fit_model,
                batches,
                data.val,
                run_dir=run_dir,
                phase=spec.name if spec.semi is None else f"{spec.name}_labelled",
                epochs=config.training.epochs,
                learning_rate=config.training.learning_rate,
                config=config.training,
                compile_fn=compile_fn,
            )
        summary = phase_summary or {"started_from": spec.start_from}
        if spec.semi is not None:
            semi_summary, rounds[spec.name] = pseudo_label_rounds(
                spec, model, config, data, labelled, unlabelled, run_dir, progress
            )
            summary = {
                **semi_summary,
                "started_from": spec.start_from,
                "labelled_epochs": phase_summary["epochs_run"] if phase_summary else None,
            }
        trained[spec.name] = model
        result = evaluate_segmenter(spec.name, model, summary, config, data, run_dir, progress)
        result.metrics["inf_net"] = map_scores(result.test.masks, result.test.probs, config)
        print(
            f"{spec.name}: validation Dice {result.val_dice:.3f}, test Dice {result.metrics['raw']['dice']:.3f}, "
            f"S-measure {result.metrics['inf_net']['s_measure']:.3f}"
        )
        results.append(result)
    if not results:
        raise LungnetError(f"no model was trained: {skipped}")
    selected, summary, reader_table = finish_study(config, data, results, run_dir, progress)
    summary.update(
        label_budget=budget,
        skipped=skipped,
        semi_rounds={name: table.to_dict("records") for name, table in rounds.items()},
        definitions={**summary["definitions"], "detection_accuracy": DETECTION_DEFINITION},
    )
    if config.baselines.radiomics.enabled:
        test = data.split("test")
        predicted = native_masks(selected.test.probs, test, data.preprocess, config.postprocess.threshold)
        summary["radiomics"] = radiomics_baselines(
            labelled,
            unlabelled,
            test,
            config.baselines.radiomics,
            predicted_masks=predicted,
            progress=progress,
        )
        summary["radiomics"]["predicted_masks_from"] = selected.name
    write_json(run_dir / "metrics.json", summary)
    for name, table in rounds.items():
        write_csv(run_dir / f"semi_rounds_{name}.csv", table)
    write_inf_net_report(run_dir, config, data, results, selected, summary, reader_table, rounds, trained)
    return summary


def inf_net_summary_line(summary: dict) -> str:
    budget = summary.get("label_budget") or {}
    share = f" at a {budget['fraction']:.0%} label budget" if budget else ""
    return segmentation_summary_line(summary) + share


register_study(
    Study(
        task="inf_net",
        run=run_inf_net_study,
        evaluate=evaluate_inf_net_run,
        summary_line=inf_net_summary_line,
        predict=predict_segmentation_run,
    )
)
