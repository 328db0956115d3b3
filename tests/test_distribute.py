"""tf.distribute: two replicas on logical CPUs (`mirrored`) train like one device at the same global batch
and learning rate; so do two worker processes on localhost under `multi_worker`.

Each run is a process of its own (`tests/distributed_fit.py`): logical devices must be set up before
TensorFlow's first operation. With the per-replica batch B and rate r, N replicas step with batch N·B at
rate N·r (`training.scale_with_replicas`), so the reference is one device at batch N·B and rate N·r. Losses
agree to 1e-3 relative per epoch: the all-reduced gradient sums the replicas' halves of the batch in another
order than one device does, a float32 rounding difference that Adam's per-weight normalisation carries into
later steps (measured: 4e-5 after the second epoch, 2e-4 after the third). The
mirrored run and both workers are killed after their second epoch and resumed, so checkpoints and resume
are checked under each strategy too.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lungnet.errors import ConfigError
from lungnet.training import distribute

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


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _worker_envs(n: int = 2) -> list[dict]:
    """The environments of `n` workers of one cluster on localhost (free ports), worker 0 first."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(n)]}
    return [
        _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for index in range(n)
    ]


def _workers(tmp_path: Path, kill_after=0) -> list[tuple[subprocess.Popen, Path]]:
    """Two worker processes on localhost, each its own run folder, batch 4 and rate 1e-3 per replica."""
    started = []
    for index, env in enumerate(_worker_envs()):
        run_dir = tmp_path / f"worker{index}"
        run_dir.mkdir(exist_ok=True)
        started.append((_fit("multi_worker", 4, 1e-3, run_dir, env=env, kill_after=kill_after), run_dir))
    return started


def test_multi_worker_on_two_localhost_workers_trains_like_one_device_through_a_kill(tmp_path, one_device):
    for process, run_dir in _workers(tmp_path, kill_after=2):  # both die after their second epoch
        _result(process, run_dir, returncode=3)
    results = [_result(process, run_dir) for process, run_dir in _workers(tmp_path)]  # both resume
    for worker in results:
        assert worker["replicas"] == 2 and worker["learning_rate"] == pytest.approx(2e-3)
        assert _close(worker["losses"], one_device["losses"]), (worker, one_device)
    assert (
        results[0]["losses"] == results[1]["losses"]
    )  # the workers' logs agree: the metrics are all-reduced


def test_multi_worker_needs_a_cluster_spec(monkeypatch, tmp_path, capsys):
    from lungnet.cli import main
    from lungnet.training import multi_worker

    with pytest.raises(ConfigError, match="multi_worker needs TF_CONFIG"):
        multi_worker.cluster_task({})
    with pytest.raises(ConfigError, match="TF_CONFIG: not a cluster spec"):
        multi_worker.cluster_task({"TF_CONFIG": "{not json"})
    spec = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}
    with pytest.raises(ConfigError, match="task worker 2 is not in the cluster"):
        multi_worker.cluster_task({"TF_CONFIG": json.dumps(spec)})
    spec["task"]["index"] = 1
    task = multi_worker.cluster_task({"TF_CONFIG": json.dumps(spec)})
    assert (task.kind, task.index, task.workers, task.chief) == ("worker", 1, 2, False)
    spec["task"]["index"] = 0
    assert multi_worker.cluster_task({"TF_CONFIG": json.dumps(spec)}).chief
    spec["cluster"]["chief"] = ["c:1"]  # with a chief, worker 0 is not it
    assert not multi_worker.cluster_task({"TF_CONFIG": json.dumps(spec)}).chief
    assert multi_worker.cluster_task({"TF_CONFIG": json.dumps(spec)}).workers == 3
    # without TF_CONFIG the command says what is missing before it makes a run folder
    monkeypatch.delenv("TF_CONFIG", raising=False)
    command = ["train", "binary_nodule", "--profile", "smoke", "--out", str(tmp_path / "run")]
    assert main([*command, "--set", "training.strategy=multi_worker"]) == 2
    assert "multi_worker needs TF_CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert distribute.replicas("default") == 1


@pytest.mark.slow  # about a minute on 2 cores: a whole smoke study on each of two workers
def test_a_study_on_two_workers_writes_one_run_folder(tmp_path, tiny_phantom_config):
    cli = "import sys; from lungnet.cli import main; sys.exit(main(sys.argv[1:]))"
    command = ["train", "binary_nodule", "--profile", "smoke", "--out", str(tmp_path / "run")]
    command += ["--set", "training.strategy=multi_worker"]
    command += ["--set", f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"]
    workers = []
    for env in _worker_envs():
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", cli, *command],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    copy = re.search(r"worker done; its copy (\S+) deleted", outputs[1])
    assert copy and not Path(copy.group(1)).exists(), outputs[1][-2000:]
    # both workers trained the same model: their summaries agree
    results = [re.search(r"custom_cnn: validation F1 .*", output).group(0) for output in outputs]
    assert results[0] == results[1]
