"""Run folders: ``runs/<experiment>/<UTC timestamp>/`` with the resolved config and every artefact of a run."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import yaml

from lungnet.config import from_dict, to_dict
from lungnet.errors import LungnetError
from lungnet.experiment import config_class
from lungnet.fileio import write_json, write_text
from lungnet.models import CLASSIFIERS, SEGMENTERS

CONFIG_FILE = "config.yaml"
STATUS_FILE = "run.json"  # {"status": "running" | "finished" | "failed", ...}; "finished" is written last

# The keys of the one flat model config of run folders made before the model registry: each model's
# config.yaml entry held all of them, including those of other families (the custom CNN's `filters` beside
# EfficientNet's `fine_tune_layers`). A family's own config knows its keys; the rest are dropped on load.
LEGACY_MODEL_KEYS = {
    "classification": {"weights", "dropout", "filters", "dense_units", "fine_tune_layers"},
    "segmentation": {"depth", "filters", "batch_norm", "dropout"},
}


def _make_dir(path: Path, exist_ok: bool) -> bool:
    """mkdir with errors that name the folder; False if it exists (and `exist_ok` is False)."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if path.is_dir():
            return False
        raise LungnetError(f"{path}: is a file, not a folder; choose another --out") from None
    except NotADirectoryError:
        raise LungnetError(f"{path}: a parent of this folder is a file; choose another --out") from None
    except OSError as exc:
        raise LungnetError(f"{path}: cannot create the folder ({exc.strerror})") from exc
    if not os.access(path, os.W_OK):
        raise LungnetError(f"{path}: the folder is not writable; choose another --out")
    return True


def new_run_dir(experiment: str, out: str | Path | None = None) -> Path:
    """A fresh folder `out` (if given) or ``runs/<experiment>/<UTC timestamp>`` (``-2``, ``-3``... when two runs
    start in the same second: the folder is created exclusively, so no two runs ever share one)."""
    if out is not None:
        path = Path(out)
        if path.is_dir() and any(path.iterdir()):
            raise LungnetError(f"{path}: output folder exists and is not empty; choose another --out")
        _make_dir(path, exist_ok=True)
        return path
    return unique_dir(Path("runs") / experiment)


def unique_dir(parent: Path, prefix: str = "") -> Path:
    """A new folder ``parent/<prefix><UTC timestamp>[-n]``, created exclusively (never shared)."""
    stamp = prefix + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        if _make_dir(path, exist_ok=False):
            return path
    raise LungnetError(f"{parent}: 999 folders made in the same second; choose --out")


ATTEMPT_KEYS = ("running_at", "status", "failed_at", "error", "wall_seconds", "machine")


def mark_status(run_dir: Path, status: str, **details) -> None:
    """Update ``run.json``. A resume (``running`` again) moves the earlier attempt's start, end state, error,
    wall time and machine to ``earlier_attempts``, so a finished run never shows an old error as its own;
    ``finished`` also records the wall time of all attempts together where each attempt's is known."""
    record = run_status(run_dir)
    if status == "running" and "running_at" in record:
        attempt = {key: record.pop(key) for key in ATTEMPT_KEYS if key in record}
        record["earlier_attempts"] = [*record.get("earlier_attempts", []), attempt]
    record = {**record, "status": status, f"{status}_at": dt.datetime.now(dt.UTC).isoformat(), **details}
    earlier = record.get("earlier_attempts", [])
    if status == "finished" and earlier and all("wall_seconds" in a for a in earlier):
        record["wall_seconds_all_attempts"] = round(
            sum(a["wall_seconds"] for a in earlier) + record.get("wall_seconds", 0.0), 1
        )
    write_json(run_dir / STATUS_FILE, record)


def run_status(run_dir: Path) -> dict:
    """The run's status record; a folder from before status records counts as finished if it has a report."""
    path = run_dir / STATUS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if (run_dir / "report.html").is_file() and (run_dir / "metrics.json").is_file():
        return {"status": "finished", "note": "made before run status records; its report is its end marker"}
    return {}


def require_finished(run_dir: Path) -> None:
    """A `LungnetError` naming the run when it did not finish (export and evaluate use only finished runs)."""
    status = run_status(run_dir).get("status")
    if status != "finished":
        why = {"running": "is still running or was interrupted", "failed": "failed"}.get(
            status, "did not finish"
        )
        raise LungnetError(
            f"{run_dir}: the run {why} ({STATUS_FILE}: {status or 'none'}); finish it with "
            f"`lungnet train CONFIG --resume {run_dir}` first"
        )


def discard_if_empty(run_dir: Path) -> bool:
    """Remove a run folder that holds nothing but its config and status (a run stopped before it began)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {CONFIG_FILE, STATUS_FILE}:
        shutil.rmtree(run_dir)
        return True
    return False


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
