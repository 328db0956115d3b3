"""Resolve an experiment (file, profile, data override) and its run folder, new or resumed."""

from __future__ import annotations

from pathlib import Path

from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.runs import load_run_config, new_run_dir


def prepare_run(
    config: str | None, *, profile: str = "default", data: str | None = None, out=None, resume=None
):
    """(ExperimentConfig, run folder). With `resume`, the run's own saved config is used unchanged."""
    if resume:
        run_dir = Path(resume)
        return load_run_config(run_dir), run_dir
    overrides = {"data": {"source": data}} if data else {}
    path = resolve_experiment_path(config)
    experiment = load_experiment(path, profile=profile, overrides=overrides)
    return experiment, new_run_dir(experiment.name, out)
