"""The segmentation study: U-Net vs attention residual U-Net, hybrid Dice + Focal loss, dense-CRF post-processing.

Per model: train with the experiment's loss (Adam), predict the validation and test splits, and evaluate the
test split twice, on the thresholded probabilities and after the fully connected CRF: Dice, IoU, precision,
sensitivity, F-score, accuracy, small-tumour recall, and the intensity test (the std of mean Dice over a
fixed set of brightness / contrast / noise perturbations of the raw test images). The model with the best
validation Dice is the run's selected model (exported). For LIDC-derived sources the radiologists' own
agreement on the same test nodules is computed as the human reference.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from lungnet.data.pipelines import data_errors
from lungnet.data.segmentation import PreparedSegmentationData, detect_intensity, prepare_segmentation_data
from lungnet.errors import DataError, LungnetError
from lungnet.evaluation.paired import READERS_SLICE
from lungnet.evaluation.perturbations import (
    DEFAULT_PERTURBATIONS,
    Perturbation,
    intensity_std,
    perturb_image,
    value_range_for,
)
from lungnet.evaluation.segmentation import (
    aggregate_metrics,
    binarize,
    lesion_table,
    level_summaries,
    per_image_metrics,
    readers_slices,
    small_tumour_recall,
)
from lungnet.experiment import SegmentationExperimentConfig
from lungnet.fileio import write_csv, write_json
from lungnet.inference import segmenter_fn
from lungnet.losses import EdgeLoss, LossConfig, build_loss
from lungnet.models import build_segmenter, inference_model
from lungnet.models.contract import EDGE_OUTPUT, output_names
from lungnet.postprocess.crf import CRFConfig, dense_crf_batch, require_crf
from lungnet.runs import load_run_config, save_config
from lungnet.runs.artifacts import evaluation_dir, load_run_model, run_metrics, run_preprocess, save_run_model
from lungnet.studies.registry import Study, register_study
from lungnet.training.distribute import distribution_scope
from lungnet.training.fit import make_optimizer, set_global_options, train_phase

CRF_GRID = {"bilateral_srgb": (5.0, 10.0, 20.0), "bilateral_compat": (3.0, 5.0, 10.0)}
MASKS_DIR = "predicted_masks"
METRIC_KEYS = (
    "dice",
    "iou",
    "precision",
    "sensitivity",
    "f_score",
    "accuracy",
    "small_tumour_recall",
    "intensity_std",
)


@dataclasses.dataclass
class Predictions:
    """One split's preprocessed images, true masks and predicted probabilities, all ``[N, S, S]``."""

    images: np.ndarray
    masks: np.ndarray
    probs: np.ndarray


def segment(model: keras.Model, x: tf.Tensor, tta: bool = False) -> np.ndarray:
    """Probability maps ``[B, H, W]`` of one batch (see `segmenter_fn`)."""
    return np.asarray(segmenter_fn(model, tta)(x), dtype=np.float32)


def predict_split(
    model: keras.Model, dataset: tf.data.Dataset, progress: bool = False, tta: bool = False
) -> Predictions:
    images, masks, probs = [], [], []
    fn = segmenter_fn(model, tta)
    with data_errors():
        for x, y in tqdm(dataset, desc="predicting", disable=not progress, leave=False):
            images.append(x.numpy()[..., 0])
            masks.append(y.numpy()[..., 0])
            probs.append(np.asarray(fn(x), dtype=np.float32))
    if not images:
        raise DataError("no images to predict")
    return Predictions(np.concatenate(images), np.concatenate(masks) > 0.5, np.concatenate(probs))


def compile_segmentation(loss: LossConfig):
    """A `train_phase` compile function: the loss, the training config's optimizer, IoU of the nodule class."""

    def compile_fn(model: keras.Model, learning_rate: float, training) -> None:
        iou = keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")
        names = output_names(model)
        # deep supervision: the experiment's loss on every side output, summed; an edge output against the
        # mask's boundary (derived from the mask inside the loss)
        multi = len(names) > 1
        model.compile(
            optimizer=make_optimizer(learning_rate, training),
            loss={n: EdgeLoss() if n == EDGE_OUTPUT else build_loss(loss) for n in names}
            if multi
            else build_loss(loss),
            metrics={names[0]: [iou]} if multi else [iou],
            jit_compile=training.xla,
        )

    return compile_fn


def mask_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray, config: SegmentationExperimentConfig
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(aggregate metrics incl. small-tumour recall, per-image table, lesion table) of binary masks."""
    per_image = per_image_metrics(truth, pred)
    lesions = lesion_table(
        truth,
        pred,
        spacing,
        max_diameter_mm=config.evaluation.small_diameter_mm,
        min_iou=config.evaluation.detection_iou,
    )
    summary = {**aggregate_metrics(per_image), **small_tumour_recall(lesions)}
    return summary, per_image, lesions


def crf_probabilities(pred: Predictions, config: SegmentationExperimentConfig, progress: bool) -> np.ndarray:
    return dense_crf_batch(pred.images, pred.probs, config.postprocess.crf, progress=progress)


def mean_dice(truth: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    return float(np.nanmean(per_image_metrics(truth, binarize(probs, threshold))["dice"]))


def tune_crf(val: Predictions, config: SegmentationExperimentConfig) -> tuple[CRFConfig, dict]:
    """The CRF setting of `CRF_GRID` with the best validation Dice, and the whole search for the record.

    The default kernels come from natural photographs; a nodule's edge on CT is another matter, so the
    bilateral kernel's intensity width and weight are chosen per model, on the validation split only.
    """
    base, threshold = config.postprocess.crf, config.postprocess.threshold
    grid = []
    for srgb, compat in itertools.product(*CRF_GRID.values()):
        candidate = dataclasses.replace(base, bilateral_srgb=srgb, bilateral_compat=compat)
        dice = mean_dice(val.masks, dense_crf_batch(val.images, val.probs, candidate), threshold)
        grid.append({"bilateral_srgb": srgb, "bilateral_compat": compat, "val_dice": dice})
    best = max(grid, key=lambda row: row["val_dice"])
    raw = mean_dice(val.masks, val.probs, threshold)
    chosen = dataclasses.replace(
        base, bilateral_srgb=best["bilateral_srgb"], bilateral_compat=best["bilateral_compat"]
    )
    record = {
        "selected": {"bilateral_srgb": chosen.bilateral_srgb, "bilateral_compat": chosen.bilateral_compat},
        "val_dice_crf": best["val_dice"],
        "val_dice_raw": raw,
        "crf_helps_on_validation": best["val_dice"] > raw,
        "grid": grid,
    }
    return chosen, record


def with_crf(config: SegmentationExperimentConfig, crf: CRFConfig) -> SegmentationExperimentConfig:
    return dataclasses.replace(config, postprocess=dataclasses.replace(config.postprocess, crf=crf))


def perturbation_fn(p: Perturbation, intensity: str):
    value_range = value_range_for(intensity)
    clip = intensity == "8bit"  # 0-255 is physical for 8-bit files; HU have no such bound

    def fn(image, row):
        return perturb_image(image, p, value_range, seed=row, clip=clip)

    return fn


def intensity_test(
    model: keras.Model,
    data: PreparedSegmentationData,
    frame: pd.DataFrame,
    config: SegmentationExperimentConfig,
    original: tuple[Predictions, np.ndarray | None],
    progress: bool,
) -> dict:
    """Mean Dice under each perturbation (and after the CRF when enabled), and their std.

    `original` is the unperturbed test split's (predictions, CRF probabilities), already computed.
    """
    threshold = config.postprocess.threshold
    use_crf = config.postprocess.crf.enabled
    dice_raw, dice_crf = {}, {}
    for p in tqdm(DEFAULT_PERTURBATIONS, desc="intensity test", disable=not progress, leave=False):
        if p.kind == "none":
            pred, refined = original
        else:
            pred = predict_split(
                model,
                data.pipeline(frame, perturb=perturbation_fn(p, data.intensity)),
                tta=config.evaluation.tta,
            )
            refined = crf_probabilities(pred, config, progress=False) if use_crf else None
        dice_raw[p.name] = mean_dice(pred.masks, pred.probs, threshold)
        if use_crf:
            dice_crf[p.name] = mean_dice(pred.masks, refined, threshold)
    out = {"raw": {"dice_by_condition": dice_raw, "intensity_std": intensity_std(dice_raw)}}
    if use_crf:
        out["crf"] = {"dice_by_condition": dice_crf, "intensity_std": intensity_std(dice_crf)}
    return out


@dataclasses.dataclass
class SegmentationResult:
    name: str
    model: keras.Model
    path: Path
    training: dict
    val_dice: float
    test: Predictions
    crf_probs: np.ndarray | None
    metrics: dict  # {"raw": {...}, "crf": {...}}
    per_image: dict[str, pd.DataFrame]
    lesions: dict[str, pd.DataFrame]


def evaluate_predictions(
    test: Predictions, frame: pd.DataFrame, config: SegmentationExperimentConfig, progress: bool
) -> tuple[dict, dict, dict, np.ndarray | None]:
    """Metrics of the raw masks and, when enabled, of the CRF-refined masks (`frame`: the images' rows).

    Each block has ``levels``: Dice on the radiologists' slices, per nodule and per patient (all slices are
    the block itself)."""
    threshold = config.postprocess.threshold
    spacing = frame["eval_spacing_mm"].to_numpy()
    variants = {"raw": test.probs}
    refined = None
    if config.postprocess.crf.enabled:
        refined = variants["crf"] = crf_probabilities(test, config, progress)
    metrics, per_image, lesions = {}, {}, {}
    for kind, probs in variants.items():
        metrics[kind], per_image[kind], lesions[kind] = mask_metrics(
            binarize(probs, threshold), test.masks, spacing, config
        )
        metrics[kind]["levels"] = level_summaries(per_image[kind], frame)
    return metrics, per_image, lesions, refined


def build_study_segmenter(model_config, config: SegmentationExperimentConfig, data: PreparedSegmentationData):
    """A segmenter for the study's preprocessed input, under the training strategy's scope."""
    pre = data.preprocess
    with distribution_scope(config.training):
        return build_segmenter(model_config, (pre.image_size, pre.image_size, pre.channels))


def train_and_evaluate(
    spec, config: SegmentationExperimentConfig, data: PreparedSegmentationData, run_dir: Path, progress: bool
) -> SegmentationResult:
    training_model = build_study_segmenter(spec.model, config, data)
    summary = train_phase(
        training_model,
        data.train,
        data.val,
        run_dir=run_dir,
        phase=spec.name,
        epochs=config.training.epochs,
        learning_rate=spec.learning_rate or config.training.learning_rate,
        config=config.training,
        compile_fn=compile_segmentation(config.loss),
    )
    return evaluate_segmenter(spec.name, training_model, summary, config, data, run_dir, progress)


def evaluate_segmenter(
    name: str,
    training_model: keras.Model,
    summary: dict,
    config: SegmentationExperimentConfig,
    data: PreparedSegmentationData,
    run_dir: Path,
    progress: bool,
) -> SegmentationResult:
    """Save a trained segmenter to the run and score it: validation Dice, the CRF search, the test metrics
    (raw and CRF-refined) and the intensity test."""
    path = save_run_model(run_dir, name, training_model)
    model = inference_model(training_model)  # probabilities only: side outputs are for the loss
    tta = config.evaluation.tta
    val = predict_split(model, data.val, tta=tta)
    val_dice = mean_dice(val.masks, val.probs, config.postprocess.threshold)
    tuning = None
    if config.postprocess.crf.enabled and config.postprocess.tune_crf:
        crf, tuning = tune_crf(val, config)
        config = with_crf(config, crf)  # this model's CRF, for its test metrics and intensity test
    test_frame = data.split("test")
    test = predict_split(model, data.test, progress=progress, tta=tta)
    metrics, per_image, lesions, refined = evaluate_predictions(test, test_frame, config, progress)
    if config.evaluation.intensity_test:
        robustness = intensity_test(model, data, test_frame, config, (test, refined), progress)
        for kind, values in robustness.items():
            metrics[kind].update(values)
    if tuning is not None:
        metrics["crf_tuning"] = tuning
    return SegmentationResult(
        name, model, path, summary, val_dice, test, refined, metrics, per_image, lesions
    )


def write_predictions(
    out_dir: Path, frame: pd.DataFrame, results: list[SegmentationResult], threshold: float
) -> pd.DataFrame:
    """``predictions.csv``: one row per (model, image) with Dice and IoU; each predicted mask as a PNG."""
    rows = []
    central = readers_slices(frame)  # the slices the readers' agreement is measured on
    for result in results:
        variants = {"raw": result.test.probs}
        if result.crf_probs is not None:
            variants["crf"] = result.crf_probs
        paths: dict[str, list[str]] = {}
        for kind, probs in variants.items():
            folder = out_dir / MASKS_DIR / (result.name if kind == "raw" else f"{result.name}-crf")
            folder.mkdir(parents=True, exist_ok=True)
            paths[kind] = []
            for i, mask in enumerate(binarize(probs, threshold)):
                target = folder / f"{i:05d}.png"
                cv2.imwrite(str(target), mask.astype(np.uint8) * 255)
                paths[kind].append(str(target.relative_to(out_dir)))
        table = pd.DataFrame(
            {
                "image": frame["image_ref"].to_numpy(),
                "patient_id": frame["patient_id"].to_numpy(),
                "model": result.name,
                "dice": result.per_image["raw"]["dice"].to_numpy(),
                "iou": result.per_image["raw"]["iou"].to_numpy(),
                "predicted_mask": paths["raw"],
            }
        )
        if "crf" in paths:
            table["dice_crf"] = result.per_image["crf"]["dice"].to_numpy()
            table["iou_crf"] = result.per_image["crf"]["iou"].to_numpy()
            table["predicted_mask_crf"] = paths["crf"]
        if "nodule_id" in frame.columns:
            table.insert(2, "nodule_id", frame["nodule_id"].to_numpy())
        if central is not None:  # for compare-models --readers-slices
            table[READERS_SLICE] = central
        rows.append(table)
    predictions = pd.concat(rows, ignore_index=True)
    write_csv(out_dir / "predictions.csv", predictions)
    return predictions


def readers_on_test(data: PreparedSegmentationData, config: SegmentationExperimentConfig, progress: bool):
    """(summary, per-(nodule, reader) table) of reader-to-reader Dice on the test nodules, or (None, None)."""
    test = data.split("test")
    if not config.evaluation.reader_agreement or not {"series_uid", "nodule_id"} <= set(test.columns):
        return None, None
    from lungnet.evaluation.reader_agreement import reader_agreement, summarize_agreement

    nodules = test[["series_uid", "nodule_id"]].dropna().drop_duplicates("nodule_id").astype(str)
    try:  # LIDC has four readers: larger clusters are pylidc clustering artefacts, left out
        agreement = reader_agreement(nodules, progress=progress, max_readers=4)
    except (DataError, LungnetError) as exc:
        print(f"note: reader agreement not computed: {exc}")
        return None, None
    if agreement.empty:
        return None, None
    return summarize_agreement(agreement), agreement


def headline(metrics: dict) -> dict:
    """The study's eight columns, from a raw or CRF metrics block."""
    return {key: metrics.get(key) for key in METRIC_KEYS}


def run_segmentation_study(
    config: SegmentationExperimentConfig, run_dir: Path, progress: bool = True
) -> dict:
    """Train, evaluate and report every model of `config` into `run_dir`; returns the metrics summary."""
    from lungnet.reports.segmentation import write_segmentation_report

    if config.postprocess.crf.enabled:
        require_crf()  # before any training: a missing package must not cost a finished run
    save_config(run_dir, config)
    set_global_options(config.training)
    data = prepare_segmentation_data(config.data, progress=progress)
    results = []
    for spec in config.models:
        result = train_and_evaluate(spec, config, data, run_dir, progress)
        raw = result.metrics["raw"]
        print(f"{spec.name}: validation Dice {result.val_dice:.3f}, test Dice {raw['dice']:.3f}")
        results.append(result)
    selected, summary, reader_table = finish_study(config, data, results, run_dir, progress)
    write_json(run_dir / "metrics.json", summary)
    write_segmentation_report(run_dir, config, data, results, selected, summary, reader_table)
    return summary


def finish_study(
    config, data: PreparedSegmentationData, results: list[SegmentationResult], run_dir: Path, progress
):
    """(selected result, metrics summary, reader table) of trained and scored models: the predictions and the
    readers' agreement written to the run."""
    selected = max(results, key=lambda r: r.val_dice)
    test_frame = data.split("test")
    write_predictions(run_dir, test_frame, results, config.postprocess.threshold)
    readers, reader_table = readers_on_test(data, config, progress)
    if reader_table is not None:
        write_csv(run_dir / "reader_agreement.csv", reader_table)
    summary = {
        **headline(selected.metrics["raw"]),
        "crf": headline(selected.metrics["crf"]) if "crf" in selected.metrics else None,
        "levels": selected.metrics["raw"]["levels"],  # readers' slices, per nodule, per patient
        "selected_model": selected.name,
        "selection": "best validation Dice (thresholded at postprocess.threshold, no CRF)",
        "task": config.task,
        "split": "test",
        "data": data.source.description,
        "n_test": int(len(test_frame)),
        "n_empty_masks": data.n_empty_masks,
        "intensity": data.intensity,
        "preprocess": dataclasses.asdict(data.preprocess),
        "definitions": definitions(config),
        "models": {r.name: {"val_dice": r.val_dice, "training": r.training, **r.metrics} for r in results},
        "reader_agreement": readers,
    }
    return selected, summary, reader_table


def definitions(config: SegmentationExperimentConfig) -> dict[str, str]:
    ev = config.evaluation
    return {
        "small_tumour_recall": (
            f"ground-truth lesions (8-connected components) with equivalent-circle diameter < "
            f"{ev.small_diameter_mm:g} mm that are detected: IoU >= {ev.detection_iou:g} between the lesion and "
            "the predicted regions that touch it"
        ),
        "intensity_std": (
            "population std of the mean test Dice over 7 conditions: the original images, brightness +-10 % "
            "of the intensity range, contrast x0.8 and x1.2 about the image mean, Gaussian noise sigma 2 % "
            "and 5 % of the range, applied to the raw images before preprocessing"
        ),
        "f_score": "harmonic mean of mean precision and mean sensitivity (per-pixel F1 is the Dice)",
        "accuracy": "pixel accuracy, mean over images",
        "dice": "per-image Dice, mean over test images (an empty mask predicted empty counts as 1)",
    }


def with_tuned_crf(config: SegmentationExperimentConfig, recorded: dict, name: str):
    """`config` with the CRF setting the run chose on its validation split for model `name`, if any."""
    tuned = (recorded.get("models", {}).get(name, {}).get("crf_tuning") or {}).get("selected")
    return with_crf(config, dataclasses.replace(config.postprocess.crf, **tuned)) if tuned else config


def check_run_intensity(refs: pd.Series, config, recorded: dict, source_spec: str, run_dir) -> str:
    """The intensity kind of the images `refs` ('ct' or '8bit'); a `DataError` where the run was trained on
    the other kind, whose intensity preprocessing would not fit them."""
    intensity = detect_intensity(refs, config.data.intensity)
    trained_on = recorded.get("intensity")
    if trained_on and intensity != trained_on:
        raise DataError(
            f"{source_spec}: holds {intensity} images but run {run_dir} was trained on {trained_on} images; "
            "its intensity preprocessing would not fit them"
        )
    return intensity


def evaluate_segmentation_run(
    run_dir,
    source_spec: str,
    out=None,
    model_name: str | None = None,
    progress: bool = True,
    extra_scores: Callable | None = None,
) -> Path:
    """A trained segmentation run on every sample (with a mask) of another source, the run's preprocessing.
    ``extra_scores(masks, probs, config) -> (key, scores)``: a study's own metrics, added to metrics.json
    under ``key`` and to the report."""
    from lungnet.data.registry import load_source
    from lungnet.data.segmentation import segmentation_frame, segmentation_pipeline
    from lungnet.evaluation.figures import save_figure
    from lungnet.evaluation.segmentation_figures import dice_distribution_figure
    from lungnet.reports.html import HtmlReport

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if config.postprocess.crf.enabled:
        require_crf()
    model, name = load_run_model(run_dir, model_name)
    preprocess = run_preprocess(run_dir, config)
    recorded = run_metrics(run_dir)
    config = with_tuned_crf(config, recorded, name)
    source = load_source(source_spec, config.data.phantom, progress=progress)
    frame, n_empty = segmentation_frame(source, config.data, progress)
    check_run_intensity(frame["image_ref"], config, recorded, source.spec, run_dir)
    ds = segmentation_pipeline(frame, preprocess, config.data, training=False)
    pred = predict_split(model, ds, progress=progress, tta=config.evaluation.tta)
    metrics, per_image, lesions, refined = evaluate_predictions(pred, frame, config, progress)
    extra_key, extra = extra_scores(pred.masks, pred.probs, config) if extra_scores else (None, None)
    out = evaluation_dir(run_dir, source.spec, out)
    result = SegmentationResult(
        name, model, Path(), {}, float("nan"), pred, refined, metrics, per_image, lesions
    )
    write_predictions(out, frame, [result], config.postprocess.threshold)
    write_json(
        out / "metrics.json",
        {
            **headline(metrics["raw"]),
            "crf": headline(metrics["crf"]) if "crf" in metrics else None,
            "levels": metrics["raw"]["levels"],
            "details": metrics,
            "model": name,
            "run": str(run_dir),
            "data": source.description,
            "split": "all samples with a mask",
            "n_images": int(len(frame)),
            "n_empty_masks": n_empty,
            "definitions": definitions(config),
            **({extra_key: extra} if extra_key else {}),
        },
    )
    report = HtmlReport(f"External evaluation of {name} ({run_dir.name}) on {source.spec}")
    report.paragraph(f"Data: {source.description}; every sample with a mask ({len(frame)} images).")
    rows = {"raw": metrics["raw"], **({"+ CRF": metrics["crf"]} if "crf" in metrics else {})}
    report.table(pd.DataFrame({k: headline(v) for k, v in rows.items()}).T.rename_axis(name))
    if extra_key:
        flat = {}
        for key, value in extra.items():  # one level of nesting, e.g. {"detection": {"accuracy": ...}}
            items = value.items() if isinstance(value, dict) else [("", value)]
            flat.update({f"{key} {k}".strip(): v for k, v in items if not isinstance(v, dict | list)})
        report.table(pd.DataFrame({name: flat}).T.rename_axis(extra_key))
    report.image(
        save_figure(
            dice_distribution_figure({name: per_image["raw"]["dice"].dropna().tolist()}),
            out / "dice_distribution.png",
        ),
        "Per-image Dice",
    )
    report.save(out / "report.html")
    return out


def predict_segmentation_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """`lungnet predict` on a segmentation run (`lungnet.studies.predict_segmentation`, which imports this
    module's helpers, hence the import here)."""
    from lungnet.studies.predict_segmentation import predict_masks_of_run

    return predict_masks_of_run(run_dir, source_spec, out=out, model_name=model_name)


def segmentation_summary_line(summary: dict) -> str:
    crf = summary.get("crf") or {}
    with_crf = f", with CRF {crf['dice']:.3f}" if crf.get("dice") is not None else ""
    return f"selected model {summary['selected_model']}: test Dice {summary['dice']:.3f}{with_crf} ({summary['data']})"


register_study(
    Study(
        task="segmentation",
        run=run_segmentation_study,
        evaluate=evaluate_segmentation_run,
        summary_line=segmentation_summary_line,
        predict=predict_segmentation_run,
    )
)
