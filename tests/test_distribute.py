"""tf.distribute: two replicas on logical CPUs (`mirrored`) train like one device at the same global batch
and learning rate; `multi_worker` is refused with its reason.

Each run is a process of its own (`tests/distributed_fit.py`): logical devices must be set up before
TensorFlow's first operation. With the per-replica batch B and rate r, N replicas step with batch N·B at
rate N·r (`training.scale_with_replicas`), so the reference is one device at batch N·B and rate N·r. Losses
agree to 1e-3 relative per epoch: the all-reduced gradient sums the replicas' halves of the batch in another
order than one device does, a float32 rounding difference that Adam's per-weight normalisation carries into
later steps (measured: 4e-5 after the second epoch, 2e-4 after the third). The
mirrored run is killed after its second epoch and resumed, so checkpoints and resume are checked under the
strategy too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungnet.cli import main
from lungnet.errors import ConfigError
from lungnet.training import distribute
from lungnet.training.fit import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-3


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _fit(strategy, batch, rate, run_dir: Path, cpus=1, env=None, kill_after=0) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.distributed_fit", strategy, str(batch), str(rate), str(run_dir)]
    return subprocess.Popen(
        [*command, str(cpus), str(kill_after)],
        cwd=ROOT,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _result(process: subprocess.Popen, run_dir: Path, returncode: int = 0) -> dict | None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == returncode, output.decode()[-3000:]
    return json.loads((run_dir / "losses.json").read_text()) if returncode == 0 else None


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) == 3 and all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> dict:
    """The reference: one device, batch 8, rate 2e-3."""
    run_dir = tmp_path_factory.mktemp("one_device")
    return _result(_fit("default", 8, 2e-3, run_dir), run_dir)


def test_mirrored_on_two_logical_cpus_trains_like_one_device_through_a_kill(tmp_path, one_device):
    _result(_fit("mirrored", 4, 1e-3, tmp_path, cpus=2, kill_after=2), tmp_path, returncode=3)
    assert not (tmp_path / "losses.json").exists()
    mirrored = _result(_fit("mirrored", 4, 1e-3, tmp_path, cpus=2), tmp_path)  # resumes after epoch 2
    assert mirrored["replicas"] == 2 and mirrored["learning_rate"] == pytest.approx(2e-3)
    assert _close(mirrored["losses"], one_device["losses"]), (mirrored, one_device)
    # and it learns: the loss falls over the three epochs
    assert mirrored["losses"][-1] < mirrored["losses"][0]


def test_multi_worker_is_refused_with_its_reason_before_a_run_begins(tmp_path, capsys):
    # Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585): say so, at config time
    with pytest.raises(ConfigError, match="multi_worker is not available.*keras-team/keras#20585"):
        TrainingConfig(strategy="multi_worker")
    command = ["train", "binary_nodule", "--profile", "smoke", "--out", str(tmp_path / "run")]
    assert main([*command, "--set", "training.strategy=multi_worker"]) != 0
    assert "multi_worker is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert distribute.replicas("default") == 1
