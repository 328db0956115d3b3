"""Run folders: ``runs/<experiment>/<UTC timestamp>/`` with the resolved config and every artefact of a run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from lungnet.config import from_dict, to_dict
from lungnet.errors import LungnetError
from lungnet.experiment import config_class
from lungnet.fileio import write_text
from lungnet.models import CLASSIFIERS, SEGMENTERS

CONFIG_FILE = "config.yaml"

# The keys of the one flat model config of run folders made before the model registry: each model's
# config.yaml entry held all of them, including those of other families (the custom CNN's `filters` beside
# EfficientNet's `fine_tune_layers`). A family's own config knows its keys; the rest are dropped on load.
LEGACY_MODEL_KEYS = {
    "classification": {"weights", "dropout", "filters", "dense_units", "fine_tune_layers"},
    "segmentation": {"depth", "filters", "batch_norm", "dropout"},
}


def new_run_dir(experiment: str, out: str | Path | None = None) -> Path:
    """A fresh folder `out` (if given) or ``runs/<experiment>/<UTC timestamp>``."""
    if out is not None:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            raise LungnetError(f"{path}: output folder exists and is not empty; choose another --out")
    else:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path("runs") / experiment / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_config(run_dir: Path, config) -> Path:
    return write_text(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(config), sort_keys=False))


def upgrade_legacy_config(raw: dict) -> dict:
    """A run's saved config with the flat-model-config keys that its families do not have dropped."""
    task = raw.get("task", "classification")
    registry = {"classification": CLASSIFIERS, "segmentation": SEGMENTERS}.get(task)
    legacy = LEGACY_MODEL_KEYS.get(task, set())
    for spec in raw.get("models") or []:
        model = spec.get("model") if isinstance(spec, dict) else None
        if registry is None or not isinstance(model, dict) or model.get("name") not in registry:
            continue
        fields = set(registry.get(model["name"]).config_class.__dataclass_fields__)
        for key in (set(model) & legacy) - fields:
            del model[key]
    return raw


def load_run_config(run_dir: str | Path):
    """The experiment config a run was made with (for resume, evaluate and export)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise LungnetError(f"{run_dir}: run folder not found")
    if not path.is_file():
        raise LungnetError(f"{run_dir}: not a lungnet run folder (no {CONFIG_FILE})")
    raw = upgrade_legacy_config(yaml.safe_load(path.read_text()))
    return from_dict(config_class(raw), raw, str(path))


def require_files(run_dir: Path, *names: str) -> None:
    missing = [n for n in names if not (run_dir / n).exists()]
    if missing:
        raise LungnetError(
            f"{run_dir}: run folder is missing {', '.join(missing)} (was the run interrupted?)"
        )
