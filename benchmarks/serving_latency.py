"""Serving speed of exported models: latency at batch 1 (p50, p99) and throughput at batch 32, in-process.

``python benchmarks/serving_latency.py RUN [RUN ...]``: every model of each finished run is exported with
`lungnet.serving.export.export_run` (into a temporary folder; the run is not touched), loaded back with
``tf.saved_model.load`` as TF Serving would load it, and called through its ``serving_default`` signature
(and, for a nodule-fusion run, ``image_only``, which runs the run's segmenter before the classifier) with raw
images of ``--image-size`` pixels (128: lidc-crops' crops; random 0-255 grey values; a 2.5-D run
gets three slices, a fixed-scale run a pixel spacing of 0.7 mm). So the timed work is what a server does per request:
preprocessing inside the signature, the network, and the output. After ``--warmup`` calls, ``--calls``
single-image calls give the latency percentiles, and ``--batches`` calls of 32 images the throughput
(median). Without runs, it trains the smoke profiles of the classification and segmentation studies first
(tiny models: the numbers then show the signature's overhead, not a study model's cost).

Result: benchmarks/results/serving_latency.json (the machine may be shared: the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lungnet.fileio import write_json  # noqa: E402
from lungnet.machine import cpu_description  # noqa: E402
from lungnet.runs import load_run_config  # noqa: E402
from lungnet.runs.artifacts import run_model_names, run_preprocess  # noqa: E402
from lungnet.serving.export import export_run  # noqa: E402

RESULT = Path(__file__).parent / "results" / "serving_latency.json"
SMOKE_STUDIES = ("binary_nodule", "attention_unet")


def raw_input(config, preprocess, size: int, batch: int, rng: np.random.Generator) -> dict[str, tf.Tensor]:
    """What a client sends: raw grey images (`size` px square), a nodule-fusion run's masks (a centred disc
    a quarter of the image wide), and spacings where the run needs them."""
    shape = [batch, size, size] + ([3] if getattr(config.data, "neighbour_slices", False) else [])
    inputs = {"images": tf.constant(rng.uniform(0, 255, shape).astype("float32"))}
    if config.task == "nodule_fusion":
        rows, cols = np.indices((size, size)) - (size - 1) / 2
        disc = (np.hypot(rows, cols) <= size / 8).astype("float32")
        inputs["masks"] = tf.constant(np.broadcast_to(disc, shape).copy())
    if preprocess.pixel_spacing_mm is not None:
        inputs["pixel_spacing_mm"] = tf.fill([batch], 0.7)
    return inputs


def time_calls(fn, inputs, calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(**inputs)["probabilities"].numpy()  # to the host, as a server's reply
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(fn, config, preprocess, args) -> dict:
    """`fn`: one signature of a loaded SavedModel; it is sent the inputs it names."""
    takes = set(fn.structured_input_signature[1])
    rng = np.random.default_rng(0)
    one, many = (
        {k: v for k, v in raw_input(config, preprocess, args.image_size, n, rng).items() if k in takes}
        for n in (1, 32)
    )
    time_calls(fn, one, args.warmup)
    time_calls(fn, many, max(1, args.warmup // 5))
    single = np.asarray(time_calls(fn, one, args.calls)) * 1000
    batched = time_calls(fn, many, args.batches)
    return {
        "input": {k: list(v.shape) for k, v in one.items()},
        "latency_ms_batch1": {
            "p50": round(float(np.percentile(single, 50)), 2),
            "p99": round(float(np.percentile(single, 99)), 2),
            "calls": args.calls,
        },
        "throughput_images_per_s_batch32": round(32 / statistics.median(batched), 1),
    }


def smoke_runs(root: Path) -> list[Path]:
    from lungnet.studies.runner import prepare_config, run_study

    runs = []
    for study in SMOKE_STUDIES:
        run_dir = root / study
        run_study(prepare_config(study, profile="smoke"), run_dir, progress=False)
        runs.append(run_dir)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished run folders (default: smoke runs)")
    parser.add_argument("--image-size", type=int, default=128, help="raw image side (lidc-crops: 128)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or smoke_runs(Path(tmp) / "runs")
        for run_dir in runs:
            config = load_run_config(run_dir)
            preprocess = run_preprocess(run_dir, config)
            for name in run_model_names(run_dir):
                saved = export_run(run_dir, name, out=Path(tmp) / "exports" / run_dir.name / name)
                signatures = tf.saved_model.load(str(saved)).signatures
                # a nodule-fusion run's `image_only` also runs its segmenter: the cost of serving without a mask
                for signature in [s for s in ("serving_default", "image_only") if s in signatures]:
                    row = {
                        "run": str(run_dir),
                        "experiment": config.name,
                        "model": name,
                        "signature": signature,
                    }
                    row.update(measure(signatures[signature], config, preprocess, args))
                    print(json.dumps(row))
                    results.append(row)
    write_json(
        args.out,
        {
            "device": cpu_description(),
            "tensorflow": tf.__version__,
            "load_average_1min": os.getloadavg()[0],
            "smoke_models": not args.runs,
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
