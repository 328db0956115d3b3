"""Images/s and CPU time per image of every study's training pipeline, as its `full` profile builds it, and how
many CPU cores each needs to feed a GPU at the speed `benchmarks/gpu_training.py` measured there.

Each study's pipeline is built by lungnet's own data layer from the study's experiment file (``full`` profile,
``data.source`` pointed at the crops): `prepare_data` for the classification study (oversampling and the
affine augmentation included) and, with each slice's mask warped alike, for the nodule-fusion study, `prepare_segmentation_data` for the segmentation studies (the joint image +
mask augmentation: the zoo's elastic, grid distortion, photometric and dropout transforms), and Inf-Net's
multi-scale batches (every batch again at 256, 352 and 448 px). Its training split is read for
``--epochs`` epochs: the first reads, preprocesses and caches, the later ones only augment (medians over them).

Each study runs in a child process pinned to 1 core and then to ``--cores`` cores (``os.sched_setaffinity``,
before TensorFlow starts, so its thread pools are sized to them): the ratio says whether the work spreads
over cores, which a projection to a larger machine needs. CPU ms per image is the process's CPU time (all
threads) over the images delivered. The cores needed to deliver R images/s are R over the widest pinning's
images/s per core (a linear projection: the 1-core run shows how far the work spreads).

With a GPU result (``--gpu-json``, default ``benchmarks/results/gpu_training_jax.json`` when present), each
family's fastest precision there is set against its study's pipeline: the cores it needs and whether the GPU
machine's CPU (``--gpu-host-cores``, 16 for the lent H100 / H200) can feed it. For Inf-Net this overstates the
need: the GPU rate is measured at 352 px, while multi-scale training also trains on 448 px.

Data: the real LIDC crops in ../shared/data/lidc-crops when present (images and masks), otherwise synthetic
crops in that format. Result: ``benchmarks/results/study_pipelines.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lungnet.fileio import write_json  # noqa: E402  (imports without TensorFlow)
from lungnet.machine import cpu_description  # noqa: E402

CROPS = ROOT.parent / "shared" / "data" / "lidc-crops"
RESULT = ROOT / "benchmarks" / "results" / "study_pipelines.json"
GPU_RESULT = ROOT / "benchmarks" / "results" / "gpu_training_jax.json"
# study -> the model families (benchmarks/gpu_training.py's names) that train on its pipeline
STUDIES = {
    "binary_nodule": ("custom_cnn", "efficientnet_b2"),
    "attention_unet": ("unet", "attention_res_unet"),
    "inf_net": ("inf_net",),
    "segmentation_zoo": (
        "unar",
        "res34_unet_v2",
        "unet_plus_plus",
        "deeplab_v3_plus",
        "segformer",
        "light_unet",
    ),
    "nodule_hyperfusion": ("nodule_hyperfusion",),
}
GPU_HOST_CORES = 16  # the lent GPU machines' CPU cores (/work/.library/device)


def study_pipeline(study: str, manifest: str):
    """(training dataset, source images per element, what it does) of `study`'s `full` profile."""
    from lungnet.data.dataset import prepare_data
    from lungnet.data.segmentation import prepare_segmentation_data
    from lungnet.experiment import load_experiment, resolve_experiment_path
    from lungnet.training.multiscale import multiscale_batches, scaled_sizes

    config = load_experiment(resolve_experiment_path(study), "full", {"data": {"source": manifest}})
    data = config.data
    # the transforms in use (their switches and sizes), not the settings of those that are off
    augment = {
        k: v
        for k, v in vars(data.augment).items()
        if v not in (None, False, 0, 0.0) and not k.endswith(("_factor", "_ops", "_size"))
    }
    if hasattr(data, "image_size"):  # a segmentation study
        size, channels = data.image_size, data.channels
        train = prepare_segmentation_data(data, progress=False).train
    else:  # the classification studies: their sizes sit in `preprocess`
        size, channels = data.preprocess.image_size, data.preprocess.channels
        prepared = prepare_data(data, progress=False)
        train = prepared.train
        if config.task == "nodule_fusion":  # each slice with its readers' mask (the first phase's pipeline)
            from lungnet.data.dataset import mask_column
            from lungnet.studies.nodule_fusion import fusion_pipeline

            masks = mask_column(prepared.train_manifest, data.view)
            names = prepared.class_names
            train = fusion_pipeline(prepared.train_manifest, data, len(names), masks, training=True)
    work = {"size": size, "channels": channels, "batch": data.batch_size, "augment": augment}
    rates = next((m.multiscale_rates for m in config.models if getattr(m, "multiscale_rates", None)), None)
    if not rates:
        return train, 1, work
    sizes = scaled_sizes(size, rates)
    work["multiscale_sizes"] = list(sizes)
    return multiscale_batches(train, size, rates), len(sizes), work


def time_epochs(dataset, repeats: int, epochs: int) -> list[dict]:
    """Per epoch: source images, seconds, images/s and process CPU ms per image."""
    out = []
    for _ in range(epochs):
        start, start_cpu, count = time.perf_counter(), time.process_time(), 0
        for element in dataset:
            images = element[0]
            images = images["image"] if isinstance(images, dict) else images  # a slice with its mask
            count += int(images.shape[0])
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        images = count / repeats  # multi-scale batches deliver each source image once per size
        out.append(
            {
                "images": images,
                "seconds": seconds,
                "images_per_s": images / seconds,
                "cpu_ms_per_image": 1000 * cpu / images,
            }
        )
    return out


def child(study: str, cores: int, manifest: str, epochs: int, out: Path, autotune: bool = True) -> None:
    """One study on `cores` cores; runs in its own process so the pinning holds before TensorFlow starts."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        raise SystemExit(f"--cores {cores}: only {len(allowed)} cores are available to this process")
    os.sched_setaffinity(0, allowed[:cores])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    dataset, repeats, work = study_pipeline(study, manifest)
    if not autotune:
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = False  # AUTOTUNE parallelism then means one call per core
        dataset = dataset.with_options(options)
    work["tf_data_autotune"] = autotune
    per_epoch = time_epochs(dataset, repeats, epochs)
    cached = per_epoch[1:]
    write_json(
        out,
        {
            "work": work,
            "train_images": per_epoch[0]["images"],
            "first_epoch_images_per_s": per_epoch[0]["images_per_s"],
            "first_epoch_cpu_ms_per_image": per_epoch[0]["cpu_ms_per_image"],
            "cached_images_per_s": statistics.median(e["images_per_s"] for e in cached),
            "cached_cpu_ms_per_image": statistics.median(e["cpu_ms_per_image"] for e in cached),
            "epochs": per_epoch,
        },
    )


def run_child(study: str, cores: int, manifest: str, epochs: int, autotune: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="lungnet-pipelines-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, __file__, "--child", study, "--cores", str(cores), "--manifest", manifest]
        argv += ["--epochs", str(epochs), "--output", str(out)]
        argv += [] if autotune else ["--no-autotune"]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return {"error": f"{study} on {cores} cores failed: " + " | ".join(tail)}
        return json.loads(out.read_text())


def synthetic_crops(folder: Path, patients: int = 40, seed: int = 0) -> str:
    """A lidc-crops-style folder (64 px PNG slices, masks, ratings, three slices per nodule)."""
    import cv2
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for p in range(patients):
        rating = 1 + p % 5
        for s in range(3):
            image = rng.integers(0, 40, (64, 64)).astype(np.uint8)
            mask = np.zeros((64, 64), np.uint8)
            cv2.circle(mask, (32, 32), 4 + 2 * rating + s, 255, -1)
            image[mask > 0] = 180
            name = f"P{p:03d}_s{s}.png"
            cv2.imwrite(str(folder / "images" / name), image)
            cv2.imwrite(str(folder / "masks" / name), mask)
            diameter = 2 * (4 + 2 * rating) * 0.7
            ratings = ";".join([str(rating)] * 3)
            rows.append(
                {
                    "image": f"images/{name}",
                    "mask": f"masks/{name}",
                    "patient_id": f"P{p:03d}",
                    "nodule_id": f"P{p:03d}/n0",
                    "slice_index": s,
                    "is_central": int(s == 1),
                    "n_readers": 3,
                    "malignancy_ratings": ratings,
                    "malignancy_median": float(rating),
                    "diameter_mm": diameter,
                    "pixel_spacing_mm": 0.7,
                }
            )
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return str(folder / "manifest.csv")


def against_gpu(studies: dict, gpu: dict | None, host_cores: int) -> dict:
    """Per family: the GPU's fastest images/s, and the cores its study's pipeline needs to deliver them.

    A core's share is the widest pinning's cached images/s over its cores: wall-clock on cores the pipeline
    held, so tf.data's own overheads (and any stall of a shared machine) count against it, unlike CPU time,
    which also counts threads that spin while they wait.
    """
    if gpu is None:
        return {}
    out = {}
    for study, families in STUDIES.items():
        measured = {int(c): e for c, e in studies.get(study, {}).get("cores", {}).items()}
        widest = max(measured, default=None)
        per_core = measured[widest].get("cached_images_per_s", 0) / widest if widest else 0
        for family in families:
            rates = {
                p: e["images_per_second"]
                for p, e in gpu.get("results", {}).get(family, {}).items()
                if "images_per_second" in e
            }
            if not rates or not per_core:
                continue
            precision = max(rates, key=rates.get)
            cores = rates[precision] / per_core
            out[family] = {
                "study": study,
                "gpu_images_per_s": rates[precision],
                "gpu_precision": precision,
                "pipeline_images_per_s_per_core": per_core,
                "cores_needed": cores,
                "host_cores": host_cores,
                "pipeline_keeps_up": bool(cores <= host_cores),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    parser.add_argument(
        "--cores", type=int, default=min(2, len(os.sched_getaffinity(0))), help="the wider pinning (also 1)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="the first (read + cache) plus cached ones")
    parser.add_argument(
        "--crops", type=Path, default=CROPS, help="the lidc-crops folder (synthetic if absent)"
    )
    parser.add_argument(
        "--gpu-json", type=Path, default=GPU_RESULT, help="benchmarks/gpu_training.py's result"
    )
    parser.add_argument("--gpu-host-cores", type=int, default=GPU_HOST_CORES)
    parser.add_argument(
        "--autotune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tf.data autotuning (lungnet's default); --no-autotune to compare",
    )
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--child", choices=list(STUDIES), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch plus at least one cached one)")
    if args.cores < 1:
        parser.error("--cores must be >= 1")
    if args.child:
        child(args.child, args.cores, args.manifest, args.epochs, args.output, args.autotune)
        return 0

    with tempfile.TemporaryDirectory(prefix="lungnet-crops-") as tmp:
        if (args.crops / "manifest.csv").is_file():
            manifest, data = str(args.crops / "manifest.csv"), f"LIDC crops ({args.crops}), images and masks"
        else:
            manifest = synthetic_crops(Path(tmp))
            data = f"synthetic 64 px crops in lidc-crops format (LIDC crops not found at {args.crops})"
        widths = sorted({1, args.cores})
        studies: dict = {}
        for study in args.studies:
            studies[study] = {"families": list(STUDIES[study]), "cores": {}}
            for cores in widths:
                entry = run_child(study, cores, manifest, args.epochs, args.autotune)
                studies[study]["cores"][str(cores)] = entry
                shown = entry.get("error") or (
                    f"first epoch {entry['first_epoch_images_per_s']:.0f} images/s, cached "
                    f"{entry['cached_images_per_s']:.0f} images/s, {entry['cached_cpu_ms_per_image']:.2f} CPU ms "
                    "per image"
                )
                print(f"{study:>18} on {cores} core{'s' if cores > 1 else ''}: {shown}", flush=True)
            one, wide = (studies[study]["cores"].get(str(w), {}) for w in (1, args.cores))
            if args.cores > 1 and "cached_images_per_s" in one and "cached_images_per_s" in wide:
                studies[study]["cached_speedup_vs_1_core"] = (
                    wide["cached_images_per_s"] / one["cached_images_per_s"]
                )

    gpu = json.loads(args.gpu_json.read_text()) if args.gpu_json.is_file() else None
    result = {
        "data": data,
        "host_cpu": cpu_description(),
        "python": platform.python_version(),
        "load_average_at_end": os.getloadavg(),
        "measured": "each study's `full`-profile training pipeline over its training split, in a child process "
        "pinned to 1 and to --cores cores; images/s and process CPU ms per source image, first epoch (read + "
        "preprocess + cache + augment) and the median of the cached epochs (augment only)",
        "studies": studies,
        "gpu_result": str(args.gpu_json) if gpu else None,
        "gpu_device": gpu.get("device") if gpu else None,
        "gpu_backend": gpu.get("backend") if gpu else None,
        "against_gpu": against_gpu(studies, gpu, args.gpu_host_cores),
    }
    write_json(args.output, result)
    if gpu is None:
        print(f"no GPU result at {args.gpu_json}: cores needed per family wait for one")
    for family, row in result["against_gpu"].items():
        print(
            f"{family:>20}: GPU {row['gpu_images_per_s']:.0f} images/s ({row['gpu_precision']}) needs "
            f"{row['cores_needed']:.1f} cores of {row['host_cores']}"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
