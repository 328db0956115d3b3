"""Training speed (images/s) of the plain U-Net and the attention residual U-Net, with and without XLA and
mixed precision.

Each (model, image size, mode) gets a fresh model (``--depth``, ``--filters``; 1 input channel) compiled with
`HybridLoss` and Adam, and trains with ``train_on_batch`` on one fixed synthetic batch (bright squares on
a dark noisy background) already on the device, so only the training step is timed: no input pipeline.
Every step returns its loss to the host, so each window's time includes all its device work. The first
step (tracing, XLA compilation) is reported on its own; then ``--warmup`` more steps run untimed, and
``--windows`` windows of ``--steps`` steps are timed; the result is the median window's images/s.

Modes: ``float32`` (``jit_compile=False``: Keras's default "auto" turns XLA on whenever a GPU is visible, so
the baseline must switch it off explicitly), ``xla`` (``jit_compile=True``), ``mixed_float16`` (global
policy; Keras wraps the optimizer in a loss-scale optimizer) and ``xla+mixed_float16``. With a GPU all four
run; on a CPU only float32 unless ``--all-modes`` (float16 has no fast CPU kernels). Speed-ups are against
float32 of the same model and size; ``attention_res_unet_vs_unet`` is the attention model's images/s over
the plain U-Net's in each mode.

Result: benchmarks/results/segmentation_speed.json (the machine may be shared: the load average is recorded).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lungnet.fileio import write_json  # noqa: E402
from lungnet.losses import HybridLoss  # noqa: E402
from lungnet.machine import cpu_description  # noqa: E402
from lungnet.models import SEGMENTERS, build_segmenter  # noqa: E402

SEGMENTATION_MODELS = ("unet", "attention_res_unet")  # the study's two; --models takes any of SEGMENTERS

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "segmentation_speed.json"
MODES = {  # name: (jit_compile, dtype policy)
    "float32": (False, "float32"),
    "xla": (True, "float32"),
    "mixed_float16": (False, "mixed_float16"),
    "xla+mixed_float16": (True, "mixed_float16"),
}
# Per device: timed steps per window, and untimed warm-up steps after the first (a 2-core CPU takes ~3 s for
# one 128 px step of batch 8; the CPU defaults keep the run near 4 minutes there).
DEFAULT_STEPS = {"gpu": 20, "cpu": 2}
DEFAULT_WARMUP = {"gpu": 5, "cpu": 1}


def synthetic_batch(batch_size: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy images with one bright square each, and the squares' masks."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.2, 0.05, (batch_size, size, size, 1)).astype("float32")
    masks = np.zeros_like(images)
    for i in range(batch_size):
        side = int(rng.integers(size // 8, size // 3))
        top, left = rng.integers(0, size - side, size=2)
        masks[i, top : top + side, left : left + side] = 1.0
    return images + 0.6 * masks, masks


def measure(
    name: str, size: int, mode: str, args: argparse.Namespace, device: str, steps: int
) -> dict[str, object]:
    """Images/s of training steps of one fresh model in one mode (see the module docstring)."""
    jit_compile, policy = MODES[mode]
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_segmenter({"name": name, "depth": args.depth, "filters": args.filters}, (size, size, 1))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=HybridLoss(), jit_compile=jit_compile)
        images, masks = synthetic_batch(args.batch_size, size)
        with tf.device(device):  # on the device once, so no step pays for a host-to-device copy
            x, y = tf.identity(images), tf.identity(masks)
        start = time.perf_counter()
        first_loss = float(model.train_on_batch(x, y))
        first_step_s = time.perf_counter() - start
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        rates, cpu_ms = [], []
        for _ in range(args.windows):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                loss = float(model.train_on_batch(x, y))
            rates.append(steps * args.batch_size / (time.perf_counter() - start))
            cpu_ms.append((time.process_time() - start_cpu) * 1000 / (steps * args.batch_size))
        if not (np.isfinite(first_loss) and np.isfinite(loss)):
            raise RuntimeError(f"{name} {size} px {mode}: non-finite loss ({first_loss}, {loss})")
        return {
            "model": name,
            "image_size": size,
            "mode": mode,
            "images_per_s": statistics.median(rates),
            "window_images_per_s": rates,
            "cpu_ms_per_image": statistics.median(cpu_ms),
            "first_step_s": first_step_s,
            "parameters": model.count_params(),
            "loss_first_last": [first_loss, loss],
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()


def device_info() -> tuple[str, str]:
    """(TensorFlow device string, a description) of the first GPU, else the CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "/GPU:0", f"GPU: {details.get('device_name', gpus[0].name)} (of {len(gpus)} visible)"
    return "/CPU:0", cpu_description()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=SEGMENTERS.names(), default=list(SEGMENTATION_MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256], help="image sides in px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per window (default: {gpu} on a GPU, {cpu} on a CPU)".format(**DEFAULT_STEPS),
    )
    parser.add_argument("--windows", type=int, default=3, help="timed windows; the result is their median")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps after the first (default: {gpu} on a GPU, {cpu} on a CPU)".format(
            **DEFAULT_WARMUP
        ),
    )
    parser.add_argument("--all-modes", action="store_true", help="on a CPU, also XLA and mixed precision")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.windows) < 1 or (args.steps or 1) < 1 or (args.warmup or 0) < 0:
        parser.error("--batch-size, --steps and --windows must be >= 1, --warmup >= 0")
    if any(size < 1 or size % 2**args.depth for size in args.sizes):
        parser.error(f"--sizes must be positive multiples of 2**depth = {2**args.depth}")

    device, description = device_info()
    gpu = device.startswith("/GPU")
    kind = "gpu" if gpu else "cpu"
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[kind]
    if args.warmup is None:
        args.warmup = DEFAULT_WARMUP[kind]
    modes = list(MODES) if gpu or args.all_modes else ["float32"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    results = []
    for size in args.sizes:
        for name in args.models:
            for mode in modes:
                r = measure(name, size, mode, args, device, steps)
                results.append(r)
                print(
                    f"{name:>18} {size:>4} px {mode:>17}: {r['images_per_s']:8.1f} images/s "
                    f"(windows {', '.join(f'{v:.1f}' for v in r['window_images_per_s'])}; first step "
                    f"{r['first_step_s']:.1f} s; {r['cpu_ms_per_image']:.0f} CPU ms per image)",
                    flush=True,
                )

    rate = {(r["model"], r["image_size"], r["mode"]): r["images_per_s"] for r in results}
    speedups = {
        f"{name}@{size}": {mode: rate[name, size, mode] / rate[name, size, "float32"] for mode in modes}
        for size in args.sizes
        for name in args.models
    }
    cpu = {(r["model"], r["image_size"], r["mode"]): r["cpu_ms_per_image"] for r in results}
    relative, relative_cpu = {}, {}
    if set(SEGMENTATION_MODELS) <= set(args.models):
        for size in args.sizes:
            for mode in modes:
                relative[f"{mode}@{size}"] = rate["attention_res_unet", size, mode] / rate["unet", size, mode]
                relative_cpu[f"{mode}@{size}"] = (
                    cpu["attention_res_unet", size, mode] / cpu["unet", size, mode]
                )
    result = {
        "device": description,
        "measured": "training images/s: train_on_batch on one synthetic batch already on the device, "
        "HybridLoss + Adam; median over windows after the first step and the warm-up; speedups: images/s "
        "over float32 (jit_compile=False) of the same model and size; cpu_ms_per_image: process CPU time "
        "(all threads) per image, median over windows: other processes on a shared machine barely change it",
        "models": {"depth": args.depth, "filters": args.filters, "input_channels": 1},
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "steps_per_window": steps,
        "windows": args.windows,
        "modes": modes,
        "results": results,
        "speedups_vs_float32": speedups,
        "attention_res_unet_vs_unet": relative,
        "attention_res_unet_vs_unet_cpu_ms_per_image": relative_cpu,
        "seconds_total": time.perf_counter() - start,
        "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    write_json(args.output, result)
    for key, values in speedups.items():
        if len(values) > 1:
            print(f"speed-up vs float32, {key}: " + ", ".join(f"{m} {v:.2f}x" for m, v in values.items()))
    for key, value in relative.items():
        print(
            f"attention_res_unet / unet, {key}: images/s {value:.2f}, CPU time per image "
            f"{relative_cpu[key]:.2f}"
        )
    print(f"{description}; {result['seconds_total']:.0f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
