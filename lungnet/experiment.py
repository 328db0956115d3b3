"""Experiment files: one YAML per reproduced table, validated on load.

An experiment names its data, the models to train (each with its own schedule), training settings,
evaluation options, the published numbers it reproduces, and named profiles: partial configs merged over
the base (``default`` for a quick CPU run, ``full`` for the study's settings on a GPU).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lungnet.config import from_dict, load_yaml
from lungnet.data.dataset import DataConfig
from lungnet.data.segmentation import SegmentationDataConfig
from lungnet.errors import ConfigError
from lungnet.evaluation.measured_nodule import MeasuredNoduleConfig, SegmenterRecipe
from lungnet.evaluation.radiomics_baseline import RadiomicsBaselineConfig
from lungnet.losses import LossConfig
from lungnet.models import CLASSIFIERS, ClassifierConfig, SegmenterConfig
from lungnet.models.contract import MASK_INPUT_NAME
from lungnet.postprocess.crf import CRFConfig
from lungnet.pretraining import PretrainConfig
from lungnet.training.fit import TrainingConfig
from lungnet.training.multiscale import check_rates
from lungnet.training.pseudo_labels import LabelBudgetConfig, SemiConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


@dataclass(frozen=True)
class ModelSpec:
    """One model of an experiment. `fine_tune` adds a second, fine-tuned model continuing from the first."""

    name: str
    model: ClassifierConfig  # a registered classifier, chosen by the mapping's ``name``
    fine_tune: bool = False
    # When ImageNet weights cannot be downloaded: stop with the error (default), start the encoder from the
    # Models Genesis base of this study's training patients ("genesis": built with the experiment's
    # `pretraining:` settings, or reused from the cache), train from random initialisation instead
    # ("random_init"), or leave this model out and say so in the report ("skip").
    if_weights_unavailable: Literal["error", "genesis", "random_init", "skip"] = "error"
    # Train this many copies from seeds training.seed, +1, ... and average their probabilities (one model,
    # `lungnet.models.ensemble`). 1: a single model.
    ensemble: int = 1
    # What an ensemble's members stop on and are calibrated on: the validation split ("split"), or
    # "patient-folds": the training and validation patients pooled into `ensemble` patient folds, member i
    # trained on the others and early-stopped on fold i; its out-of-fold predictions (every pooled row
    # predicted by the member that never saw its patient) choose the threshold and fit the calibration.
    # "training-folds": the training patients alone in `ensemble` folds, member i stopped on fold i; the
    # validation split stays outside every member, so its predictions are the average of all members, as
    # the test split's are, and they choose the threshold, fit the calibration and judge the model against
    # the others (a single member's out-of-fold predictions are sharper and less accurate than the mean).
    ensemble_validation: Literal["split", "patient-folds", "training-folds"] = "split"

    def __post_init__(self):
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 1:
            raise ConfigError(f"models[{self.name}].ensemble: {self.ensemble!r} must be an integer >= 1")
        if self.ensemble_validation != "split" and self.ensemble < 2:
            raise ConfigError(
                f"models[{self.name}].ensemble_validation: {self.ensemble_validation} needs ensemble >= 2 "
                f"(one fold per member), got ensemble {self.ensemble}"
            )
        if self.ensemble > 1 and self.fine_tune:
            raise ConfigError(
                f"models[{self.name}]: ensemble ({self.ensemble}) with fine_tune is not supported; "
                "ensemble a model without fine-tuning, or fine-tune a single model"
            )


@dataclass(frozen=True)
class EvaluationConfig:
    tta: bool = (
        True  # test-time augmentation: the mode of 5 transforms' predictions, and the mean probability
    )
    temperature_scaling: bool = True  # fitted on the validation split
    explain: bool = True  # Grad-CAM, Grad-CAM++, LIME, retrieval for the selected model
    explain_samples: int = 4
    lime_samples: int = 300
    retrieval_k: int = 5
    outliers: bool = True  # autoencoder latent space + PCA + IsolationForest
    autoencoder_epochs: int = 5

    def __post_init__(self):
        # checked when the config loads, not after training (LIME needs enough perturbed samples to fit)
        minimum = {"explain_samples": 1, "lime_samples": 10, "retrieval_k": 1, "autoencoder_epochs": 1}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ConfigError(f"evaluation.{name}: {getattr(self, name)} must be >= {low}")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    models: tuple[ModelSpec, ...] = ()
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # self-supervised pretraining of encoders whose weights are ``genesis`` (`lungnet.pretraining`)
    pretraining: PretrainConfig = field(default_factory=PretrainConfig)
    # image-only: a segmenter trained on the training patients measures the nodule (`measured_nodule`)
    measured_nodule: MeasuredNoduleConfig = field(default_factory=MeasuredNoduleConfig)
    task: Literal["classification"] = "classification"
    published: dict[str, float] = field(default_factory=dict)  # model name -> published test F1 (%)
    published_source: str = ""
    profile: str = "base"

    def __post_init__(self):
        check_models(self)
        if self.measured_nodule.enabled and self.data.view != "crop":
            # the nodule is taken as the predicted region nearest the image centre: true of crops only
            raise ConfigError(
                f"measured_nodule.enabled needs data.view: crop (got {self.data.view!r}): on a full "
                "slice the region nearest the centre is not the nodule"
            )


def check_models(config) -> None:
    """What every experiment's model list must satisfy: named, uniquely, masks for mask heads, and as many
    ratings in ``data.attribute_targets`` as an attribute head rates."""
    if not config.models:
        raise ConfigError("models: an experiment needs at least one model")
    names = [m.name for m in config.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models: names must be unique, got {names}")
    segmenting = [m.name for m in config.models if getattr(m.model, "mask_head", False)]
    if segmenting and not config.data.masks:
        raise ConfigError(
            f"models {segmenting} have mask_head: true and learn from masks: set data.masks to true "
            "(the source needs a mask column)"
        )
    wanted = len(getattr(config.data, "attribute_targets", ()))
    for m in config.models:
        rated = getattr(m.model, "attributes", 0)
        if rated and rated != wanted:
            raise ConfigError(
                f"models[{m.name}].model.attributes: {rated}, but data.attribute_targets names {wanted} "
                "ratings: the head rates each of them, so make them the same"
            )
    folded = [m.name for m in config.models if getattr(m, "ensemble_validation", "split") != "split"]
    soft = [k for k in ("reader_targets", "train_on_excluded") if getattr(config.data, k, False)]
    if folded and soft:
        # those targets exist on the training split only, and members would stop on folds of it
        raise ConfigError(
            f"models {folded} stop fold-ensemble members on folds of training patients; "
            f"data.{soft[0]} gives training rows other targets than validation's, so use one or the other"
        )


@dataclass(frozen=True)
class SegmentationModelSpec:
    name: str
    model: SegmenterConfig  # a registered segmenter, chosen by the mapping's ``name``
    learning_rate: float | None = None  # this model's own rate (the zoo's); None: training.learning_rate

    def __post_init__(self):
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"models[{self.name}].learning_rate: {self.learning_rate} must be > 0")


@dataclass(frozen=True)
class PostprocessConfig:
    threshold: float = 0.5  # probability -> mask
    crf: CRFConfig = field(default_factory=CRFConfig)  # every metric is reported with and without it
    # Choose the CRF's bilateral kernel (srgb x compat grid) per model by validation Dice, never on test.
    tune_crf: bool = True

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ConfigError(f"postprocess.threshold: {self.threshold} must be in (0, 1)")


@dataclass(frozen=True)
class SegmentationEvaluationConfig:
    small_diameter_mm: float = 10.0  # a lesion is small below this equivalent diameter
    detection_iou: float = 0.3  # a lesion is detected when its IoU with the predicted regions reaches this
    intensity_test: bool = True  # Dice under the fixed brightness / contrast / noise perturbations
    reader_agreement: bool = True  # reader-to-reader Dice on the test nodules (LIDC-derived sources)
    figure_samples: int = 6
    # test-time augmentation: the mean probability map over the identity, two flips and two quarter turns
    # (each mapped back), for validation, test, the intensity test and `lungnet evaluate`
    tta: bool = False

    def __post_init__(self):
        if self.figure_samples < 1:
            raise ConfigError(f"evaluation.figure_samples: {self.figure_samples} must be >= 1")
        if not self.small_diameter_mm > 0:
            raise ConfigError(f"evaluation.small_diameter_mm: {self.small_diameter_mm} must be > 0")
        if not 0 < self.detection_iou <= 1:
            raise ConfigError(f"evaluation.detection_iou: {self.detection_iou} must be in (0, 1]")


@dataclass(frozen=True)
class SegmentationExperimentConfig:
    """A segmentation study: models trained with one loss, evaluated with and without the dense CRF."""

    name: str
    task: Literal["segmentation"] = "segmentation"
    data: SegmentationDataConfig = field(default_factory=SegmentationDataConfig)
    models: tuple[SegmentationModelSpec, ...] = ()
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    evaluation: SegmentationEvaluationConfig = field(default_factory=SegmentationEvaluationConfig)
    published: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metric -> value
    published_source: str = ""
    profile: str = "base"

    def __post_init__(self):
        check_models(self)


@dataclass(frozen=True)
class InfNetModelSpec:
    """A model of the Inf-Net study. With ``semi``, Semi-Inf-Net: pseudo-label rounds on the unlabelled
    patients, starting from the trained weights of the earlier model ``start_from`` (the same architecture,
    trained on the labelled patients) or, without it, from its own training on the labelled patients.
    ``multiscale_rates`` (Inf-Net models only): the paper's multi-scale training, each training batch
    trained once at each of these rates times the input size (`lungnet.training.multiscale`)."""

    name: str
    model: SegmenterConfig
    semi: SemiConfig | None = None
    start_from: str | None = None
    multiscale_rates: tuple[float, ...] | None = None

    def __post_init__(self):
        field_name = f"models[{self.name}].multiscale_rates"
        rates = check_rates(self.multiscale_rates, field_name)
        object.__setattr__(self, "multiscale_rates", rates)
        if rates and self.model.name != "inf_net":
            raise ConfigError(
                f"{field_name}: only Inf-Net models train at several sizes (their resizes follow the "
                f"batch's size); {self.model.name!r} is built for one input size"
            )


@dataclass(frozen=True)
class InfNetBaselinesConfig:
    radiomics: RadiomicsBaselineConfig = field(default_factory=RadiomicsBaselineConfig)


@dataclass(frozen=True)
class InfNetEvaluationConfig(SegmentationEvaluationConfig):
    """The segmentation evaluation plus Inf-Net's map metrics and the slice detection criteria."""

    intensity_test: bool = False
    detection_min_iou: float = 0.0  # a nodule slice is detected when the predicted mask overlaps it this much
    detection_min_area: int = 1  # pixels: a slice is flagged when the predicted mask has at least this many

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.detection_min_iou <= 1:
            raise ConfigError(f"evaluation.detection_min_iou: {self.detection_min_iou} must be in [0, 1]")
        if self.detection_min_area < 1:
            raise ConfigError(f"evaluation.detection_min_area: {self.detection_min_area} must be >= 1")


@dataclass(frozen=True)
class InfNetExperimentConfig(SegmentationExperimentConfig):
    """The Inf-Net study: segmenters at a label budget, Semi-Inf-Net's pseudo-label rounds, the radiomics
    SVM baselines."""

    task: Literal["inf_net"] = "inf_net"
    models: tuple[InfNetModelSpec, ...] = ()
    labels: LabelBudgetConfig = field(default_factory=LabelBudgetConfig)
    baselines: InfNetBaselinesConfig = field(default_factory=InfNetBaselinesConfig)
    evaluation: InfNetEvaluationConfig = field(default_factory=InfNetEvaluationConfig)

    def __post_init__(self):
        super().__post_init__()
        earlier: dict[str, InfNetModelSpec] = {}
        for spec in self.models:
            if spec.start_from is not None:
                if spec.semi is None:
                    raise ConfigError(
                        f"models[{spec.name}].start_from: only a model with 'semi' starts from another"
                    )
                source = earlier.get(spec.start_from)
                if source is None:
                    raise ConfigError(
                        f"models[{spec.name}].start_from: {spec.start_from!r} is not an earlier model; "
                        f"earlier: {sorted(earlier)}"
                    )
                if source.model != spec.model:
                    raise ConfigError(
                        f"models[{spec.name}].start_from: {spec.start_from!r} is another architecture; the "
                        "pseudo-label rounds continue from its weights, so both need the same 'model'"
                    )
            earlier[spec.name] = spec


MASK_KINDS = ("readers", "predicted")  # the readers' consensus outline, or the run's segmenter's


@dataclass(frozen=True)
class FusionModelSpec:
    """A model of the nodule-fusion study: a classifier that reads an image and a nodule mask, trained in
    ``phases``, each on the training split with one kind of mask: the readers' outlines (``readers``),
    then the run's segmenter's (``predicted``), the masks it will see at inference. The first phase uses
    ``training.epochs`` and ``training.learning_rate``, a later one ``training.fine_tune_epochs`` and
    ``training.fine_tune_learning_rate``; each validates on the masks it trains on."""

    name: str
    model: ClassifierConfig
    phases: tuple[str, ...] = MASK_KINDS

    def __post_init__(self):
        phases = self.phases
        if (
            not isinstance(phases, list | tuple)
            or not phases
            or any(p not in MASK_KINDS for p in phases)
            or len(set(phases)) != len(phases)
        ):
            raise ConfigError(
                f"models[{self.name}].phases: {phases!r} must list each of {list(MASK_KINDS)} at most once, "
                "in training order (for example [readers, predicted])"
            )
        object.__setattr__(self, "phases", tuple(phases))


@dataclass(frozen=True)
class FusionSegmenterConfig(SegmenterRecipe):
    """``segmenter`` of a nodule-fusion experiment: the recipe, and where the training patients' masks for the
    segmenter's-mask phase come from."""

    # 0: the run's segmenter, which trained on those patients (its masks there can be sharper than a new
    # patient's: `segmenter.by_split` in metrics.json says); k >= 2: k more segmenters, each trained without one
    # of k folds of the training patients, draw that fold's masks as a new patient's are (k more trainings)
    cross_fit_folds: int = 0

    def __post_init__(self):
        if self.cross_fit_folds < 0 or self.cross_fit_folds == 1:
            raise ConfigError(
                f"segmenter.cross_fit_folds: {self.cross_fit_folds!r}; 0 (off) or a number of folds >= 2"
            )


@dataclass(frozen=True)
class NoduleFusionExperimentConfig:
    """The multi-dataset study's classification half: classifiers of an image and its nodule mask
    (NoduleHyperFusionNet), trained on the readers' masks then on a segmenter's, judged on the segmenter's
    masks (image-only) beside the readers' (a reference) and the diameter, per slice, nodule and patient."""

    name: str
    task: Literal["nodule_fusion"] = "nodule_fusion"
    data: DataConfig = field(default_factory=DataConfig)
    models: tuple[FusionModelSpec, ...] = ()
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # the segmenter whose masks the classifiers read at inference, trained on this run's training patients
    segmenter: FusionSegmenterConfig = field(default_factory=FusionSegmenterConfig)
    published: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metric -> value
    published_source: str = ""
    profile: str = "base"

    def __post_init__(self):
        check_models(self)
        for spec in self.models:
            if MASK_INPUT_NAME not in CLASSIFIERS.entry_for(spec.model).extra_inputs:
                readers = [
                    n for n in CLASSIFIERS.names() if MASK_INPUT_NAME in CLASSIFIERS.get(n).extra_inputs
                ]
                raise ConfigError(
                    f"models[{spec.name}].model: {spec.model.name!r} reads no nodule mask; this study's "
                    f"models read one: {readers}"
                )
        if self.data.view != "crop":
            raise ConfigError(
                f"data.view: {self.data.view!r}; the nodule-fusion study reads nodule crops (view: crop), "
                "where the mask outlines the one nodule classified"
            )
        if self.data.neighbour_slices or self.data.masks or self.data.attribute_targets:
            raise ConfigError(
                "data.neighbour_slices, data.masks and data.attribute_targets are not used by the "
                "nodule-fusion study (its models read one slice and its mask); leave them out"
            )


EXPERIMENT_CONFIGS: dict[str, type] = {
    "classification": ExperimentConfig,
    "segmentation": SegmentationExperimentConfig,
    "inf_net": InfNetExperimentConfig,
    "nodule_fusion": NoduleFusionExperimentConfig,
}


def config_class(raw: dict) -> type:
    """The experiment dataclass for a raw config, by its ``task`` key (classification when absent)."""
    task = raw.get("task", "classification")
    if task not in EXPERIMENT_CONFIGS:
        raise ConfigError(f"task: {task!r} is not one of {sorted(EXPERIMENT_CONFIGS)}")
    return EXPERIMENT_CONFIGS[task]


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def load_experiment(
    path: str | Path, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read, merge the profile and overrides, and validate. Errors name the file and the key."""
    path = Path(path)
    raw = _load_with_base(path)
    profiles = raw.pop("profiles", {}) or {}
    if profile is not None and profile != "base":
        if profile not in profiles:
            raise ConfigError(f"{path}: no profile {profile!r}; profiles: {sorted(profiles) or 'none'}")
        raw = deep_merge(raw, profiles[profile])
    raw["profile"] = profile or "base"
    if not overrides:
        return from_dict(config_class(raw), raw, str(path))
    from_dict(config_class(raw), copy.deepcopy(raw), str(path))  # the file's own errors name the file
    merged = deep_merge(raw, overrides)
    try:
        return from_dict(config_class(merged), merged, str(path))
    except ConfigError as exc:  # the file was valid, so the value came from the command line
        raise ConfigError(f"--set {_without_file(str(exc), str(path))}") from None


def _without_file(message: str, path: str) -> str:
    """``x.yaml.training: training.epochs: 0 ...`` -> ``training.epochs: 0 ...`` (the key, not the file)."""
    if not message.startswith(path):
        return message
    head, _, tail = message[len(path) :].lstrip(".:").lstrip().partition(": ")
    return tail if tail.startswith(head) else f"{head}: {tail}"


def _load_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML file with an optional ``base: other.yaml`` (relative to it) whose contents it overrides."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files form a loop: {[str(p) for p in seen]}")
    raw = load_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return deep_merge(_load_with_base(path.parent / base, (*seen, path.resolve())), raw)


def resolve_experiment_path(name_or_path: str) -> Path:
    """`binary_nodule`, `binary-nodule` or a path -> the YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: experiment file not found")
        return path
    candidate = EXPERIMENTS_DIR / f"{name_or_path.replace('-', '_')}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise ConfigError(f"no experiment {name_or_path!r}; known: {known}")
    return candidate
