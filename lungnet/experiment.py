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
from lungnet.errors import ConfigError
from lungnet.models.registry import ModelConfig
from lungnet.training.fit import TrainingConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


@dataclass(frozen=True)
class ModelSpec:
    """One model of an experiment. `fine_tune` adds a second, fine-tuned model continuing from the first."""

    name: str
    model: ModelConfig
    fine_tune: bool = False
    # When ImageNet weights cannot be downloaded: stop with the error (default), train from random
    # initialisation instead ("random_init"), or leave this model out and say so in the report ("skip").
    if_weights_unavailable: Literal["error", "random_init", "skip"] = "error"


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


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    models: tuple[ModelSpec, ...] = ()
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    task: Literal["classification"] = "classification"
    published: dict[str, float] = field(default_factory=dict)  # model name -> published test F1 (%)
    published_source: str = ""
    profile: str = "base"

    def __post_init__(self):
        if not self.models:
            raise ConfigError("models: an experiment needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"models: names must be unique, got {names}")


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
    raw = deep_merge(raw, overrides or {})
    raw["profile"] = profile or "base"
    return from_dict(ExperimentConfig, raw, str(path))


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
