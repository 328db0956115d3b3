"""Resolve an experiment (file, profile, overrides) and its run folder, new or resumed."""

from __future__ import annotations

from pathlib import Path

import yaml

from lungnet.errors import ConfigError
from lungnet.experiment import deep_merge, load_experiment, resolve_experiment_path
from lungnet.runs import load_run_config, new_run_dir


def parse_overrides(assignments: list[str] | None) -> dict:
    """``["data.grouping=5class", "training.epochs=3"]`` -> nested dict; values are read as YAML scalars."""
    out: dict = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. data.grouping=5class")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def prepare_run(
    config: str | None,
    *,
    profile: str = "default",
    data: str | None = None,
    out=None,
    resume=None,
    assignments: list[str] | None = None,
):
    """(ExperimentConfig, run folder). With `resume`, the run's own saved config is used unchanged."""
    if resume:
        run_dir = Path(resume)
        return load_run_config(run_dir), run_dir
    overrides = parse_overrides(assignments)
    if data:
        overrides = deep_merge(overrides, {"data": {"source": data}})
    experiment = load_experiment(resolve_experiment_path(config), profile=profile, overrides=overrides)
    return experiment, new_run_dir(experiment.name, out)


def run_study(config, run_dir: Path, progress: bool = True) -> dict:
    """Run the study an experiment describes (classification or segmentation); returns its metrics summary."""
    if getattr(config, "task", "classification") == "segmentation":
        from lungnet.studies.segmentation import run_segmentation_study

        return run_segmentation_study(config, run_dir, progress=progress)
    from lungnet.studies.classification import run_classification_study

    return run_classification_study(config, run_dir, progress=progress)


def summary_line(summary: dict) -> str:
    """One line of a finished study's headline numbers, with the data they come from."""
    name = summary["selected_model"]
    if summary.get("task") == "segmentation":
        crf = summary.get("crf") or {}
        with_crf = f", with CRF {crf['dice']:.3f}" if crf.get("dice") is not None else ""
        return f"selected model {name}: test Dice {summary['dice']:.3f}{with_crf} ({summary['data']})"
    auc = summary["auc"] if summary.get("auc") is not None else float("nan")
    return f"selected model {name}: test F1 {summary['f1']:.3f}, AUC {auc:.3f} ({summary['data']})"
