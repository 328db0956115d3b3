"""A finished run's artefacts: its trained models, their preprocessing and class names, evaluation folders.

Studies and serving both read runs through this module, and not each other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras

from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import LungnetError
from lungnet.fileio import atomic_path
from lungnet.runs.folder import new_run_dir, require_files, unique_dir

MODELS_DIR = "models"
METRICS_FILE = "metrics.json"


def run_metrics(run_dir: Path) -> dict:
    require_files(run_dir, METRICS_FILE)
    return json.loads((run_dir / METRICS_FILE).read_text())


def selected_model_name(run_dir: Path) -> str:
    return run_metrics(run_dir)["selected_model"]


def model_path(run_dir: Path, name: str) -> Path:
    return run_dir / MODELS_DIR / f"{name}.keras"


def save_run_model(run_dir: Path, name: str, model: keras.Model) -> Path:
    """Save a trained model (``probabilities`` only: side outputs are for training) to ``models/``."""
    from lungnet.models import inference_model

    path = model_path(run_dir, name)
    with atomic_path(path, suffix=".keras") as tmp:  # a kill mid-save leaves no 0-byte model behind
        inference_model(model).save(tmp)
    return path


def run_model_names(run_dir: Path) -> list[str]:
    """The names of the trained models a run saved in ``models/``."""
    return sorted(p.stem for p in (Path(run_dir) / MODELS_DIR).glob("*.keras"))


def load_run_model(run_dir: str | Path, model_name: str | None = None) -> tuple[keras.Model, str]:
    """The trained Keras model of a run (the selected one unless `model_name` is given)."""
    run_dir = Path(run_dir)
    name = model_name or selected_model_name(run_dir)
    path = model_path(run_dir, name)
    if not path.is_file():
        raise LungnetError(
            f"{run_dir}: no trained model {name!r} ({MODELS_DIR}/{name}.keras); available: "
            f"{run_model_names(run_dir)}"
        )
    import lungnet.losses  # noqa: F401  (registers the losses a saved model may name)
    import lungnet.models  # noqa: F401  (registers lungnet's serialisable layers)

    try:
        return keras.models.load_model(path, compile=False), name
    except Exception as exc:  # a truncated or foreign file
        raise LungnetError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from exc


def run_preprocess(run_dir: Path, config) -> PreprocessConfig:
    """The preprocessing a run's models were trained with.

    A run that fitted statistics on its training split (the segmentation study's dataset z-score) records
    the resolved preprocessing in ``metrics.json``; otherwise it is the experiment's own.
    """
    resolved = run_metrics(run_dir).get("preprocess")
    return PreprocessConfig(**resolved) if resolved else config.data.preprocess


def run_class_names(run_dir: Path) -> list[str] | None:
    path = run_dir / METRICS_FILE
    return json.loads(path.read_text()).get("class_names") if path.is_file() else None


def evaluation_dir(run_dir: Path, source_spec: str, out=None, folder: str = "evaluations") -> Path:
    """`out`, or a new ``RUN/<folder>/<source>-<UTC time>``; created. An evaluation (or a prediction, with
    `folder` ``predictions``) never writes into the run's own results: `out` may not be the run folder (or
    inside it, but for `folder`), nor a folder that already holds files."""
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(source_spec).stem or source_spec).strip("-")
        return unique_dir(run_dir / folder, f"{slug}-")
    out, run = Path(out), Path(run_dir).resolve()
    target = out.resolve()
    if target == run or (run in target.parents and (run / folder) not in [target, *target.parents]):
        raise LungnetError(
            f"--out {out}: inside run {run_dir}, whose own results it would overwrite; choose a folder outside "
            f"it, or leave --out out (they go to {run_dir / folder})"
        )
    return new_run_dir("", out)
