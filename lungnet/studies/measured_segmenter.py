"""Train and apply the segmenter of the measured-nodule classifier (`lungnet.evaluation.measured_nodule`).

It lives with the studies because it runs one: the segmentation study's recipe, on this run's training
patients, in its own run folder ``<run>/segmenter/``.
"""

from __future__ import annotations

from pathlib import Path

from lungnet.config import to_dict
from lungnet.errors import ConfigError
from lungnet.evaluation.measured_nodule import SEGMENTER_DIR, SegmenterRecipe, segmenter_manifest
from lungnet.experiment import deep_merge, load_experiment, resolve_experiment_path
from lungnet.fileio import write_csv
from lungnet.runs.folder import run_status


def segmenter_config(
    config: SegmenterRecipe, manifest_path: Path, view: str, section: str = "measured_nodule"
):
    """The segmentation experiment, one model, trained on `manifest_path` with its given split, on the
    classified `view` (the phantom's crops, not its whole slices, when the classifier reads crops).
    `section`: the experiment key `config` came from, for error messages."""
    experiment = load_experiment(resolve_experiment_path(config.experiment), profile=config.profile)
    specs = [m for m in experiment.models if m.name == config.model]
    if not specs:
        names = [m.name for m in experiment.models]
        raise ConfigError(
            f"{section}.model: {config.model!r} is not a model of {config.experiment} "
            f"(profile {config.profile}): choose one of {names}"
        )
    overrides = deep_merge(
        {"data": {"source": str(manifest_path), "split_level": "manifest"}, "models": [to_dict(specs[0])]},
        config.overrides,
    )
    overrides = deep_merge(overrides, {"data": {"view": view}})  # always the view the features read
    return load_experiment(
        resolve_experiment_path(config.experiment), profile=config.profile, overrides=overrides
    )


def train_segmenter(
    config: SegmenterRecipe,
    source_manifest,
    split,
    view: str,
    run_dir: Path,
    progress=True,
    section: str = "measured_nodule",
    folder: str = SEGMENTER_DIR,
) -> Path:
    """Train (or reuse, when already finished) the run's segmenter in ``run_dir/<folder>``, on the rows of
    `split`'s training patients (its validation patients early-stop it; its test patients are held out)."""
    from lungnet.studies.runner import run_study

    seg_dir = run_dir / folder
    if run_status(seg_dir).get("status") == "finished":
        return seg_dir
    seg_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / f"{folder}_manifest.csv"
    write_csv(manifest_path, segmenter_manifest(source_manifest, split, view))
    print(f"{section}: training the segmenter ({config.experiment} / {config.model}) in {seg_dir}")
    run_study(segmenter_config(config, manifest_path, view, section), seg_dir, progress=progress)
    return seg_dir
