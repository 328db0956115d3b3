"""TF Serving's model-server layout for trained runs (`lungnet serve-config RUN... --out DIR`).

``DIR/<name>/<version>/`` holds each run's SavedModel (exported first if the run has none) and
``DIR/models.config`` lists them in TF Serving's text format, so the official image serves them all::

    docker run -p 8500:8500 -p 8501:8501 -v "$PWD/DIR:/models" tensorflow/serving \\
        --model_config_file=/models/models.config

REST: ``POST http://HOST:8501/v1/models/<name>:predict``; gRPC: ``HOST:8500``, ``PredictionService/Predict``.
`lungnet.serving.client` builds both requests from raw images and reads the responses.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lungnet.errors import ConfigError, DataError
from lungnet.fileio import atomic_directory, write_text
from lungnet.runs import load_run_config
from lungnet.serving.export import SAVED_MODEL_DIR, export_run

CONFIG_FILE = "models.config"


def model_name(run_dir: Path) -> str:
    """The served name of a run: its experiment's name (letters, digits, _ and - only)."""
    name = load_run_config(run_dir).name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def serve_config(
    runs: list[str | Path], out: str | Path, names: list[str] | None = None, version: int = 1
) -> Path:
    """Write DIR/<name>/<version>/ for every run and DIR/models.config; returns the config file's path.

    `names` (one per run) override the experiment names; two runs with one name get ``_2``, ``_3``...
    """
    if not runs:
        raise ConfigError("serve-config: give at least one run folder")
    if names is not None and len(names) != len(runs):
        raise ConfigError(f"serve-config: {len(names)} names for {len(runs)} runs")
    if not (isinstance(version, int) and version >= 1):
        raise ConfigError(f"serve-config: version {version!r} must be an integer >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, Path]] = []
    for i, run in enumerate(runs):
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise DataError(f"{run_dir}: run folder not found")
        saved = run_dir / SAVED_MODEL_DIR
        if not (saved / "saved_model.pb").is_file():
            saved = export_run(run_dir)
        name = names[i] if names else model_name(run_dir)
        taken = {n for n, _ in entries}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        with atomic_directory(out / name / str(version)) as tmp:
            shutil.rmtree(tmp)
            shutil.copytree(saved, tmp)
        entries.append((name, run_dir))
    blocks = [
        "  config {\n"
        f"    name: '{name}'\n"
        f"    base_path: '/models/{name}'\n"
        "    model_platform: 'tensorflow'\n"
        "  }"
        for name, _ in entries
    ]
    path = write_text(out / CONFIG_FILE, "model_config_list {\n" + "\n".join(blocks) + "\n}\n")
    return path
