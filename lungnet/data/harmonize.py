"""Harmonise CT collections into one manifest, as the multi-dataset study does (`lungnet data harmonize`).

``harmonize(["luna16:/data/LUNA16", "msd-lung:/data/Task06_Lung"], out="harmonized/")`` reads every volume of
every collection (`lungnet.data.sources.volumes`), and writes, under `out`:

- ``<dataset>/<volume>/NNNN.png`` (the slice in the paper's lung window, -1200 .. 0 HU -> 8-bit) and
  ``NNNN_mask.png`` (0/255), with the volume's ``rows.csv``;
- ``manifest.csv``: one row per slice: image, mask (empty for a classification-only slice), patient_id,
  dataset, label, mask_kind, volume_id, slice_index, pixel_spacing_mm, the source's own ids, and
  ``paper_split`` (train / val / test: patient level, stratified, 80/20 then 80/20 of the first part);
- ``summary.csv`` (per dataset: volumes, patients, slices, masks, labels, skipped) and ``skipped.csv``.

Scale: the per-volume work is one plain function (`harmonize_volume`) run in `workers` local processes with
a progress bar, or on a Dask cluster when `cluster` gives a scheduler address (Dask: it ships plain Python
functions and their arguments as they are, needs no pipeline rewrite, and its local and distributed
schedulers are the same API). Each volume's folder is written under a temporary name and renamed when
complete, so a build that is interrupted leaves only whole volumes, and the next build skips them
(resumable). A volume that cannot be read is reported by name in ``skipped.csv`` and the summary; it never
stops the build.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungnet.data.sources.volumes import (
    Skipped,
    VolumeTask,
    get_collection,
    lung_window_8bit,
    parse_collection_spec,
)
from lungnet.errors import ConfigError, DataError, LungnetError
from lungnet.fileio import write_csv

MANIFEST = "manifest.csv"
ROWS = "rows.csv"
PAPER_SPLIT = "paper_split"
_PARTIAL = ".partial-"


@dataclass(frozen=True)
class HarmonizeResult:
    out: Path
    manifest: pd.DataFrame
    summary: pd.DataFrame
    skipped: pd.DataFrame
    built: int  # volumes built by this call
    reused: int  # volumes found complete from an earlier build


def volume_folder(out: Path, task: VolumeTask) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", task.volume_id).strip("._") or "volume"
    return Path(out) / task.dataset / safe


def harmonize_volume(task: VolumeTask, out: str, module: str | None = None) -> tuple[str, int]:
    """Read one volume through its collection and write its slices, masks and rows.csv (atomically).

    Returns (folder, number of slices). Runs in a worker: everything it needs travels in its arguments
    (`module`: the module that registers the collection, imported here when the worker lacks it).
    """
    if module:
        importlib.import_module(module)
    collection = get_collection(task.dataset)
    final = volume_folder(Path(out), task)
    samples = collection.read_volume(task)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{final.name}{_PARTIAL}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        rows, seen = [], {}
        for sample in samples:
            k = seen[sample.slice_index] = seen.get(sample.slice_index, -1) + 1
            stem = f"{sample.slice_index:04d}" + (f"_{k}" if k else "")  # several lesions or readers a slice
            _write_png(tmp / f"{stem}.png", lung_window_8bit(sample.hu))
            mask = ""
            if sample.mask is not None:
                _write_png(tmp / f"{stem}_mask.png", (sample.mask > 0).astype(np.uint8) * 255)
                mask = f"{task.dataset}/{final.name}/{stem}_mask.png"
            rows.append(
                {
                    "image": f"{task.dataset}/{final.name}/{stem}.png",
                    "mask": mask,
                    "patient_id": task.patient_id,
                    "dataset": task.dataset,
                    "label": sample.label if sample.label is not None else "",
                    "mask_kind": sample.mask_kind,
                    "volume_id": task.volume_id,
                    "slice_index": sample.slice_index,
                    "pixel_spacing_mm": sample.pixel_spacing_mm,
                    "mask_pixels": int((sample.mask > 0).sum()) if sample.mask is not None else 0,
                    **sample.extra,
                }
            )
        table = pd.DataFrame(rows)
        if table.empty:
            table = pd.DataFrame(columns=["image", "mask", "patient_id", "dataset", "label", "volume_id"])
        write_csv(tmp / ROWS, table)
        if final.exists():  # an older complete copy (a forced rebuild): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final), len(samples)


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise DataError(f"{path}: could not write the PNG")


def _is_complete(folder: Path) -> bool:
    return (folder / ROWS).is_file()


def remove_partials(out: Path) -> int:
    """Delete the partial volume folders a killed build left behind; the number removed."""
    removed = 0
    for path in Path(out).glob(f"*/*{_PARTIAL}*"):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def list_tasks(
    specs: Iterable[str], options: dict[str, dict] | None = None
) -> tuple[list[VolumeTask], list[Skipped]]:
    """Every volume task of the `NAME:ROOT` specs, and what their indexes already skip. `options`: per
    collection name, keyword arguments of its ``list_volumes`` (e.g. ``{"luna16": {"malignancy_rule":
    "median"}}``)."""
    options = dict(options or {})
    names = [spec.partition(":")[0] for spec in specs]
    unused = sorted(set(options) - set(names))
    if unused:
        raise ConfigError(f"harmonize: options for {unused}, which no source names (sources: {names})")
    tasks, skipped = [], []
    for spec in specs:
        parsed = parse_collection_spec(spec)
        if parsed is None:
            raise DataError(
                f"{spec}: not a CT collection; give NAME:ROOT with NAME one of "
                "luna16, msd-lung, lndb, lungct-diagnosis, lung-pet-ct-dx"
            )
        name, root = parsed
        list_volumes = get_collection(name).list_volumes
        given = options.get(name, {})
        accepted = list(inspect.signature(list_volumes).parameters)[1:]
        unknown = sorted(set(given) - set(accepted))
        if unknown:
            raise ConfigError(f"{name}: unknown option(s) {unknown}; it takes {accepted or 'none'}")
        found, skip = list_volumes(root, **given)
        tasks += found
        skipped += skip
    ids = pd.Series([(t.dataset, t.volume_id) for t in tasks])
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise DataError(f"{dup[0]}: volume id {dup[1]!r} appears twice; each volume needs its own id")
    return tasks, skipped


def harmonize(
    specs: Iterable[str],
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    cluster: str | None = None,
    unify_patient_labels: bool = False,
    split_seed: int = 0,
    options: dict[str, dict] | None = None,
    progress: bool = True,
) -> HarmonizeResult:
    """Harmonise the collections into `out` (see the module docstring) and return the result."""
    specs = list(specs)
    if not specs:
        raise ConfigError("harmonize: give at least one collection as NAME:ROOT")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: the output path is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out)
    tasks, skipped = list_tasks(specs, options)
    todo = [t for t in tasks if not _is_complete(volume_folder(out, t))]
    reused = len(tasks) - len(todo)
    bar = tqdm(total=len(todo), unit="volume", desc="harmonizing", disable=not progress)
    built = 0
    try:
        for task, problem in _run(todo, out, workers, cluster):
            bar.update(1)
            if problem is None:
                built += 1
            else:
                skipped.append(Skipped(task.dataset, task.volume_id, problem))
    finally:
        bar.close()
    manifest = collect_manifest(out, tasks)
    if unify_patient_labels and len(manifest):
        manifest = unify_labels(manifest)
    if len(manifest):
        manifest = paper_split(manifest, seed=split_seed)
        write_csv(out / MANIFEST, manifest)
    skipped_table = pd.DataFrame([asdict(s) for s in skipped], columns=["dataset", "item", "reason"])
    write_csv(out / "skipped.csv", skipped_table)
    summary = dataset_summary(manifest, tasks, skipped_table)
    write_csv(out / "summary.csv", summary)
    if manifest.empty:
        raise DataError(
            f"harmonize: no slice was written to {out} ({len(skipped_table)} volumes or items skipped; "
            f"see {out / 'skipped.csv'})"
        )
    return HarmonizeResult(out, manifest, summary, skipped_table, built, reused)


def _run(tasks: list[VolumeTask], out: Path, workers: int | None, cluster: str | None):
    """(task, None) for each volume built, (task, reason) for each that failed; in completion order."""
    if not tasks:
        return
    modules = {t.dataset: get_collection(t.dataset).read_volume.__module__ for t in tasks}
    if cluster:
        yield from _run_dask(tasks, out, cluster, modules)
        return
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers < 1:
        raise ConfigError(f"harmonize: workers {workers} must be >= 1")
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            yield task, _guarded(task, out)  # this process has every collection registered
        return
    # spawn: workers must not inherit a parent that may have TensorFlow's threads running
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_guarded, t, str(out), modules[t.dataset]): t for t in tasks}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _guarded(task: VolumeTask, out, module: str | None = None) -> str | None:
    """None when the volume was written, else the reason it was not (the build goes on without it)."""
    try:
        harmonize_volume(task, str(out), module)
    except (LungnetError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _run_dask(tasks: list[VolumeTask], out: Path, address: str, modules: dict[str, str]):
    try:
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
    except ImportError as exc:
        raise ConfigError("harmonize --cluster needs Dask: pip install 'dask[distributed]'") from exc
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"harmonize: no Dask scheduler reachable at {address} ({exc})") from exc
    try:
        futures = client.map(
            _guarded, tasks, [str(out)] * len(tasks), [modules[t.dataset] for t in tasks], pure=False
        )
        index = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for future in dask_completed(futures):
            yield index[future.key], future.result()
    finally:
        client.close()


def collect_manifest(out: Path, tasks: list[VolumeTask]) -> pd.DataFrame:
    """The rows of every complete volume folder of `tasks` (this build's and earlier ones')."""
    parts = []
    for task in tasks:
        folder = volume_folder(out, task)
        if _is_complete(folder):
            part = pd.read_csv(folder / ROWS, dtype={"patient_id": str, "label": str, "mask": str})
            if len(part):
                parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["image", "mask", "patient_id", "dataset", "label"])
    manifest = pd.concat(parts, ignore_index=True)
    for column in ("mask", "label"):
        manifest[column] = manifest[column].fillna("")
    return manifest


def unify_labels(manifest: pd.DataFrame) -> pd.DataFrame:
    """The paper's patient-level labels: a patient with any malignant slice is malignant on every slice;
    otherwise benign where any slice is labelled; unlabelled patients stay unlabelled."""
    out = manifest.copy()
    labels = out["label"].astype(str)
    malignant = labels.eq("malignant").groupby(out["patient_id"]).transform("any")
    labelled = labels.ne("").groupby(out["patient_id"]).transform("any")
    out["slice_label"] = labels
    out["label"] = np.where(malignant, "malignant", np.where(labelled, "benign", ""))
    return out


def paper_split(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``paper_split``: patients 80/20 into (train+val)/test, then 80/20 of the first part into train/val
    (64/16/20 overall), stratified by dataset and patient label (malignant if any slice is), so each
    collection and class is split alike. Strata too small to split go whole to training, with a warning."""
    from sklearn.model_selection import train_test_split

    patient = manifest.groupby("patient_id").agg(
        dataset=("dataset", "first"),
        malignant=("label", lambda s: bool((s.astype(str) == "malignant").any())),
        labelled=("label", lambda s: bool((s.astype(str) != "").any())),
    )
    strata = (
        patient["dataset"]
        + "|"
        + np.where(patient["malignant"], "malignant", np.where(patient["labelled"], "benign", "unlabelled"))
    )
    assignment = pd.Series("train", index=patient.index)
    small = []
    for name, ids in strata.groupby(strata):
        ids = ids.index.to_numpy()
        if len(ids) < 5:  # fewer than one patient per part
            small.append(f"{name} ({len(ids)} patients)")
            continue
        rest, test = train_test_split(ids, test_size=0.2, random_state=seed)
        train, val = train_test_split(rest, test_size=0.2, random_state=seed)
        assignment[test] = "test"
        assignment[val] = "val"
        assignment[train] = "train"
    if small:
        warnings.warn(
            f"paper split: too few patients to split {', '.join(small)}: all in train", stacklevel=2
        )
    out = manifest.copy()
    out[PAPER_SPLIT] = out["patient_id"].map(assignment).to_numpy()
    return out


def dataset_summary(manifest: pd.DataFrame, tasks: list[VolumeTask], skipped: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: volumes listed and written, patients, slices, slices with masks, labels, skipped items."""
    rows = []
    datasets = sorted({t.dataset for t in tasks} | set(skipped["dataset"]) | set(manifest.get("dataset", [])))
    for name in datasets:
        part = manifest[manifest["dataset"] == name] if len(manifest) else manifest
        labels = part["label"].astype(str) if len(part) else pd.Series(dtype=str)
        rows.append(
            {
                "dataset": name,
                "volumes_listed": sum(t.dataset == name for t in tasks),
                "volumes_written": int(part["volume_id"].nunique()) if len(part) else 0,
                "patients": int(part["patient_id"].nunique()) if len(part) else 0,
                "slices": len(part),
                "slices_with_mask": int((part["mask"].astype(str) != "").sum()) if len(part) else 0,
                "malignant": int((labels == "malignant").sum()),
                "benign": int((labels == "benign").sum()),
                "unlabelled": int((labels == "").sum()),
                "skipped": int((skipped["dataset"] == name).sum()),
            }
        )
    return pd.DataFrame(rows)


def paper_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2: patients, slices and classes per split (and per dataset)."""
    if PAPER_SPLIT not in manifest.columns:
        raise DataError(f"manifest has no '{PAPER_SPLIT}' column: build it with `lungnet data harmonize`")
    rows = []
    for (dataset, split), part in manifest.groupby(["dataset", PAPER_SPLIT], sort=True):
        labels = part["label"].fillna("").astype(str)
        rows.append(
            {
                "dataset": dataset,
                "split": split,
                "patients": part["patient_id"].nunique(),
                "slices": len(part),
                "segmentation_slices": int((part["mask"].fillna("").astype(str) != "").sum()),
                "malignant": int((labels == "malignant").sum()),
                "benign": int((labels == "benign").sum()),
                "unlabelled": int((labels == "").sum()),
            }
        )
    table = pd.DataFrame(rows)
    order = {"train": 0, "val": 1, "test": 2}
    return table.sort_values(["dataset", "split"], key=lambda c: c.map(order) if c.name == "split" else c)
