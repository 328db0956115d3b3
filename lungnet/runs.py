"""Run folders: ``runs/<experiment>/<UTC timestamp>/`` with the resolved config and every artefact of a run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from lungnet.config import to_dict
from lungnet.errors import LungnetError
from lungnet.fileio import write_text

CONFIG_FILE = "config.yaml"


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


def load_run_config(run_dir: str | Path):
    """The experiment config a run was made with (for resume, evaluate and export)."""
    from lungnet.config import from_dict
    from lungnet.experiment import config_class

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise LungnetError(f"{run_dir}: run folder not found")
    if not path.is_file():
        raise LungnetError(f"{run_dir}: not a lungnet run folder (no {CONFIG_FILE})")
    raw = yaml.safe_load(path.read_text())
    return from_dict(config_class(raw), raw, str(path))


def require_files(run_dir: Path, *names: str) -> None:
    missing = [n for n in names if not (run_dir / n).exists()]
    if missing:
        raise LungnetError(
            f"{run_dir}: run folder is missing {', '.join(missing)} (was the run interrupted?)"
        )
