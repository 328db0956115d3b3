"""The nodule classification study: train each model of an experiment, evaluate, explain, report.

Schedule per model: train (for a pretrained backbone: frozen base, head only = transfer learning); if the
model asks for it, fine-tune the top layers from the transferred weights at a lower learning rate. Every
trained model is evaluated on the validation and test splits; the one with the best validation F1 is the
run's selected model (explained, calibrated and exported).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lungnet.data.dataset import (
    PreparedData,
    balanced_training,
    classification_pipeline,
    image_column,
    mask_column,
    prepare_data,
)
from lungnet.data.splits import patient_folds
from lungnet.errors import DataError, LungnetError
from lungnet.evaluation import (
    SizeOnly,
    best_f1_threshold,
    calibration_summary,
    classification_metrics,
    cross_fitted_size_only,
    fit_calibration,
    fit_size_only,
    majority_baseline,
    mean_probability,
    mode_of_predictions,
    predictions_at_threshold,
)
from lungnet.evaluation.aggregation import level_metrics
from lungnet.evaluation.measured_nodule import (
    CALIBRATION_FOLDS,
    MEASURED_ROW,
    cross_fitted_probs,
    fit_measured,
    mean_row,
    measured_features,
    save_fitted,
    segmenter_dice_by_split,
)
from lungnet.evaluation.paired import paired_bootstrap_classification
from lungnet.evaluation.recommended import recommended_line, recommended_model
from lungnet.experiment import ExperimentConfig, ModelSpec
from lungnet.fileio import write_csv, write_json
from lungnet.inference import predict_proba, predict_tta
from lungnet.models import CLASSIFIERS, WeightsUnavailableError, build_classifier
from lungnet.models.contract import inference_model
from lungnet.models.ensemble import average_ensemble
from lungnet.models.weights import GENESIS, encoder_record, provenance
from lungnet.pretraining import pretrain_encoder
from lungnet.pretraining.pretrain import training_patients_images
from lungnet.runs import save_config
from lungnet.runs.artifacts import save_run_model
from lungnet.studies.external import evaluate_classification_run, probability_columns
from lungnet.studies.mask_prediction import predict_masks
from lungnet.studies.measured_segmenter import train_segmenter
from lungnet.studies.predict import predict_classification_run
from lungnet.studies.registry import Study, register_study
from lungnet.training.distribute import distribution_scope
from lungnet.training.fit import set_global_options, train_phase
from lungnet.training.schedules import transfer_then_fine_tune


@dataclasses.dataclass
class ModelResult:
    name: str
    path: Path
    val_probs: np.ndarray
    test_probs: np.ndarray
    val_metrics: dict
    test_metrics: dict
    training: dict
    tta: dict | None = None
    calibration: dict | None = None
    threshold: dict | None = None  # binary: threshold maximising validation F1, and test metrics at it
    explanation_layer: str | None = None  # Grad-CAM's feature map, as the model's registry entry declares
    held_out: HeldOut | None = None  # a fold ensemble's out-of-fold predictions


def input_shape(config: ExperimentConfig) -> tuple[int, int, int]:
    pre = config.data.preprocess
    return (pre.image_size, pre.image_size, pre.channels)


class SkippedModel(Exception):
    """A model left out of the run (its pretrained weights are unavailable and the experiment says skip)."""


def _build(
    spec: ModelSpec, config: ExperimentConfig, data: PreparedData, progress: bool = True
) -> tuple[keras.Model, str | None]:
    """Build the model (resolving ``weights: genesis`` to the study's own self-supervised base), applying the
    experiment's `if_weights_unavailable` when ImageNet weights cannot be fetched."""
    num_classes = len(data.class_names)
    if getattr(spec.model, "weights", None) == GENESIS:
        spec = _with_genesis_base(spec, config, data, progress)
    with distribution_scope(config.training):
        try:
            return build_classifier(spec.model, input_shape(config), num_classes), None
        except WeightsUnavailableError as exc:
            cause = str(exc).splitlines()[0]
            if spec.if_weights_unavailable == "skip":
                note = f"not trained: ImageNet weights could not be downloaded ({cause})"
                print(f"warning: {spec.name} {note}")
                raise SkippedModel(note) from exc
            if spec.if_weights_unavailable == "genesis":
                print(
                    f"warning: {spec.name}: ImageNet weights could not be downloaded ({cause}); using the "
                    "Models Genesis base self-supervised on this study's training patients instead"
                )
                fallback = _with_genesis_base(spec, config, data, progress)
                note = (
                    f"{spec.name}: ImageNet weights could not be downloaded, so its encoder starts from a "
                    "Models Genesis base self-supervised on this study's training patients"
                )
                return build_classifier(fallback.model, input_shape(config), num_classes), note
            if spec.if_weights_unavailable != "random_init":
                raise
            note = (
                f"{spec.name}: ImageNet weights could not be downloaded, so it was trained from random "
                "initialisation end to end (no transfer learning or fine-tuning was possible)"
            )
            print(f"warning: {note}. Cause: {cause}")
            fallback = dataclasses.replace(spec.model, weights=None)
            return build_classifier(fallback, input_shape(config), num_classes), note


def _with_genesis_base(
    spec: ModelSpec, config: ExperimentConfig, data: PreparedData, progress: bool
) -> ModelSpec:
    """`spec` with its encoder's weights set to the Models Genesis base of this study's training patients'
    images, every one of them, labelled or not (built, or reused from the cache)."""
    with distribution_scope(config.training):
        base = pretrain_encoder(
            spec.model.name,
            training_patients_images(data),
            data.config,
            f"{data.source.spec} (training split, seed {data.config.split_seed})",
            config.pretraining,
            progress=progress,
        )
    # the classifier's initialisation must not depend on whether the base was built here or reused
    keras.utils.set_random_seed(config.training.seed)
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights=str(base.path)))


def _train_model(
    spec: ModelSpec, config: ExperimentConfig, data: PreparedData, run_dir: Path, progress: bool = True
):
    """Yield (name, model, phase summary, held-out predictions or None) per phase of the transfer ->
    fine-tune schedule (an ensemble: one averaged model after all its members)."""
    if spec.ensemble > 1:
        yield _train_ensemble(spec, config, data, run_dir)
        return
    training = config.training
    model, note = _build(spec, config, data, progress)

    def fit(phase: str, epochs: int, learning_rate: float) -> dict:
        return train_phase(
            model,
            data.train,
            data.val,
            run_dir=run_dir,
            phase=phase,
            epochs=epochs,
            learning_rate=learning_rate,
            config=training,
            class_weight=data.class_weight,
        )

    phases = transfer_then_fine_tune(
        model,
        spec.name,
        fit,
        epochs=training.epochs,
        learning_rate=training.learning_rate,
        fine_tune=spec.fine_tune,
        fine_tune_layers=getattr(spec.model, "fine_tune_layers", 0),
        fine_tune_epochs=training.fine_tune_epochs,
        fine_tune_learning_rate=training.fine_tune_learning_rate,
    )
    for i, (name, summary) in enumerate(phases):
        if note and i == 0:
            summary["note"] = note
        yield name, model, {**summary, "weights": weights_provenance(spec.model, model)}, None


# the splits each `ensemble_validation` mode draws its patient folds from
FOLD_SPLITS = {"patient-folds": ("train", "val"), "training-folds": ("train",)}


@dataclasses.dataclass
class HeldOut:
    """A fold ensemble's out-of-fold predictions: each row of `frame` (the pooled rows, in manifest order,
    with their ``split``: training and validation, or with ``training-folds`` training only) predicted by
    the one member that never saw its patient."""

    frame: pd.DataFrame
    probs: np.ndarray
    fold: np.ndarray  # each row's fold, 0-based: member fold + 1 predicted it
    predicted_by: str | None = None  # where the predictions come from, if not the fold members

    @property
    def description(self) -> str:
        if self.predicted_by:
            return self.predicted_by
        pooled = "training + validation" if self.covers_validation else "training"
        return f"out-of-fold ({int(self.fold.max()) + 1} patient folds of {pooled})"

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits the folds pool, in the order the held-out rows of other models list them."""
        return tuple(s for s in FOLD_SPLITS["patient-folds"] if (self.frame["split"] == s).any())

    @property
    def covers_validation(self) -> bool:
        """Whether the folds pool the validation split (``patient-folds``): then these predictions, not the
        averaged model's, are the model's validation predictions."""
        return "val" in self.splits

    @classmethod
    def from_table(cls, pool: pd.DataFrame, table: pd.DataFrame, class_names) -> HeldOut:
        """The pooled rows `pool` with the predictions of a saved `table` (``out_of_fold_<model>.csv``)."""
        if len(table) != len(pool):
            raise DataError(f"out-of-fold table: {len(table)} rows for {len(pool)} pooled rows")
        probs = table[[f"prob_{c}" for c in class_names]].to_numpy()
        return cls(pool, probs, table["member"].to_numpy() - 1)

    def split_probs(self, name: str) -> np.ndarray:
        return self.probs[(self.frame["split"] == name).to_numpy()]

    def by_split(self, *names: str) -> HeldOut:
        """These rows regrouped split by split in the order named (the measured classifier's order)."""
        index = np.concatenate([np.flatnonzero((self.frame["split"] == n).to_numpy()) for n in names])
        return HeldOut(self.frame.iloc[index].reset_index(drop=True), self.probs[index], self.fold[index])

    def table(self, view: str, class_names) -> pd.DataFrame:
        """One row per pooled slice: its split, fold (the member that predicted it) and probabilities."""
        table = probability_table(self.frame, view, self.probs, class_names)
        table.insert(2, "split", self.frame["split"].to_numpy())
        table.insert(3, "member", self.fold + 1)
        return table


def probability_table(frame: pd.DataFrame, view: str, probs: np.ndarray, class_names) -> pd.DataFrame:
    """One row per slice of `frame`: image, patient, true label and one ``prob_<class>`` column per class."""
    return pd.DataFrame(
        {
            "image": frame[image_column(frame, view)].to_numpy(),
            "patient_id": frame["patient_id"].to_numpy(),
            "label": frame["class_name"].to_numpy(),
            **probability_columns(probs, class_names),
        }
    )


def _member_data(data: PreparedData, pool: pd.DataFrame, folds: np.ndarray, fold: int) -> PreparedData:
    """`data` whose training pipeline is the pooled rows outside `fold` (balanced as the config says) and
    whose validation pipeline is the rows of `fold`."""
    n = len(data.class_names)
    train, weights = balanced_training(pool[folds != fold].reset_index(drop=True), data.config, n)
    held = pool[folds == fold].reset_index(drop=True)
    return dataclasses.replace(
        data,
        train_manifest=train,
        class_weight=weights,
        train=classification_pipeline(train, data.config, n, training=True, attributes=True),
        val=classification_pipeline(held, data.config, n, attributes=True),
    )


def _train_ensemble(spec: ModelSpec, config: ExperimentConfig, data: PreparedData, run_dir: Path):
    """(name, averaged model, summary, held-out predictions): `spec.ensemble` members, each trained as its
    own phase (``<name>_member<i>``, resumable) from seed ``training.seed + i - 1``, stopped on the
    validation split, or on its own patient fold (`HeldOut`; None for the split) of the pooled training and
    validation patients (``ensemble_validation: patient-folds``) or of the training patients
    (``training-folds``)."""
    folded = spec.ensemble_validation != "split"
    if folded:
        pooled = FOLD_SPLITS[spec.ensemble_validation]
        pool = data.manifest[data.manifest["split"].isin(pooled)].reset_index(drop=True)
        folds = patient_folds(pool, spec.ensemble, seed=config.data.split_seed, origin=data.source.spec)
        out_of_fold = np.full((len(pool), len(data.class_names)), np.nan)
    members, summaries = [], []
    for i in range(1, spec.ensemble + 1):
        keras.utils.set_random_seed(config.training.seed + i - 1)
        member = dataclasses.replace(
            spec, name=f"{spec.name}_member{i}", ensemble=1, ensemble_validation="split"
        )
        member_data = _member_data(data, pool, folds, i - 1) if folded else data
        # a member without fine-tuning has one phase
        [(_, model, summary, _)] = list(_train_model(member, config, member_data, run_dir))
        model = inference_model(model)
        probs = predict_proba(model, member_data.val)
        if folded:
            in_fold = folds == i - 1
            out_of_fold[in_fold] = probs
            y_held = pool.loc[in_fold, "target"].to_numpy()
            summary["fold_patients"] = int(pool.loc[in_fold, "patient_id"].nunique())
        else:
            y_held = data.split("val")["target"].to_numpy()
        val = classification_metrics(y_held, probs, data.class_names)
        summary = {**summary, "seed": config.training.seed + i - 1, "val_auc": val.get("auc")}
        where = f"fold {i}" if folded else "validation"
        print(f"{member.name}: {where} AUC {val.get('auc') or float('nan'):.3f}, F1 {val['f1']:.3f}")
        members.append(model)
        summaries.append(summary)
    model = average_ensemble(members, spec.name)
    held_out = HeldOut(pool, out_of_fold, folds) if folded else None
    summary = {
        "ensemble": spec.ensemble,
        "members": summaries,
        "epochs_run": sum(s["epochs_run"] for s in summaries),
        "wall_seconds": round(sum(s.get("wall_seconds") or 0.0 for s in summaries), 1),
        "weights": summaries[0]["weights"],
        "monitor": config.training.monitor,
        "stopped_on": held_out.description if folded else "validation",
    }
    return spec.name, model, summary, held_out


def weights_provenance(model_config, model) -> str:
    """Where the model's starting weights came from, as the report says it."""
    record = encoder_record(model)
    if record is not None:
        return f"encoder: {record.provenance}"
    weights = getattr(model_config, "weights", None)
    # a from-scratch family reads ``imagenet`` (the old shared default) as random initialisation
    return provenance(None if weights == "imagenet" else weights)


def evaluate_model(
    name,
    model,
    data: PreparedData,
    config: ExperimentConfig,
    run_dir: Path,
    training: dict,
    held_out: HeldOut | None = None,
):
    """Score `model` on validation and test. A fold ensemble whose folds pool the validation patients
    (`held_out` covers them; the averaged model has seen every one) is judged on its out-of-fold
    predictions, and its threshold and calibration come from all of them, training patients' included;
    one whose folds hold training patients only is judged and tuned on the validation split like any model,
    its out-of-fold predictions saved beside."""
    model = inference_model(model)  # probabilities only: side outputs (aux_mask) are for the loss
    names = data.class_names
    y_val = data.split("val")["target"].to_numpy()
    y_test = data.split("test")["target"].to_numpy()
    if held_out is not None:
        write_csv(run_dir / f"out_of_fold_{name}.csv", held_out.table(data.config.view, names))
    if held_out is None or not held_out.covers_validation:
        val_probs = predict_proba(model, data.val)
        tuning_probs, y_tuning, fitted_on = val_probs, y_val, "validation"
    else:
        val_probs = held_out.split_probs("val")
        tuning_probs, fitted_on = held_out.probs, held_out.description
        y_tuning = held_out.frame["target"].to_numpy()
    test_probs = predict_proba(model, data.test)
    path = save_run_model(run_dir, name, model)
    result = ModelResult(
        name,
        path,
        val_probs,
        test_probs,
        classification_metrics(y_val, val_probs, names),
        classification_metrics(y_test, test_probs, names),
        training,
        held_out=held_out,
    )
    if len(names) == 2:  # the study's F1 is at 0.5; a validation-chosen threshold is reported beside it
        threshold = best_f1_threshold(y_tuning, tuning_probs)
        result.threshold = {
            "threshold": threshold,
            "chosen_on": fitted_on,
            "test": classification_metrics(
                y_test, test_probs, names, y_pred=predictions_at_threshold(test_probs, threshold)
            ),
        }
    if config.evaluation.tta:
        tta = predict_tta(model, data.test)
        result.tta = {
            "mode_of_5": classification_metrics(
                y_test, mean_probability(tta), names, y_pred=mode_of_predictions(tta)
            ),
            "mean_probability": classification_metrics(y_test, mean_probability(tta), names),
        }
    if config.evaluation.temperature_scaling:
        # the prior the members learnt from before balancing: the training split's, or the pooled folds'
        pooled = data.split("train") if held_out is None else held_out.frame
        y_prior = pooled["target"].to_numpy()
        result.calibration = calibration_summary(
            fit_calibration(tuning_probs, y_tuning, y_prior, fitted_on),
            y_test,
            test_probs,
            patients=data.split("test")["patient_id"].to_numpy(),
        )
    return result


def size_only_fit(data: PreparedData) -> SizeOnly | None:
    """The size-only baseline fitted on the training split, or None where the data has no diameters."""
    train = data.split("train")
    if "diameter_mm" not in train.columns:
        return None
    return fit_size_only(train["diameter_mm"], train["target"], data.class_names)


def out_of_fold_against_size_only(data: PreparedData, held_out: HeldOut | None) -> dict | None:
    """A fold ensemble's out-of-fold predictions against the size-only baseline cross-fitted over the same
    patient folds: the comparison on every training and validation patient, not only the test split's few.
    None for other models, or where the data has no diameters."""
    if held_out is None or "diameter_mm" not in held_out.frame.columns:
        return None
    y = held_out.frame["target"].to_numpy()
    sizes = cross_fitted_size_only(held_out.frame["diameter_mm"], y, held_out.fold, data.class_names)
    return {
        "predictions": held_out.description,
        **paired_bootstrap_classification(y, held_out.probs, sizes, held_out.frame, data.class_names),
    }


def against_size_only(data: PreparedData, test_probs, size_probs) -> dict | None:
    """AUC and macro F1 against the size-only baseline on the same test patients, with bootstrap intervals."""
    if size_probs is None:
        return None
    test = data.split("test")
    return paired_bootstrap_classification(
        test["target"].to_numpy(), test_probs, size_probs, test, data.class_names
    )


def baselines(
    data: PreparedData, size_only: SizeOnly | None, size_probs: np.ndarray | None
) -> dict[str, dict]:
    """Size-only (diameter) and majority-class baselines on the test split, fitted on training only; the
    size-only one also at nodule and patient level (``levels``)."""
    names = data.class_names
    train, test = data.split("train"), data.split("test")
    y_test = test["target"].to_numpy()
    out = {
        "majority": classification_metrics(
            y_test, majority_baseline(train["target"], len(test), names), names
        )
    }
    if size_probs is not None:
        out["size_only"] = {
            **classification_metrics(y_test, size_probs, names),
            "levels": level_metrics(y_test, size_probs, test, names),
            "fitted": size_only.as_dict(),  # `lungnet evaluate` scores external sets with it
        }
    return out


def scored(y_train, y_val, val_probs, y_test, test_probs, test_frame, names, calibration_data=None) -> dict:
    """Test metrics of one set of probabilities, at slice, nodule and patient level, with the binary
    threshold chosen on validation and the calibration fitted there, as the trained models report them;
    `calibration_data` ``(probs, targets, description)`` fits the calibration on other held-out data."""
    out = {
        **classification_metrics(y_test, test_probs, names),
        "levels": level_metrics(y_test, test_probs, test_frame, names),
        "val": classification_metrics(y_val, val_probs, names),
    }
    if len(names) == 2:
        threshold = best_f1_threshold(y_val, val_probs)
        out["threshold_from_val"] = {
            "threshold": threshold,
            "test": classification_metrics(
                y_test, test_probs, names, y_pred=predictions_at_threshold(test_probs, threshold)
            ),
        }
    calibration_probs, calibration_y, fitted_on = calibration_data or (val_probs, y_val, "validation")
    out["calibration"] = calibration_summary(
        fit_calibration(calibration_probs, calibration_y, y_train, fitted_on),
        y_test,
        test_probs,
        patients=test_frame["patient_id"].to_numpy(),
    )
    return out


def measured_calibration_data(settings, features: pd.DataFrame, frame: pd.DataFrame, y_val, val_probs):
    """The held-out predictions the measured-nodule classifier is calibrated on: cross-fitted on the
    training patients and the validation split's (None, so validation alone, where it is configured so or
    the training split has too few patients to cross-fit)."""
    if settings.calibration != "cross-fitted":
        return None
    y_train = frame["target"].to_numpy()
    held_out = cross_fitted_probs(features, y_train, frame["patient_id"], settings.C, val_probs.shape[1])
    if held_out is None:
        print("measured_nodule: too few training patients to cross-fit; calibrated on validation alone")
        return None
    return (
        np.concatenate([held_out, val_probs]),
        np.concatenate([y_train, y_val]),
        f"cross-fitted training ({CALIBRATION_FOLDS} patient folds) + validation",
    )


def mean_calibration_data(measured: tuple | None, network: HeldOut | None) -> tuple | None:
    """Held-out predictions of the mean of the measured classifier and a fold ensemble on the training and
    validation rows, where both have them (each row's two predictions come from fits without its patient);
    None, so validation alone, otherwise (also for folds of training patients only: there the validation
    split holds the averaged members' predictions, as the test split does)."""
    if measured is None or network is None or not network.covers_validation:
        return None
    probs, y, description = measured
    held = network.by_split("train", "val").probs
    return (probs + held) / 2, y, f"mean of {description} and {network.description}"


def held_out_against_size_only(data: PreparedData, held: tuple | None, network: HeldOut | None):
    """Held-out predictions `held` ``(probs, targets, description)`` of the training rows, then the
    validation rows, against the size-only baseline cross-fitted over the fold ensemble `network`'s patient
    folds (None where either is missing): the image-only rows judged on every pooled patient, as the fold
    ensemble is by `out_of_fold_against_size_only`."""
    if held is None or network is None:
        return None
    probs, y, description = held
    pooled = network.by_split(*network.splits)
    n = len(pooled.frame)  # `held` lists training rows first: folds of training patients take those only
    if n < len(y):
        probs, y, description = probs[:n], y[:n], f"{description}: the training rows"
    if not np.array_equal(y, pooled.frame["target"].to_numpy()):
        raise DataError(
            f"held-out predictions: their rows are not the fold ensemble's rows ({' + '.join(network.splits)})"
        )
    return out_of_fold_against_size_only(
        data, dataclasses.replace(pooled, probs=probs, predicted_by=description)
    )


def measured_split_features(
    data: PreparedData,
    view: str,
    seg_dir: Path,
    tta: bool,
    splits: tuple[str, ...] = ("train", "val", "test"),
    progress: bool = True,
) -> tuple[dict, dict, dict]:
    """``(frames, features, masks)`` of `splits`: each split's rows, the measured-nodule features of its
    slices, and the masks the segmenter of `seg_dir` predicted for them (keyed by image path)."""
    column = image_column(data.manifest, view)
    rows = data.manifest[data.manifest["split"].isin(splits)]
    masks = predict_masks(seg_dir, rows, column, tta, progress)
    frames = {s: data.split(s) for s in splits}
    return frames, {s: measured_features(f, column, masks) for s, f in frames.items()}, masks


def measured_nodule_results(
    config: ExperimentConfig,
    data: PreparedData,
    selected: ModelResult,
    run_dir: Path,
    size_probs: np.ndarray | None,
    progress: bool,
) -> dict:
    """The image-only measured-nodule classifier (`lungnet.evaluation.measured_nodule`; its segmenter from
    `lungnet.studies.measured_segmenter`), and its mean with the selected network's probabilities; both
    scored on the test split like the trained models."""
    settings = config.measured_nodule
    seg_dir = train_segmenter(
        settings, data.source.manifest, data.manifest, config.data.view, run_dir, progress
    )
    frames, features, masks = measured_split_features(
        data, config.data.view, seg_dir, settings.tta, progress=progress
    )
    n = len(data.class_names)
    fitted = fit_measured(features["train"], frames["train"]["target"], settings.C)
    save_fitted(fitted, run_dir)  # `lungnet evaluate` scores external sets with it
    val_probs, test_probs = fitted.predict(features["val"], n), fitted.predict(features["test"], n)
    y_train = frames["train"]["target"].to_numpy()
    y_val, y_test = frames["val"]["target"].to_numpy(), frames["test"]["target"].to_numpy()
    found = features["test"]["found"].to_numpy()
    calibration_data = measured_calibration_data(
        settings, features["train"], frames["train"], y_val, val_probs
    )
    measured = scored(
        y_train, y_val, val_probs, y_test, test_probs, frames["test"], data.class_names, calibration_data
    )
    measured["segmenter"] = {
        "run": str(seg_dir),
        "test_slices_without_region": int((found == 0).sum()),
        "dice_by_split": segmenter_dice_by_split(
            frames,
            image_column(data.manifest, config.data.view),
            mask_column(data.manifest, config.data.view),
            masks,
        ),
    }
    measured["against_size_only"] = against_size_only(data, test_probs, size_probs)
    mean_val = (val_probs + selected.val_probs) / 2
    mean_test = (test_probs + selected.test_probs) / 2
    mean_calibration = mean_calibration_data(calibration_data, selected.held_out)
    write_csv(
        run_dir / "measured_nodule_predictions.csv",
        probability_table(frames["test"], config.data.view, test_probs, data.class_names),
    )
    mean = scored(
        y_train,
        y_val,
        mean_val,
        y_test,
        mean_test,
        frames["test"],
        data.class_names,
        mean_calibration,
    )
    mean["against_size_only"] = against_size_only(data, mean_test, size_probs)
    measured["out_of_fold_against_size_only"] = held_out_against_size_only(
        data, calibration_data, selected.held_out
    )
    mean["out_of_fold_against_size_only"] = held_out_against_size_only(
        data, mean_calibration, selected.held_out
    )
    return {MEASURED_ROW: measured, mean_row(selected.name): mean}


def predictions_table(data: PreparedData, result: ModelResult) -> pd.DataFrame:
    table = probability_table(data.split("test"), data.config.view, result.test_probs, data.class_names)
    table.insert(3, "pred", [data.class_names[i] for i in result.test_probs.argmax(axis=1)])
    return table


def run_classification_study(config: ExperimentConfig, run_dir: Path, progress: bool = True) -> dict:
    """Train, evaluate and report every model of `config` into `run_dir`; returns the metrics summary."""
    from lungnet.reports.classification import write_report
    from lungnet.studies.explanations import explain_selected

    save_config(run_dir, config)
    set_global_options(config.training)
    data = prepare_data(config.data, progress=progress)
    results: dict[str, ModelResult] = {}
    skipped: dict[str, str] = {}
    for spec in config.models:
        try:  # evaluate each phase as it finishes: fine-tuning continues from the same model object
            for name, model, summary, held_out in _train_model(spec, config, data, run_dir, progress):
                results[name] = evaluate_model(name, model, data, config, run_dir, summary, held_out)
                results[name].explanation_layer = CLASSIFIERS.entry_for(spec.model).explanation_layer(
                    spec.model
                )
                val_f1, test_f1 = results[name].val_metrics["f1"], results[name].test_metrics["f1"]
                print(f"{name}: validation F1 {val_f1:.3f}, test F1 {test_f1:.3f}")
        except SkippedModel as exc:
            skipped[spec.name] = str(exc)
    if not results:
        raise LungnetError(f"no model was trained: {skipped}")
    selected = max(results.values(), key=lambda r: r.val_metrics["f1"])
    write_csv(run_dir / "predictions.csv", predictions_table(data, selected))
    size_only = size_only_fit(data)
    size_probs = None if size_only is None else size_only.predict(data.split("test")["diameter_mm"])
    summary = {
        **{k: selected.test_metrics[k] for k in ("f1", "f1_macro", "precision", "recall", "accuracy", "auc")},
        "selected_model": selected.name,
        "class_names": list(data.class_names),
        "grouping": config.data.grouping,
        "selection": "best validation F1 (binary: F1 of the malignant class; 5-class: macro F1)",
        "split": "test",
        "data": data.source.description,
        "n_test": int(len(data.split("test"))),
        # the selected model's test split at nodule level (mean over slices) and patient level
        "levels": level_metrics(
            data.split("test")["target"].to_numpy(), selected.test_probs, data.split("test"), data.class_names
        ),
        "models": {
            r.name: {
                "threshold_from_val": r.threshold,
                "val": r.val_metrics,
                "test": r.test_metrics,
                "tta": r.tta,
                "calibration": r.calibration,
                "training": r.training,
                # a fold ensemble: its out-of-fold predictions against the diameter, on the pooled patients
                "out_of_fold_against_size_only": out_of_fold_against_size_only(data, r.held_out),
            }
            for r in results.values()
        },
        "baselines": baselines(data, size_only, size_probs),
        # the selected model against the diameter on the same test patients (bootstrap intervals)
        "against_size_only": against_size_only(data, selected.test_probs, size_probs),
        "skipped_models": skipped,
    }
    if config.measured_nodule.enabled:  # image-only rows beside the trained models (not selectable)
        summary["image_only"] = measured_nodule_results(config, data, selected, run_dir, size_probs, progress)
    summary["recommended"] = recommended_model(summary)
    write_json(run_dir / "metrics.json", summary)
    explanations = explain_selected(config, data, selected, run_dir) if config.evaluation.explain else {}
    write_report(run_dir, config, data, results, selected, summary, explanations)
    return summary


def classification_summary_line(summary: dict) -> str:
    name = summary["selected_model"]
    auc = summary["auc"] if summary.get("auc") is not None else float("nan")
    line = f"selected model {name}: test F1 {summary['f1']:.3f}, AUC {auc:.3f} ({summary['data']})"
    if summary.get("image_only"):
        line += "\n" + recommended_line(summary)
    return line


register_study(
    Study(
        task="classification",
        run=run_classification_study,
        evaluate=evaluate_classification_run,
        summary_line=classification_summary_line,
        predict=predict_classification_run,
    )
)
