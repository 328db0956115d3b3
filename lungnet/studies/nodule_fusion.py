"""The multi-dataset study's classification half: malignancy from a nodule crop and its mask.

Per run (`run_fusion_study`):

1. the classification data layer as the classification study uses it (labels by ``data.grouping``, the
   patient split, oversampling to the largest class + 200);
2. a segmenter trained on this run's **training patients only** (``segmenter:``, in ``<run>/segmenter``,
   `lungnet.studies.measured_segmenter`) outlines every slice; its masks are written to
   ``<run>/predicted_masks/`` and become the manifest's ``predicted_mask`` column;
3. each model trains in its ``phases``: first on the readers' consensus outlines, then on the segmenter's,
   the masks it will meet at inference (two-phase training); each phase validates on its own masks;
4. each model is judged on the test split with the segmenter's masks (image-only: it sees the slice and the
   masks a network drew) and, as a reference that needs a reader, with the readers' outlines; per slice,
   nodule and patient, beside the diameter (the simplest reference) with paired patient-bootstrap intervals.

The model with the best validation F1 (on predicted masks) is the run's selected model.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lungnet.data.dataset import (
    DataConfig,
    PreparedData,
    check_source_images,
    image_column,
    mask_column,
    prepare_data,
)
from lungnet.data.io import read_image
from lungnet.data.manifest import outlined
from lungnet.data.pipelines import classification_dataset, data_errors
from lungnet.data.registry import load_source
from lungnet.errors import DataError, LungnetError
from lungnet.evaluation.aggregation import level_metrics
from lungnet.evaluation.calibration import Calibration
from lungnet.evaluation.measured_nodule import SEGMENTER_DIR, segmenter_dice_by_split
from lungnet.evaluation.metrics import classification_metrics
from lungnet.evaluation.paired import paired_bootstrap_classification
from lungnet.evaluation.segmentation import per_image_metrics
from lungnet.fileio import write_csv, write_json
from lungnet.inference import predict_proba
from lungnet.models import build_classifier
from lungnet.models.contract import INPUT_NAME, MASK_INPUT_NAME
from lungnet.runs import load_run_config, save_config
from lungnet.runs.artifacts import (
    evaluation_dir,
    load_run_model,
    run_metrics,
    save_run_model,
)
from lungnet.runs.folder import require_finished
from lungnet.studies.classification import (
    against_size_only,
    baselines,
    input_shape,
    probability_table,
    scored,
    size_only_fit,
)
from lungnet.studies.external import labelled_set, probability_columns, scored_here, size_only_here
from lungnet.studies.mask_prediction import predict_masks, write_mask_png
from lungnet.studies.measured_segmenter import train_segmenter
from lungnet.studies.predict import write_predictions
from lungnet.studies.registry import Study, register_study
from lungnet.training.distribute import distribution_scope
from lungnet.training.fit import set_global_options, train_phase

PREDICTED_MASK = "predicted_mask"
PREDICTED_DIR = "predicted_masks"
CROSS_FITTED_DIR = "predicted_masks_cross_fitted"  # the training patients' masks, one folder per fold
SELECTION = "best validation F1 on the segmenter's masks (binary: F1 of the malignant class; 5-class: macro)"


def mask_columns(manifest: pd.DataFrame, view: str) -> dict[str, str]:
    """The manifest column of each mask kind: the readers' outline of the view, and the segmenter's."""
    return {"readers": mask_column(manifest, view), "predicted": PREDICTED_MASK}


def predicted_mask_files(
    seg_dir: Path, frame: pd.DataFrame, column: str, tta: bool, out: Path, progress: bool = True
) -> dict[str, str]:
    """``{image: mask PNG}``: the mask the segmenter of `seg_dir` predicts for each distinct image of
    `frame`'s `column`, written to `out` (atomically, one file per image)."""
    masks = predict_masks(seg_dir, frame, column, tta, progress)
    out.mkdir(parents=True, exist_ok=True)
    return {
        path: str(write_mask_png(out / f"{i:05d}.png", mask)) for i, (path, mask) in enumerate(masks.items())
    }


def with_predicted_masks(frame: pd.DataFrame, column: str, files: dict[str, str]) -> pd.DataFrame:
    """`frame` with the ``predicted_mask`` column: each row's image's predicted mask file."""
    paths = frame[column].astype(str)
    missing = sorted(set(paths) - set(files))
    if missing:
        raise DataError(f"{len(missing)} images have no predicted mask, e.g. {missing[0]}")
    return frame.assign(**{PREDICTED_MASK: paths.map(files)})


def with_segmenter_masks(
    frame: pd.DataFrame, column: str, seg_dir: Path, tta: bool, out: Path, progress: bool = True
) -> pd.DataFrame:
    """`frame` with the ``predicted_mask`` column the segmenter of `seg_dir` draws, written to `out`."""
    return with_predicted_masks(
        frame, column, predicted_mask_files(seg_dir, frame, column, tta, out, progress)
    )


def training_folds(data: PreparedData, k: int) -> list[set[str]]:
    """The training patients in `k` folds of (nearly) equal size, shuffled with ``data.seed``."""
    patients = np.array(sorted(data.split("train")["patient_id"].astype(str).unique()))
    if len(patients) < k:
        raise DataError(f"segmenter.cross_fit_folds: {k} folds of {len(patients)} training patients")
    order = np.random.default_rng(data.config.seed).permutation(patients)
    return [set(order[i::k]) for i in range(k)]


def cross_fitted_mask_files(config, data: PreparedData, run_dir: Path, progress: bool = True):
    """``({image: mask PNG}, [segmenter folders])``: every training patient's masks drawn by a segmenter
    trained without that patient's fold (``<run>/segmenter-fold-<i>``; validation patients early-stop it as
    they do the run's segmenter, test patients stay held out), as a new patient's masks are drawn."""
    view, recipe = config.data.view, config.segmenter
    column = image_column(data.manifest, view)
    train = data.split("train")
    files, folders = {}, []
    for i, fold in enumerate(training_folds(data, recipe.cross_fit_folds), start=1):
        held_out = data.manifest["patient_id"].astype(str).isin(fold).to_numpy()
        split = data.manifest.assign(split=np.where(held_out, "test", data.manifest["split"]))
        folder = f"{SEGMENTER_DIR}-fold-{i}"
        seg_dir = train_segmenter(
            recipe, data.source.manifest, split, view, run_dir, progress, "segmenter", folder=folder
        )
        rows = train[train["patient_id"].astype(str).isin(fold)]
        out = run_dir / CROSS_FITTED_DIR / f"fold-{i}"
        files.update(predicted_mask_files(seg_dir, rows, column, recipe.tta, out, progress))
        folders.append(folder)
    return files, folders


def add_predicted_masks(
    data: PreparedData, seg_dir: Path, run_dir: Path, tta: bool, progress: bool = True, drawn=None
) -> PreparedData:
    """`data` with a ``predicted_mask`` column on the split manifest and the balanced training table: the
    masks the segmenter of `seg_dir` draws, except the images of `drawn` (``{image: mask PNG}``: the
    cross-fitted training masks), which keep theirs."""
    column = image_column(data.manifest, data.config.view)
    drawn = drawn or {}
    rest = data.manifest[~data.manifest[column].astype(str).isin(drawn)]
    files = {**predicted_mask_files(seg_dir, rest, column, tta, run_dir / PREDICTED_DIR, progress), **drawn}
    return dataclasses.replace(
        data,
        manifest=with_predicted_masks(data.manifest, column, files),
        train_manifest=with_predicted_masks(data.train_manifest, column, files),
    )


def _named_inputs(images, targets):
    """``(image, (target, mask))`` -> ``({"image", "mask"}, target)``. A named function, not a lambda:
    AutoGraph cannot read a lambda's source here and warns at every trace."""
    return {INPUT_NAME: images, MASK_INPUT_NAME: targets[1]}, targets[0]


def _mask_only(inputs, target):
    return inputs[MASK_INPUT_NAME]


def fusion_pipeline(
    frame: pd.DataFrame, config: DataConfig, num_classes: int, masks: str, training: bool = False
) -> tf.data.Dataset:
    """Batches of ``({"image", "mask"}, target)``: each slice with the `masks` column's mask, through the
    same preprocessing and (in training) the same random warp; the classification pipelines' one function."""
    ds = classification_dataset(
        frame,
        config.preprocess,
        num_classes=num_classes,
        training=training,
        batch_size=config.batch_size,
        augment=config.augment if training else None,
        image_column=image_column(frame, config.view),
        seed=config.seed,
        mask_column=masks,
    )
    return ds.map(_named_inputs, num_parallel_calls=tf.data.AUTOTUNE)


def pipeline(data: PreparedData, frame: pd.DataFrame, masks: str, training: bool = False) -> tf.data.Dataset:
    return fusion_pipeline(frame, data.config, len(data.class_names), masks, training)


def phase_name(model: str, masks: str) -> str:
    return f"{model}_{masks}"


def readers_scores(model: keras.Model, frame: pd.DataFrame, config: DataConfig, names, column: str):
    """The model on the rows of `frame` that have the readers' mask, reading it: slice metrics and levels
    (``n`` says how many rows), or None where no row has one."""
    rows = outlined(frame, column)
    if rows.empty:
        return None
    probs = fusion_probs(model, rows, config, names, column)
    y = rows["target"].to_numpy()
    return {**classification_metrics(y, probs, names), "levels": level_metrics(y, probs, rows, names)}


def train_fusion_model(spec, config, data: PreparedData, columns: dict[str, str], run_dir: Path):
    """Build `spec`'s model and train it through its phases; returns (model, {phase: summary})."""
    with distribution_scope(config.training):  # under training.strategy, the model's variables are mirrored
        model = build_classifier(spec.model, input_shape(config), len(data.class_names))
    val = data.split("val")
    training, phases = config.training, {}
    for i, masks in enumerate(spec.phases):
        first = i == 0
        train, held_out = data.train_manifest, val
        if masks == "readers":  # only the slices the readers outlined
            train, held_out = outlined(train, columns[masks]), outlined(val, columns[masks])
            if train.empty or held_out.empty:
                raise DataError(
                    f"models[{spec.name}].phases: no {'training' if train.empty else 'validation'} slice has "
                    f"a readers' mask ({columns[masks]!r}); train on the segmenter's masks alone "
                    "(phases: [predicted])"
                )
        print(f"{spec.name}: training on the {masks} masks ({len(train)} training rows)")
        phases[phase_name(spec.name, masks)] = train_phase(
            model,
            pipeline(data, train, columns[masks], training=True),
            pipeline(data, held_out, columns[masks]),
            run_dir=run_dir,
            phase=phase_name(spec.name, masks),
            epochs=training.epochs if first else training.fine_tune_epochs,
            learning_rate=training.learning_rate if first else training.fine_tune_learning_rate,
            config=training,
            class_weight=data.class_weight,
        )
    return model, phases


def fusion_probs(
    model: keras.Model, frame: pd.DataFrame, config: DataConfig, names, masks: str
) -> np.ndarray:
    """[N, K] probabilities of `model` on `frame`'s slices, each with its mask of column `masks`."""
    with data_errors():
        return predict_proba(model, fusion_pipeline(frame, config, len(names), masks))


def evaluate_fusion_model(name, model, data: PreparedData, columns, phases: dict, run_dir: Path) -> dict:
    """Validation and test scores on the segmenter's masks (with the threshold and calibration of
    validation, per slice / nodule / patient), the test slices the readers outlined with their masks, the
    probabilities."""
    names = data.class_names
    frames = {s: data.split(s) for s in ("train", "val", "test")}
    y = {s: f["target"].to_numpy() for s, f in frames.items()}
    val_probs = fusion_probs(model, frames["val"], data.config, names, columns["predicted"])
    test_probs = fusion_probs(model, frames["test"], data.config, names, columns["predicted"])
    result = scored(y["train"], y["val"], val_probs, y["test"], test_probs, frames["test"], names)
    result["with_readers_masks"] = readers_scores(
        model, frames["test"], data.config, names, columns["readers"]
    )
    result["training"] = phases
    result["phases"] = [phase.removeprefix(f"{name}_") for phase in phases]  # the masks, in training order
    result["model_file"] = str(save_run_model(run_dir, name, model).relative_to(run_dir))
    return {"metrics": result, "val_probs": val_probs, "test_probs": test_probs}


def _agreement(data: PreparedData, rows: pd.DataFrame, columns: dict[str, str]) -> dict:
    rows = outlined(rows, columns["readers"])
    if rows.empty:
        return {"slices": 0}
    masks = {}
    for kind, column in columns.items():
        batches = pipeline(data, rows, column).map(_mask_only)
        masks[kind] = np.concatenate([b.numpy() for b in batches])[..., 0] > 0.5
    per_image = per_image_metrics(masks["readers"], masks["predicted"])
    in_view = per_image["gt_pixels"].to_numpy() > 0
    return {
        "dice_mean": float(per_image["dice"].mean()),
        "dice_mean_outline_in_view": float(per_image.loc[in_view, "dice"].mean()) if in_view.any() else None,
        "slices": int(len(per_image)),
        "slices_without_predicted_mask": int((per_image["pred_pixels"] == 0).sum()),
    }


def segmenter_agreement(data: PreparedData, columns: dict[str, str]) -> dict:
    """Dice of the segmenter's masks against the readers' on the test slices, as the classifier sees both
    (after its preprocessing): how far the image-only inputs are from the reference ones. ``by_split``: the
    same on each split; where the training patients' masks come from the segmenter that trained on them (not
    cross-fitted), a training Dice above the test's says the second phase trains on sharper masks than those
    it meets (`segmenter.cross_fit_folds`)."""
    by_split = {split: _agreement(data, data.split(split), columns) for split in ("train", "val", "test")}
    return {**by_split["test"], "by_split": by_split}


def channel_batch(data: PreparedData, columns: dict[str, str], rows: int = 3) -> dict:
    """The first `rows` test slices as the network reads them: ``image`` and ``masks`` by kind (the report's
    seven-channel figure)."""
    test = data.split("test")
    shown = outlined(test, columns["readers"]).head(rows)
    kinds = columns if len(shown) else {"predicted": columns["predicted"]}  # no readers' mask: theirs alone
    shown = shown if len(shown) else test.head(rows)
    first = {kind: next(iter(pipeline(data, shown, column)))[0] for kind, column in kinds.items()}
    return {
        INPUT_NAME: first["predicted"][INPUT_NAME].numpy(),
        "masks": {kind: first[kind][MASK_INPUT_NAME].numpy() for kind in kinds},
    }


def run_fusion_study(config, run_dir: Path, progress: bool = True) -> dict:
    """Train, evaluate and report every model of `config` into `run_dir`; returns the metrics summary."""
    from lungnet.reports.nodule_fusion import write_fusion_report

    save_config(run_dir, config)
    set_global_options(config.training)
    data = prepare_data(config.data, progress=progress)
    view = config.data.view
    if mask_column(data.manifest, view) not in data.manifest.columns:
        raise DataError(
            f"{data.source.spec}: no {mask_column(data.manifest, view)!r} column; the nodule-fusion study "
            "trains its segmenter (and its first phase) on the readers' outlines"
        )
    seg_dir = train_segmenter(
        config.segmenter, data.source.manifest, data.manifest, view, run_dir, progress, "segmenter"
    )
    cross_fitted, fold_dirs = {}, []
    if config.segmenter.cross_fit_folds:
        cross_fitted, fold_dirs = cross_fitted_mask_files(config, data, run_dir, progress)
    set_global_options(config.training)  # the segmenters' runs set their own seed and precision policy
    data = add_predicted_masks(data, seg_dir, run_dir, config.segmenter.tta, progress, cross_fitted)
    columns = mask_columns(data.manifest, view)
    results = {}
    for spec in config.models:
        model, phases = train_fusion_model(spec, config, data, columns, run_dir)
        results[spec.name] = evaluate_fusion_model(spec.name, model, data, columns, phases, run_dir)
        scores = results[spec.name]["metrics"]
        print(
            f"{spec.name}: validation F1 {scores['val']['f1']:.3f}, test F1 {scores['f1']:.3f} (predicted masks)"
        )
    selected = max(results, key=lambda n: results[n]["metrics"]["val"]["f1"])
    test = data.split("test")
    size_only = size_only_fit(data)
    size_probs = None if size_only is None else size_only.predict(test["diameter_mm"])
    for result in results.values():
        result["metrics"]["against_size_only"] = against_size_only(data, result["test_probs"], size_probs)
    y_test = test["target"].to_numpy()
    # the study's own question, on the same test patients: two phases against the segmenter's masks alone
    pairs = [
        {
            "a": first,
            "b": other,
            **paired_bootstrap_classification(
                y_test, results[first]["test_probs"], results[other]["test_probs"], test, data.class_names
            ),
        }
        for first, other in itertools.combinations(results, 2)
    ]
    chosen = results[selected]
    table = probability_table(test, view, chosen["test_probs"], data.class_names)
    table.insert(3, "pred", [data.class_names[i] for i in chosen["test_probs"].argmax(axis=1)])
    write_csv(run_dir / "predictions.csv", table)
    summary = {
        **{k: chosen["metrics"][k] for k in ("f1", "f1_macro", "precision", "recall", "accuracy", "auc")},
        "selected_model": selected,
        "selection": SELECTION,
        "class_names": list(data.class_names),
        "grouping": config.data.grouping,
        "split": "test",
        "data": data.source.description,
        "n_test": int(len(test)),
        "levels": chosen["metrics"]["levels"],
        "models": {name: r["metrics"] for name, r in results.items()},
        "baselines": baselines(data, size_only, size_probs),
        "pairs": pairs,  # model a - model b on the segmenter's masks (patient bootstrap)
        "segmenter": {
            "run": str(seg_dir.relative_to(run_dir)),
            "recipe": f"{config.segmenter.experiment} / {config.segmenter.profile} / {config.segmenter.model}",
            # where the segmenter's-mask phase's training masks come from
            "training_masks": f"cross-fitted: {len(fold_dirs)} segmenters, each without one fold of the "
            "training patients"
            if fold_dirs
            else "in-sample: the run's segmenter, which trained on these patients",
            "fold_runs": fold_dirs,
            **segmenter_agreement(data, columns),
        },
    }
    write_json(run_dir / "metrics.json", summary)
    write_fusion_report(run_dir, config, data, results, summary, channel_batch(data, columns), size_probs)
    return summary


def evaluate_fusion_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """A fusion run's model on every sample of another labelled set: the run's segmenter outlines each
    slice first (image-only), then the classifier reads slice and mask; where the set has the readers'
    masks, also with those (a reference). Slice, nodule and patient level, the run's own diameter fit."""
    run_dir = Path(run_dir)
    require_finished(run_dir)
    config = load_run_config(run_dir)
    model, name = load_run_model(run_dir, model_name)
    source, labelled, names, column = labelled_set(run_dir, config, source_spec)
    out = evaluation_dir(run_dir, source.spec, out)
    labelled = with_segmenter_masks(
        labelled, column, run_dir / SEGMENTER_DIR, config.segmenter.tta, out / PREDICTED_DIR
    )
    recorded = run_metrics(run_dir)
    y = labelled["target"].to_numpy()
    size_only, size_probs = size_only_here(labelled, names, recorded)
    probs = fusion_probs(model, labelled, config.data, names, PREDICTED_MASK)
    metrics = scored_here(y, probs, labelled, names, recorded["models"].get(name, {}), size_probs)
    readers = mask_column(labelled, config.data.view)
    metrics["with_readers_masks"] = readers_scores(model, labelled, config.data, names, readers)
    marked = outlined(labelled, readers)  # only these masks are read back
    drawn = {i: read_image(m) > 0 for i, m in zip(marked[column], marked[PREDICTED_MASK], strict=True)}
    dice = segmenter_dice_by_split({"set": marked}, column, readers, drawn)["set"]
    table = pd.DataFrame(
        {
            "image": labelled[column],
            "predicted_mask": labelled[PREDICTED_MASK],
            "patient_id": labelled["patient_id"],
            "label": labelled["class_name"],
            "pred": [names[i] for i in probs.argmax(axis=1)],
        }
    ).assign(**probability_columns(probs, names))
    write_csv(out / "predictions.csv", table)
    summary = {
        **metrics,
        "model": name,
        "run": str(run_dir),
        "data": source.description,
        "grouping": config.data.grouping,
        "split": "all samples",
        "masks": "the run's segmenter's (image-only); with_readers_masks: the set's own outlines",
        "baselines": {"size_only": size_only},
        # its masks against this set's outlines, on each image's own pixels
        **({"segmenter": dice} if dice["slices"] else {}),
    }
    write_json(out / "metrics.json", summary)
    from lungnet.reports.nodule_fusion import write_fusion_evaluation_report  # (matplotlib, when reporting)

    title = f"External evaluation of {name} ({run_dir.name}) on {source.spec}"
    examples = outline_examples(labelled, column, readers)
    write_fusion_evaluation_report(out, title, summary, y, probs, size_probs, names, examples)
    return out


def outline_examples(frame: pd.DataFrame, column: str, readers: str, count: int = 6) -> list:
    """``(image, segmenter's mask, readers' mask or None)`` of the first `count` distinct images of `frame`,
    those the readers outlined first (so the figure can set both outlines side by side)."""
    rows = pd.concat([outlined(frame, readers), frame]).drop_duplicates(column).head(count)
    examples = []
    for _, row in rows.iterrows():
        marked = readers in row and isinstance(row[readers], str) and row[readers].strip() != ""
        examples.append(
            (
                read_image(row[column]),
                read_image(row[PREDICTED_MASK]) > 0,
                read_image(row[readers]) > 0 if marked else None,
            )
        )
    return examples


def predict_fusion_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """A fusion run's model on every image of an unlabelled set: the run's segmenter outlines each slice,
    the classifier reads slice and mask; calibrated per slice, nodule and patient (`lungnet predict`)."""
    run_dir = Path(run_dir)
    require_finished(run_dir)
    config = load_run_config(run_dir)
    recorded = run_metrics(run_dir)
    names = list(recorded["class_names"])
    if model_name is not None and model_name not in recorded["models"]:
        raise LungnetError(
            f"--model {model_name!r}: the run has no such model; it has {sorted(recorded['models'])}"
        )
    row = model_name or recorded["selected_model"]
    why = "named with --model" if model_name else recorded["selection"]
    source = load_source(source_spec, config.data.phantom)
    frame = source.manifest.assign(target=0)  # the pipeline carries a target; no label is read
    column = image_column(frame, config.data.view)
    check_source_images(source, frame, column)  # every image read once, before any prediction
    out = evaluation_dir(run_dir, source.spec, out, folder="predictions")
    frame = with_segmenter_masks(
        frame, column, run_dir / SEGMENTER_DIR, config.segmenter.tta, out / PREDICTED_DIR
    )
    model, _ = load_run_model(run_dir, row)
    raw = fusion_probs(model, frame, config.data, names, PREDICTED_MASK)
    calibration = Calibration.from_dict(recorded["models"][row].get("calibration"))
    extra = {PREDICTED_MASK: frame[PREDICTED_MASK].to_numpy()}
    from lungnet.evaluation.figures import save_figure  # (matplotlib, only when writing figures)
    from lungnet.reports.nodule_fusion import OUTLINES_FIGURE, outlines_figure

    readers = mask_column(frame, config.data.view)
    save_figure(outlines_figure(outline_examples(frame, column, readers)), out / OUTLINES_FIGURE)
    return write_predictions(
        out, run_dir, source, frame, column, raw, calibration, names, row, why, extra, [OUTLINES_FIGURE]
    )


def fusion_summary_line(summary: dict) -> str:
    name = summary["selected_model"]
    auc = summary["auc"] if summary.get("auc") is not None else float("nan")
    patient_auc = ((summary.get("levels") or {}).get("patient") or {}).get("auc")
    patient_auc = float("nan") if patient_auc is None else patient_auc  # None: one class among the patients
    line = (
        f"selected model {name} on the segmenter's masks: test F1 {summary['f1']:.3f}, AUC {auc:.3f}, "
        f"patient AUC {patient_auc:.3f} ({summary['data']})"
    )
    size = summary.get("baselines", {}).get("size_only")
    if size is not None:
        line += f"\nthe diameter: AUC {size['auc']:.3f}, macro F1 {size['f1_macro']:.3f}"
    return line


register_study(
    Study(
        task="nodule_fusion",
        run=run_fusion_study,
        evaluate=evaluate_fusion_run,
        summary_line=fusion_summary_line,
        predict=predict_fusion_run,
    )
)
