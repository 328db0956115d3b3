"""`lungnet pretrain`: which images a base is pretrained on, then `pretrain_encoder`.

- With ``--experiment`` (and ``--profile``/``--set``): the experiment's data config, preprocessing, split
  and `pretraining:` settings, and only its training-split patients: the base a study with ``weights:
  genesis`` would build itself, so the study then finds it in the cache.
- Without: the source's images with the default preprocessing; if the source has labels, only the
  training split of the default patient split (paper grouping, 70/15/15, seed 0), so that a later study of
  the same source never has its validation or test patients in the base; ``--all-patients`` takes every
  patient (a source no study evaluates on). ``--exclude-patients FILE`` drops patients either way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from lungnet.data.dataset import DataConfig, check_source_images, image_column, prepare_data, with_neighbours
from lungnet.data.labels import assign_labels, class_names
from lungnet.data.registry import load_source
from lungnet.data.sources.phantom.build import PhantomConfig, excluded_patients
from lungnet.data.splits import split_manifest
from lungnet.errors import DataError
from lungnet.pretraining.pretrain import (
    PretrainConfig,
    PretrainedBase,
    check_backbone,
    pretrain_encoder,
    training_patients_images,
)


def _without_patients(frame: pd.DataFrame, exclude_file: str | None) -> pd.DataFrame:
    if not exclude_file:
        return frame
    ids = excluded_patients(PhantomConfig(exclude_patients_file=exclude_file))
    kept = frame[~frame["patient_id"].astype(str).isin(ids)]
    if len(kept) < len(frame):
        print(f"--exclude-patients: {len(frame) - len(kept)} images of listed patients left out")
    return kept.reset_index(drop=True)


def _experiment_images(experiment, all_patients: bool, exclude_file: str | None, progress: bool):
    data = experiment.data
    if exclude_file and data.source == "lidc-phantom":
        data = dataclasses.replace(
            data, phantom=dataclasses.replace(data.phantom, exclude_patients_file=exclude_file)
        )
    prepared = prepare_data(data, progress=progress)
    frame = (
        with_neighbours(prepared.source.manifest, data, data.source)
        if all_patients
        else training_patients_images(prepared)
    )
    where = "all patients" if all_patients else f"training split, seed {data.split_seed}"
    if exclude_file:
        where += f", without the patients of {Path(exclude_file).name}"
    return _without_patients(frame, exclude_file), data, f"{prepared.source.spec} ({where})"


def _source_images(
    source_spec: str, phantom: PhantomConfig, all_patients: bool, exclude_file, progress: bool
):
    data = DataConfig(source=source_spec, phantom=phantom)
    source = load_source(source_spec, phantom, progress=progress)
    frame, where = source.manifest, "all patients"
    if not all_patients:
        split, problem = None, None
        for grouping in ("paper", "labels"):  # ratings (LIDC-style sources), else a label column
            try:
                labelled = assign_labels(frame, grouping, origin=source.spec)
                split = split_manifest(
                    labelled, data.split, seed=data.split_seed, class_names=class_names(grouping, frame)
                )
                break
            except DataError as exc:
                problem = problem or str(exc).splitlines()[0]
        if split is None:  # nothing to split by, and no study to protect
            print(f"note: {source.spec} cannot be split by label ({problem}); all patients used")
        else:
            frame = split[split["split"] == "train"]
            where = f"training split of the default split, seed {data.split_seed}"
    frame = _without_patients(frame.reset_index(drop=True), exclude_file)
    if exclude_file:
        where += f", without the patients of {Path(exclude_file).name}"
    check_source_images(source, frame, image_column(frame, data.view), progress=progress)
    return frame, data, f"{source.spec} ({where})"


def run_pretrain(
    backbone: str,
    source: str | None = None,
    *,
    experiment=None,
    method: str = "genesis",
    steps: int | None = None,
    minutes: float | None = None,
    batch_size: int | None = None,
    all_patients: bool = False,
    exclude_patients: str | None = None,
    phantom: PhantomConfig | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> PretrainedBase:
    """What `lungnet pretrain` does (see the module docstring); `experiment` is a loaded ExperimentConfig."""
    check_backbone(backbone)  # before any data is read
    if experiment is not None:
        frame, data, description = _experiment_images(experiment, all_patients, exclude_patients, progress)
        config = experiment.pretraining
    else:
        frame, data, description = _source_images(
            source or "lidc-phantom", phantom or PhantomConfig(), all_patients, exclude_patients, progress
        )
        config = PretrainConfig()
    changes = {"method": method}
    if steps is not None or minutes is not None:  # a budget given on the command line replaces both
        changes.update(steps=steps, minutes=minutes)
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if cache_dir:
        changes["cache_dir"] = cache_dir
    config = dataclasses.replace(config, **changes)
    root = Path(cache_dir).expanduser() if cache_dir else None
    return pretrain_encoder(backbone, frame, data, description, config, cache_root=root, progress=progress)
