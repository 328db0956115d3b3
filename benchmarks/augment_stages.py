"""CPU time per image of each stage of the segmentation zoo's augmentation and of Inf-Net's multi-scale batches,
to find which one a pipeline spends its time in.

Each zoo stage is `build_joint_augmenter` of the zoo's `full` augmentation with every other transform off, so
the script measures any lungnet checkout through the same entry points (to compare two commits, run it with
``PYTHONPATH`` pointing at the other checkout: lungnet is imported from the path, not from this file's
folder). Each is traced once in a `tf.function`, as tf.data runs it, then called ``--calls`` times on one
batch of 8 x 256 x 256 (image and mask) with a new seed each call. The multi-scale stage is
`multiscale_batches` over ``--calls`` in-memory batches of 8 x 352 x 352 x 3, read through tf.data.

Reported per stage: process CPU ms (all threads) and wall ms per image. Result:
``benchmarks/results/augment_stages.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import lungnet  # noqa: E402
from lungnet.data.augmentation import build_joint_augmenter  # noqa: E402
from lungnet.experiment import load_experiment, resolve_experiment_path  # noqa: E402
from lungnet.fileio import write_json  # noqa: E402
from lungnet.machine import cpu_description  # noqa: E402
from lungnet.training.multiscale import multiscale_batches  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "augment_stages.json"
BATCH = 8
OFF = {
    "rotation": 0.0,
    "translation": 0.0,
    "zoom": 0.0,
    "horizontal_flip": False,
    "vertical_flip": False,
    "rotate90": False,
    "elastic": 0.0,
    "grid_distortion": 0.0,
    "gamma": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "coarse_dropout": 0,
}
# stage -> the zoo's settings it keeps on
STAGES = {
    "whole augmentation": tuple(OFF),
    "affine": ("rotation", "translation", "zoom", "horizontal_flip", "vertical_flip"),
    "affine + quarter turns": (
        "rotation",
        "translation",
        "zoom",
        "horizontal_flip",
        "vertical_flip",
        "rotate90",
    ),
    "elastic + grid distortion": ("elastic", "grid_distortion"),
    "gamma, brightness, contrast": ("gamma", "brightness", "contrast"),
    "coarse dropout": ("coarse_dropout",),
}


def per_image(run, calls: int, images: int) -> dict:
    start, start_cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "cpu_ms_per_image": 1000 * cpu / (calls * images),
        "wall_ms_per_image": 1000 * wall / (calls * images),
    }


def zoo_stage(keep: tuple[str, ...], calls: int) -> dict:
    zoo = load_experiment(resolve_experiment_path("segmentation_zoo"), "full").data.augment
    cfg = dataclasses.replace(zoo, **{k: v for k, v in OFF.items() if k not in keep})
    augment = build_joint_augmenter(cfg, 0, resampler="opencv")  # the pipelines' resampler
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(BATCH, 256, 256, 1)).astype(np.float32))
    masks = tf.constant((rng.random((BATCH, 256, 256, 1)) > 0.9).astype(np.float32))
    step = tf.function(lambda seed: augment(images, masks, seed=seed))
    step(tf.constant([0, 0], tf.int64))  # trace outside the timing

    def run():
        for i in range(calls):
            step(tf.constant([1, i], tf.int64))[0].numpy()

    return per_image(run, calls, BATCH)


def multiscale_stage(calls: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.random((BATCH, 352, 352, 3), dtype=np.float32)
    masks = (rng.random((BATCH, 352, 352, 1)) > 0.9).astype(np.float32)
    batches = tf.data.Dataset.from_tensors((images, masks)).repeat(calls)
    dataset = multiscale_batches(batches, 352, (0.75, 1.0, 1.25))

    def run():
        for _ in dataset:
            pass

    return per_image(run, calls, BATCH)  # per source image: each is delivered at three sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="batches per stage")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    stages = {name: zoo_stage(keep, args.calls) for name, keep in STAGES.items()}
    stages["Inf-Net multi-scale batches (256 / 352 / 448 px)"] = multiscale_stage(args.calls)
    for name, entry in stages.items():
        print(
            f"{name:>48}: {entry['cpu_ms_per_image']:.2f} CPU ms, {entry['wall_ms_per_image']:.2f} wall ms per image"
        )
    write_json(
        args.output,
        {
            "lungnet": str(Path(lungnet.__file__).resolve().parent),
            "host_cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "calls": args.calls,
            "stages": stages,
        },
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
