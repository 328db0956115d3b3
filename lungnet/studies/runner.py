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
