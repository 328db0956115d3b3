"""The models, their layers and the losses are backend-neutral: every family builds and trains a step under
Keras' JAX backend (the GPU machine's), in a process that cannot import TensorFlow. A classifier and a segmenter
in the fast suite; every registered name with `make test-slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

from zoo_configs import TINY  # noqa: E402

HERE = Path(__file__).parent
# the fast suite's share, kept small for `make test`'s time (each model compiles for 10-40 s on 2 cores): the
# custom CNN and the attention residual U-Net (attention gates, residual blocks, transposed convolutions).
# Every registered name (Inf-Net, keras-hub's models, the large encoders) runs with `make test-slow`.
FAMILIES = [
    "classification:custom_cnn",
    "segmentation:attention_res_unet",
]
EVERY = [f"{task}:{name}" for task in ("classification", "segmentation") for name in TINY[task]]


def _run(items: list[str]) -> list[dict]:
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        # one compute thread: the check must not take the other test worker's core
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "jax_backend_check.py"), *items],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _check(results: list[dict], items: list[str]) -> None:
    assert [f"{r['task']}:{r['name']}" for r in results] == items
    for r in results:
        assert r["backend"] == "jax" and not r["tensorflow_imported"], r
        assert r["loss"] == r["loss"] and r["moved"] > 0.9 * r["weights"], r  # finite, and it learned


def test_a_classifier_and_a_segmenter_train_a_step_under_jax():
    _check(_run(FAMILIES), FAMILIES)


@pytest.mark.slow  # ~10 minutes on 2 cores
def test_every_model_trains_a_step_under_jax():
    rest = [item for item in EVERY if item not in FAMILIES]
    _check(_run(rest), rest)
