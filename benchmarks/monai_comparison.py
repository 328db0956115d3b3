"""lungnet's U-Net training step against the same network in a peer stack, MONAI on PyTorch, in one run.

The same network on both sides: five levels of ``filters * 2**l`` channels (32 ... 512 by default), each
block two 3x3 convolutions with batch norm and ReLU, 2x2 max pooling, 2x2 transposed-convolution up-sampling
to half the channels, concatenation with the skip, and a 1x1 convolution to one channel. lungnet:
``unet`` (depth 4, ``batch_norm: true``) on whichever Keras backend is set (TensorFlow here; JAX on the GPU
machine). MONAI: ``BasicUNet(spatial_dims=2, features=(f, 2f, 4f, 8f, 16f, f), act="relu", norm="batch",
upsample="deconv", dropout=0)``. Both train with Adam (1e-4) and binary cross-entropy on one fixed
synthetic batch already on the device, so only the training step is timed; every step brings its loss to
the host. ``--mixed``: Keras's mixed_float16 policy against ``torch.autocast(float16)`` with a gradient
scaler (a GPU's comparison; a CPU has no fast float16).

After one untimed first step and ``--warmup`` steps each, ``--windows`` windows of ``--steps`` steps
alternate between the two stacks, so a load change on a shared machine hits both; the result is each side's
median images/s and the median of the per-window ratios (lungnet over MONAI; above 1: lungnet is faster)::

    make bench-monai                                         # installs benchmarks/requirements-monai.txt
    KERAS_BACKEND=jax python benchmarks/monai_comparison.py --mixed   # on a GPU with JAX and PyTorch

Result: ``benchmarks/results/monai_comparison_<backend>_<cpu|gpu>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lungnet.fileio import write_json  # noqa: E402
from lungnet.machine import cpu_description  # noqa: E402
from lungnet.models import SEGMENTERS  # noqa: E402


def synthetic_batch(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark images with a bright square each ([B, H, W, 1]), and the squares' masks."""
    rng = np.random.default_rng(0)
    masks = np.zeros((batch, size, size, 1), np.float32)
    for i in range(batch):
        side = int(rng.integers(size // 8, size // 3))
        top, left = rng.integers(0, size - side, size=2)
        masks[i, top : top + side, left : left + side] = 1.0
    return (rng.normal(0.2, 0.05, masks.shape) + 0.6 * masks).astype(np.float32), masks


class LungnetStep:
    def __init__(self, args, images, masks):
        keras.mixed_precision.set_global_policy("mixed_float16" if args.mixed else "float32")
        keras.utils.set_random_seed(0)
        config = SEGMENTERS.parse(
            {"name": "unet", "depth": 4, "filters": args.filters, "batch_norm": True}, "model"
        )
        self.model = SEGMENTERS.build(config, (args.size, args.size, 1))
        self.model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
        self.x, self.y = images, masks

    def __call__(self) -> float:
        return float(np.ravel(self.model.train_on_batch(self.x, self.y))[0])

    def parameters(self) -> int:
        return int(self.model.count_params())


class MonaiStep:
    def __init__(self, args, images, masks):
        import torch
        from monai.networks.nets import BasicUNet

        torch.manual_seed(0)
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        f = args.filters
        self.model = BasicUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            features=(f, 2 * f, 4 * f, 8 * f, 16 * f, f),
            act="relu",
            norm="batch",
            dropout=0.0,
            upsample="deconv",
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loss = torch.nn.BCEWithLogitsLoss()
        self.mixed = args.mixed
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.mixed)
        to_device = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(self.device)  # noqa: E731
        self.x, self.y = to_device(images), to_device(masks)

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self.torch.autocast(self.device.type, dtype=self.torch.float16, enabled=self.mixed):
            loss = self.loss(self.model(self.x), self.y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.item())

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def device_kind() -> tuple[str, str]:
    """("gpu" | "cpu", a description)."""
    import torch

    if torch.cuda.is_available():
        return "gpu", torch.cuda.get_device_name(0)
    return "cpu", cpu_description()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side in px (a multiple of 16)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per window")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mixed", action="store_true", help="mixed float16 on both sides")
    parser.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.size % 16 or min(args.size, args.batch, args.filters, args.steps, args.windows) < 1:
        parser.error("--size must be a positive multiple of 16; --batch, --filters, --steps, --windows >= 1")
    try:
        import monai
        import torch
    except ImportError as exc:
        parser.exit(2, f"needs PyTorch and MONAI: pip install -r benchmarks/requirements-monai.txt ({exc})\n")

    kind, description = device_kind()
    images, masks = synthetic_batch(args.batch, args.size)
    stacks = {"lungnet": LungnetStep(args, images, masks), "monai": MonaiStep(args, images, masks)}
    first, rates, losses = {}, {name: [] for name in stacks}, {}
    for name, step in stacks.items():
        started = time.perf_counter()
        losses[name] = [step()]
        first[name] = time.perf_counter() - started
        for _ in range(args.warmup):
            step()
    for _ in range(args.windows):
        for name, step in stacks.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = step()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - started))
            losses[name].append(loss)
    if not all(np.isfinite(v).all() for v in losses.values()):
        raise SystemExit(f"a non-finite loss: {losses}")
    ratios = [a / b for a, b in zip(rates["lungnet"], rates["monai"], strict=True)]
    result = {
        "device": description,
        "keras_backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "torch": torch.__version__, "monai": monai.__version__},
        "network": f"U-Net, 5 levels of {args.filters}..{16 * args.filters} filters, batch norm, ReLU",
        "input": [args.batch, args.size, args.size, 1],
        "precision": "mixed float16" if args.mixed else "float32",
        "measured": "training images/s of train steps on one batch on the device (Adam 1e-4, binary "
        "cross-entropy), median over windows alternating between the stacks",
        "windows": args.windows,
        "steps_per_window": args.steps,
        "load_average_1min": os.getloadavg()[0],
        "stacks": {
            name: {
                "images_per_second": statistics.median(rates[name]),
                "windows": rates[name],
                "first_step_seconds": first[name],
                "parameters": stacks[name].parameters(),
                "losses": losses[name],
            }
            for name in stacks
        },
        "lungnet_over_monai": statistics.median(ratios),
        "window_ratios": ratios,
    }
    backend = keras.backend.backend()
    out = args.output or ROOT / "benchmarks" / "results" / f"monai_comparison_{backend}_{kind}.json"
    write_json(out, result)
    lungnet, peer = (result["stacks"][n]["images_per_second"] for n in ("lungnet", "monai"))
    print(
        f"{description}, Keras on {backend}, {result['precision']}: lungnet {lungnet:.1f} images/s, "
        f"MONAI {peer:.1f} images/s, ratio {result['lungnet_over_monai']:.2f}\n{out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
