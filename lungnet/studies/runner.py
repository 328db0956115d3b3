"""Resolve an experiment (file, profile, overrides) and its run folder, new or resumed."""

from __future__ import annotations

from pathlib import Path

import yaml

from lungnet.errors import ConfigError
from lungnet.experiment import deep_merge, load_experiment, resolve_experiment_path
from lungnet.runs import load_run_config, new_run_dir
from lungnet.studies.registry import get_study


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
    """Run the study an experiment describes (by its ``task``); returns its metrics summary."""
    return get_study(config.task).run(config, run_dir, progress=progress)


def evaluate_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """A trained run judged on every sample of another source, by the study that made it."""
    return get_study(load_run_config(run_dir).task).evaluate(
        run_dir, source_spec, out=out, model_name=model_name
    )


def summary_line(summary: dict, task: str) -> str:
    """One line of a finished study's headline numbers, with the data they come from."""
    return get_study(task).summary_line(summary)
