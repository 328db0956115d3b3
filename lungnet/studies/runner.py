"""Resolve an experiment (file, profile, overrides) and its run folder, new or resumed."""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lungnet.errors import ConfigError, LungnetError
from lungnet.experiment import deep_merge, load_experiment, resolve_experiment_path
from lungnet.machine import machine_record
from lungnet.runs import load_run_config, new_run_dir
from lungnet.runs.folder import discard_if_empty, mark_status, require_finished, run_status
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
    profile: str | None = None,
    data: str | None = None,
    out=None,
    resume=None,
    assignments: list[str] | None = None,
    seed: int | None = None,
):
    """(ExperimentConfig, run folder). With `resume`, the run's own saved config is used unchanged.

    `--resume` continues a run exactly as it was configured: other options are refused, never ignored
    (start a new run to change them). The experiment named beside it must be the run's own.
    """
    if resume:
        run_dir = Path(resume)
        saved = load_run_config(run_dir)
        _check_resume(run_dir, saved, config, profile, data, out, assignments, seed)
        return saved, _worker_copy(saved, run_dir) or run_dir
    experiment = prepare_config(config, profile=profile, data=data, assignments=assignments, seed=seed)
    return experiment, _worker_copy(experiment) or new_run_dir(experiment.name, out)


WORKER_COPY = ".worker-copy"  # marks a multi-worker run's folder on a worker other than the chief


def _worker_copy(config, resumed: Path | None = None) -> Path | None:
    """Under ``training.strategy: multi_worker``, the strategy is created first (before TensorFlow's first
    operation, as it must be); then a worker other than the chief gets a temporary folder of its own (a copy
    of the resumed run, whose checkpoints it continues from) and the chief None: it writes the run folder."""
    training = getattr(config, "training", None)
    if training is None or training.strategy != "multi_worker":
        return None
    from lungnet.training import multi_worker
    from lungnet.training.distribute import prepare_strategy

    prepare_strategy("multi_worker")
    task = multi_worker.cluster_task()
    if task.chief:
        return None
    folder = Path(tempfile.mkdtemp(prefix=f"lungnet-{task.kind}{task.index}-"))
    if resumed is not None:
        shutil.copytree(resumed, folder, dirs_exist_ok=True)
    (folder / WORKER_COPY).write_text(
        f"{task.kind} {task.index} of {task.workers} workers; the chief writes the run folder\n"
    )
    return folder


def release_worker_copy(run_dir: Path) -> bool:
    """Delete `run_dir` if it is a non-chief worker's temporary copy (see `_worker_copy`), saying so; True if
    it was (the command then ends: the chief has the results and exports)."""
    if not (Path(run_dir) / WORKER_COPY).is_file():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"worker done; its copy {run_dir} deleted (the chief wrote the run folder)")
    return True


def prepare_config(
    config: str,
    *,
    profile: str | None = None,
    data: str | None = None,
    assignments=None,
    seed: int | None = None,
):
    """The experiment `config` (a name or file) with its profile (default: ``default``), `--data`, `--set`
    and `--seed` values applied, validated."""
    overrides = parse_overrides(assignments)
    if data:
        overrides = deep_merge(overrides, {"data": {"source": data}})
    path, profile = resolve_experiment_path(config), profile or "default"
    experiment = load_experiment(path, profile=profile, overrides=overrides)
    if seed is None:
        return experiment
    both = [
        a.partition("=")[0].strip()
        for a in assignments or []
        if a.partition("=")[0].strip().endswith(SEED_KEYS)
    ]
    if both:
        raise ConfigError(f"--seed {seed} and --set {', '.join(both)}: give the seed once")
    return load_experiment(
        path, profile=profile, overrides=deep_merge(overrides, seed_overrides(experiment, seed))
    )


# What `--seed` sets (and, under measured_nodule.overrides, for its segmenter): the seeds of training, never
# those that decide which data a run sees (data.split_seed, labels.seed, the phantom's rendering).
SEED_KEYS = ("data.seed", "training.seed")


def seed_overrides(experiment, seed: int) -> dict:
    """Overrides setting every training seed of `experiment` to `seed`: ``data.seed`` (oversampling, shuffling,
    augmentation), ``training.seed`` (initial weights, dropout; ensemble member i takes seed + i - 1) and, where
    the measured-nodule classifier is on or the study has its own ``segmenter``, that segmenter's two. The split and the data stay as they are."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed {seed!r}: must be an integer >= 0")
    seeds = {"data": {"seed": seed}, "training": {"seed": seed}}
    segmenter_seeds = {"overrides": {"data": {"seed": seed}, "training": {"seed": seed}}}
    measured = getattr(experiment, "measured_nodule", None)
    if measured is not None and measured.enabled:
        seeds["measured_nodule"] = segmenter_seeds
    if getattr(experiment, "segmenter", None) is not None:  # the nodule-fusion study's own segmenter
        seeds["segmenter"] = segmenter_seeds
    return seeds


def _check_resume(run_dir: Path, saved, config, profile, data, out, assignments, seed=None) -> None:
    options = (("--set", assignments), ("--data", data), ("--out", out), ("--seed", seed is not None))
    refused = [flag for flag, given in options if given]
    if profile is not None and profile != saved.profile:
        refused.append(f"--profile {profile} (the run's is {saved.profile!r})")
    if refused:
        raise ConfigError(
            f"--resume {run_dir}: continues the run with its own saved config, so {', '.join(refused)} cannot "
            "apply; start a new run to change them"
        )
    if config is not None:
        named = load_experiment(resolve_experiment_path(config)).name
        if named != saved.name:
            raise ConfigError(
                f"--resume {run_dir}: that run is experiment {saved.name!r} ({saved.task}), not {named!r}"
            )
    if run_status(run_dir).get("status") == "finished":
        raise ConfigError(f"--resume {run_dir}: that run already finished; nothing to resume")


def run_study(config, run_dir: Path, progress: bool = True) -> dict:
    """Run the study an experiment describes (by its ``task``); returns its metrics summary.

    ``run.json`` says ``running`` from the start and ``finished`` only after the last artefact (the report);
    a run stopped by an error before it wrote anything but its config is removed, any other is ``failed``
    (an unexpected exception too, with its type; Ctrl-C and kills leave ``running``: ``--resume`` continues).
    """
    command = {"command": command_line()} if command_line() else {}
    mark_status(run_dir, "running", machine=machine_record(), **command)
    started = time.monotonic()
    try:
        summary = get_study(config.task).run(config, run_dir, progress=progress)
    except LungnetError as exc:
        if discard_if_empty(run_dir):
            print(f"note: {run_dir} removed: the run stopped before it began", file=sys.stderr)
        else:
            mark_status(run_dir, "failed", error=str(exc).splitlines()[0], wall_seconds=_since(started))
        raise
    except Exception as exc:  # a bug, or a library's own error: the folder must not claim to be running
        first_line = (str(exc).splitlines() or [""])[0]
        error = f"{type(exc).__name__}: {first_line}".rstrip(": ")
        mark_status(run_dir, "failed", error=error, wall_seconds=_since(started))
        raise
    seconds = _since(started)
    mark_status(run_dir, "finished", wall_seconds=seconds)  # this process's share, if resumed
    print(f"wall time: {format_duration(seconds)} (training, evaluation and report)")
    return summary


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def command_line() -> str | None:
    """The ``lungnet ...`` command this process runs, for run.json and the report; None outside the CLI."""
    program = Path(sys.argv[0])
    if program.name != "lungnet" and program.parts[-2:] != ("lungnet", "cli.py"):  # the script or -m
        return None
    return " ".join(shlex.quote(a) for a in ["lungnet", *sys.argv[1:]])


def format_duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def evaluate_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """A finished run judged on every sample of another source, by the study that made it."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    require_finished(run_dir)
    return get_study(config.task).evaluate(run_dir, source_spec, out=out, model_name=model_name)


def predict_run(run_dir, source_spec: str, out=None, model_name: str | None = None) -> Path:
    """A finished run's model on every image of another source, no labels needed, by the study that made
    it; the folder holds ``prediction.json`` (its ``summary`` line and the ``files`` written)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    require_finished(run_dir)
    study = get_study(config.task)
    if study.predict is None:
        raise ConfigError(f"{run_dir}: lungnet predict does not take {config.task} runs")
    return study.predict(run_dir, source_spec, out=out, model_name=model_name)


def summary_line(summary: dict, task: str) -> str:
    """One line of a finished study's headline numbers, with the data they come from."""
    return get_study(task).summary_line(summary)
