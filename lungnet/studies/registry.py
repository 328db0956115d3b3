"""The studies, keyed by an experiment's ``task``; each study module registers itself (`register_study`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lungnet.errors import ConfigError


@dataclass(frozen=True)
class Study:
    """What the commands need of a study: train a run, judge a run on other data, say its headline, and
    (where it can) predict on data without labels."""

    task: str
    run: Callable[..., dict]  # (config, run_dir, progress=True) -> metrics summary
    evaluate: Callable[..., Path]  # (run_dir, source_spec, out=None, model_name=None) -> evaluation folder
    summary_line: Callable[[dict], str]  # a finished run's headline numbers, with the data they come from
    # (run_dir, source_spec, out=None, model_name=None) -> predictions folder holding prediction.json
    predict: Callable[..., Path] | None = None


STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    if study.task in STUDIES:
        raise ConfigError(f"study for task {study.task!r} is registered twice")
    STUDIES[study.task] = study
    return study


def get_study(task: str) -> Study:
    if task not in STUDIES:
        raise ConfigError(f"task: no study for {task!r}; known: {sorted(STUDIES)}")
    return STUDIES[task]
