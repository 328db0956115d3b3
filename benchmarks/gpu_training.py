"""Training images/s of every model family at its study's input and batch size, float32 against mixed float16
and mixed bfloat16, on any Keras backend.

Needs only Keras, NumPy and lungnet's model code (no TensorFlow on the JAX backend), so it runs on a GPU
machine with JAX and no TensorFlow::

    KERAS_BACKEND=jax python benchmarks/gpu_training.py                 # every family, three precisions
    python benchmarks/gpu_training.py --jit                              # TensorFlow backend, XLA on
    python benchmarks/gpu_training.py --quick --families unet custom_cnn # a short CPU check

Each (family, precision) gets a fresh model compiled with Adam and binary cross-entropy on every output, and
trains with ``train_on_batch`` on one fixed synthetic batch, so only the training step is timed (no input
pipeline). The first step (tracing, compilation) is reported on its own, then ``--warmup`` untimed steps, then
``--windows`` windows of ``--steps`` steps; every step brings its loss to the host, so a window's time covers
its device work. The result is the median window's images/s; speed-ups are against float32 of the same
family. On JAX the train step is always compiled with XLA; on TensorFlow ``--jit`` / ``--no-jit`` chooses.

Result: ``benchmarks/results/gpu_training_<backend>.json`` (device, backend, versions, every number), rewritten
after every measurement with ``"complete": false`` until the last, so a run cut off by a time limit keeps
what it measured. ``benchmarks/device_run.sh`` runs it on a GPU machine without TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lungnet.fileio import write_json  # noqa: E402
from lungnet.machine import cpu_description  # noqa: E402
from lungnet.models import CLASSIFIERS, SEGMENTERS  # noqa: E402
from lungnet.models.contract import INPUT_NAME, output_names  # noqa: E402

# family -> (task, model config, input size, channels, batch): the `full` profiles of the studies' experiment
# files (tests/test_gpu_benchmark.py checks them against the YAML).
FAMILIES = {
    "custom_cnn": ("classification", {"name": "custom_cnn"}, 128, 3, 128),  # binary_nodule.yaml
    "efficientnet_b2": ("classification", {"name": "efficientnet_b2", "weights": None}, 128, 3, 128),
    "unet": ("segmentation", {"name": "unet", "depth": 4, "filters": 32}, 256, 1, 8),  # attention_unet.yaml
    "attention_res_unet": (
        "segmentation",
        {"name": "attention_res_unet", "depth": 4, "filters": 32},
        256,
        1,
        8,
    ),
    "inf_net": (
        "segmentation",
        {"name": "inf_net", "encoder": "resnet50", "encoder_weights": None},
        352,
        3,
        8,
    ),
    "unar": ("segmentation", {"name": "unar"}, 256, 1, 8),  # segmentation_zoo.yaml
    "res34_unet_v2": ("segmentation", {"name": "res34_unet_v2"}, 256, 1, 8),
    "unet_plus_plus": (
        "segmentation",
        {"name": "unet_plus_plus", "depth": 4, "filters": 32, "deep_supervision": True},
        256,
        1,
        8,
    ),
    "deeplab_v3_plus": ("segmentation", {"name": "deeplab_v3_plus"}, 256, 1, 8),
    "segformer": ("segmentation", {"name": "segformer", "variant": "b0"}, 256, 1, 8),
    "light_unet": ("segmentation", {"name": "light_unet", "depth": 4, "filters": 16}, 256, 1, 8),
    # nodule_hyperfusion.yaml: a 64 px crop and its mask (the mask input is filled like the image)
    "nodule_hyperfusion": ("classification", {"name": "nodule_hyperfusion"}, 64, 1, 32),
}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
REGISTRIES = {"classification": CLASSIFIERS, "segmentation": SEGMENTERS}


def build(family: str, size: int | None = None, batch: int | None = None):
    task, config, default_size, channels, default_batch = FAMILIES[family]
    size, batch = size or default_size, batch or default_batch
    registry = REGISTRIES[task]
    parsed = registry.parse(dict(config), "model")
    model = registry.build(parsed, (size, size, channels), *((2,) if task == "classification" else ()))
    rng = np.random.default_rng(0)
    inputs = {t.name: rng.random((batch, *t.shape[1:]), dtype=np.float32) for t in model.inputs}
    x = inputs[INPUT_NAME] if len(inputs) == 1 else inputs
    if task == "classification":
        y = (np.arange(batch) % 2).astype("float32")[:, None]
    else:
        y = np.zeros((batch, size, size, 1), "float32")
        y[:, size // 4 : size // 2, size // 4 : size // 2] = 1
    names = output_names(model)
    targets = {n: y for n in names} if len(names) > 1 else y
    return model, x, targets, names, batch


def measure(family: str, precision: str, args) -> dict:
    keras.mixed_precision.set_global_policy(precision)
    try:
        model, x, y, names, batch = build(family, args.size, args.batch)
        kwargs = {}
        if keras.backend.backend() == "tensorflow":
            kwargs["jit_compile"] = args.jit
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss={n: "binary_crossentropy" for n in names} if len(names) > 1 else "binary_crossentropy",
            **kwargs,
        )
        started = time.perf_counter()
        first_loss = float(np.ravel(model.train_on_batch(x, y))[0])
        first = time.perf_counter() - started
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        windows = []
        for _ in range(args.windows):
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = float(np.ravel(model.train_on_batch(x, y))[0])
            windows.append(args.steps * batch / (time.perf_counter() - started))
        return {
            "images_per_second": statistics.median(windows),
            "windows": windows,
            "first_step_seconds": first,
            "first_loss": first_loss,
            "last_loss": loss,
            "finite": bool(np.isfinite(loss)),
            "batch": batch,
            "parameters": int(model.count_params()),
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


def device_name() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--size", type=int, help="override every family's input size")
    parser.add_argument("--batch", type=int, help="override every family's batch")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True, help="TensorFlow: XLA")
    parser.add_argument("--quick", action="store_true", help="a CPU check: 64 px, batch 2, 1 step, 1 window")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup, args.windows = (
            args.size or 64,
            args.batch or 2,
            1,
            0,
            1,
        )
    backend = keras.backend.backend()
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_training_{backend}.json"
    header = run_header(args, backend)  # what does not change between the measurements
    # rewritten (atomically) after every measurement, "complete": false until the last: a device call cut
    # off by its time limit keeps what it measured
    results: dict = {}
    for family in args.families:
        results[family] = {}
        for precision in args.precisions:
            try:
                results[family][precision] = measure(family, precision, args)
            except Exception as exc:  # one family failing must not lose the others' numbers
                results[family][precision] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            entry = results[family][precision]
            shown = (
                f"{entry['images_per_second']:.1f} images/s"
                if "images_per_second" in entry
                else entry["error"]
            )
            print(f"{family:>20} {precision:>15}: {shown}", flush=True)
            base = results[family].get("float32", {}).get("images_per_second")
            for entry in results[family].values():
                if base and "images_per_second" in entry:
                    entry["speedup_vs_float32"] = entry["images_per_second"] / base
            last = family == args.families[-1] and precision == args.precisions[-1]
            load = os.getloadavg() if hasattr(os, "getloadavg") else None
            write_json(out, {**header, "load_average": load, "complete": last, "results": results})
    print(f"wrote {out}")
    return 0


def run_header(args, backend: str) -> dict:
    return {
        "backend": backend,
        "device": device_name(),
        "xla": True if backend == "jax" else (args.jit if backend == "tensorflow" else None),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "host_cpu": cpu_description(),  # what feeds the device: the input pipeline's side of the comparison
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "families", "precisions")},
        "families_asked": list(args.families),
        "precisions_asked": list(args.precisions),
    }


if __name__ == "__main__":
    raise SystemExit(main())
