"""Runs lose nothing and refuse what they cannot do: SIGKILL at any moment, true resume, run status, unique
folders, evaluate/export guards, resume options, config values checked on load, a full disk."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.cli import main
from lungnet.errors import ConfigError, LungnetError
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.runs.folder import mark_status, new_run_dir, require_finished, run_status
from lungnet.training import checkpoints
from lungnet.training import fit as fit_module
from lungnet.training.fit import TrainingConfig, train_phase

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 30

# A tiny phase in a child process: 30 epochs of 8 batches, each batch slowed a little, so that kills land
# anywhere (inside a batch, a checkpoint write, the state write, the log write).
CHILD = textwrap.dedent(
    """
    import sys, time
    import keras, numpy as np, tensorflow as tf
    from lungnet.training.fit import TrainingConfig, train_phase

    class Slow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.01)

    original = keras.Model.fit
    def slow_fit(self, *a, **k):
        k["callbacks"] = [*k["callbacks"], Slow()]
        return original(self, *a, **k)
    keras.Model.fit = slow_fit

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(size=(64, 16, 16, 1)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(64) % 2]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    config = TrainingConfig(verbose=0, early_stopping_patience=1000)
    summary = train_phase(model, ds, ds, run_dir=sys.argv[1], phase="p", epochs=N_EPOCHS, learning_rate=1e-3,
                          config=config)
    print("EPOCHS_RUN", summary["epochs_run"])
    """
).replace("N_EPOCHS", str(EPOCHS))


def _epochs_done(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "backup" / "p" / "state.json").read_text())["epochs_done"]
    except (OSError, ValueError):
        return 0


def _assert_every_h5_complete(run_dir: Path) -> None:
    """Every weights file a resume could read opens; a kill mid-write leaves only a hidden temporary
    (``.<name>.XXXX.weights.h5``, never renamed into place), which the next attempt removes."""
    for path in run_dir.rglob("*.h5"):
        if path.name.startswith("."):
            continue
        with h5py.File(path, "r") as f:  # a truncated file fails to open
            assert len(f.keys()) > 0, path


def test_sigkill_at_any_moment_then_resume_with_true_epoch_counts(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    rng = np.random.default_rng(1)
    for target in (2, 7, 13):  # kill three times, each after a few more epochs and at a random moment
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir)], env=env, stdout=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while _epochs_done(run_dir) < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0, 0.15)))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        _assert_every_h5_complete(run_dir)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(run_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert f"EPOCHS_RUN {EPOCHS}" in done.stdout, done.stderr[-2000:]
    log = pd.read_csv(run_dir / "logs" / "p.csv")
    assert list(log["epoch"]) == list(range(EPOCHS))  # no epoch lost, none counted twice
    assert json.loads((run_dir / "phases.json").read_text())["p"]["epochs_run"] == EPOCHS
    assert not (run_dir / "backup").exists()  # the phase's resume state, and the folder once empty
    _assert_every_h5_complete(run_dir)
    assert not list(run_dir.rglob(".*.weights.h5")), "a killed write's temporary was left behind"


def _tiny(seed: int = 0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))


def _data():
    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(16) % 2]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # no shuffle: every epoch the same order


def _phase(model, run_dir, config, epochs=6, learning_rate=0.05) -> dict:
    """A tiny phase ``p`` on the fixed, unshuffled data."""
    return train_phase(
        model,
        _data(),
        _data(),
        run_dir=run_dir,
        phase="p",
        epochs=epochs,
        learning_rate=learning_rate,
        config=config,
    )


@pytest.mark.parametrize("ema_momentum", [None, 0.7])
def test_resume_continues_exactly_where_it_stopped(tmp_path, monkeypatch, ema_momentum):
    """Weights, optimizer moments (and moving average) and early-stopping state are restored: the resumed
    run ends where an uninterrupted one does."""
    config = TrainingConfig(verbose=0, early_stopping_patience=2, ema_momentum=ema_momentum)
    straight = _tiny()
    _phase(straight, tmp_path / "a", config)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    original = keras.Model.fit

    def interrupted(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], Stop()]
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _phase(_tiny(), tmp_path / "b", config)
    resumed = _tiny(seed=5)  # other initial weights: only the checkpoint can make them equal
    summary = _phase(resumed, tmp_path / "b", config)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    first = pd.read_csv(tmp_path / "a" / "logs" / "p.csv")
    assert summary["epochs_run"] == len(first) and summary["early_stopped"] == (len(first) < 6)


def test_a_phase_killed_after_it_stopped_early_resumes_to_its_best_epoch(tmp_path, monkeypatch):
    """A kill after the early-stopping epoch's checkpoint but before the phase's final weights: the resume
    trains nothing and keeps the best epoch's weights (it once failed: no fit had attached the model)."""
    from lungnet.training import fit

    config = TrainingConfig(verbose=0, early_stopping_patience=1, monitor="val_loss")
    straight = _tiny()
    summary = _phase(straight, tmp_path / "a", config, epochs=40, learning_rate=0.5)
    assert summary["early_stopped"] and summary["epochs_run"] < 40

    def killed(model, path, **options):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(fit, "save_weights_atomically", killed)  # the final save only; checkpoints write
        with pytest.raises(KeyboardInterrupt):
            _phase(_tiny(), tmp_path / "b", config, epochs=40, learning_rate=0.5)
    resumed = _tiny(seed=5)  # other initial weights: only the checkpoint can make them equal
    again = _phase(resumed, tmp_path / "b", config, epochs=40, learning_rate=0.5)
    assert again["early_stopped"] and again["epochs_run"] == summary["epochs_run"]
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_best_and_final_weights_leave_the_optimizer_out_and_load_into_a_fresh_model(tmp_path):
    """-best and -final are for predicting or a next phase: they hold no optimizer state (Adam's two moments
    per weight, two thirds of an epoch's file); -last keeps it, to continue training."""
    model = _tiny()
    _phase(model, tmp_path, TrainingConfig(verbose=0), epochs=2)
    folder = tmp_path / "checkpoints"
    for name in ("p-best", "p-final"):
        with h5py.File(folder / f"{name}.weights.h5", "r") as saved:
            assert "optimizer" not in saved and "layers" in saved
    with h5py.File(folder / "p-last.weights.h5", "r") as saved:
        assert "optimizer" in saved
    fresh = _tiny(seed=5)  # other initial weights: only the file can make them equal
    fresh.load_weights(folder / "p-final.weights.h5")
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_data_autotune_reaches_both_datasets_fit_reads_and_auto_follows_the_gpu(tmp_path, monkeypatch):
    seen = {}
    real_fit = keras.Model.fit

    def fit(self, x, validation_data=None, **options):
        seen["train"] = x.options().autotune.enabled
        seen["val"] = validation_data.options().autotune.enabled
        return real_fit(self, x, validation_data=validation_data, **options)

    monkeypatch.setattr(keras.Model, "fit", fit)
    summary = _phase(_tiny(), tmp_path / "off", TrainingConfig(verbose=0, data_autotune=False), epochs=1)
    assert seen == {"train": False, "val": False} and summary["data_autotune"] is False
    _phase(_tiny(), tmp_path / "on", TrainingConfig(verbose=0, data_autotune=True), epochs=1)
    assert seen == {"train": None, "val": None}  # tf.data's default: on
    assert TrainingConfig().data_autotune == "auto"
    monkeypatch.setattr(fit_module.tf.config, "list_physical_devices", lambda kind=None: [])  # any host
    summary = _phase(_tiny(), tmp_path / "auto-cpu", TrainingConfig(verbose=0), epochs=1)
    assert seen == {"train": False, "val": False} and summary["data_autotune"] is False
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(fit_module.tf.config, "list_physical_devices", lambda kind=None: [gpu])
    summary = _phase(_tiny(), tmp_path / "auto-gpu", TrainingConfig(verbose=0), epochs=1)
    assert seen == {"train": None, "val": None} and summary["data_autotune"] is True


def test_data_autotune_takes_only_true_false_or_auto():
    with pytest.raises(ConfigError, match="training.data_autotune: 'yes' must be true, false or auto"):
        TrainingConfig(data_autotune="yes")


def test_a_full_disk_stops_before_writing_and_keeps_the_last_epoch(tmp_path, monkeypatch):
    config = TrainingConfig(verbose=0)
    real = checkpoints.shutil.disk_usage
    calls = {"n": 0}

    def filling_disk(path):
        calls["n"] += 1
        usage = real(path)
        return usage._replace(
            free=10 if calls["n"] > 2 else usage.free
        )  # one check per epoch: full at the 3rd

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", filling_disk)
    with pytest.raises(
        checkpoints.DiskFullError, match=r"MB free.*stopped after 2 complete epoch\(s\).*--resume"
    ):
        _phase(_tiny(), tmp_path, config, epochs=5, learning_rate=0.01)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", real)
    summary = _phase(_tiny(), tmp_path, config, epochs=5, learning_rate=0.01)
    assert list(pd.read_csv(tmp_path / "logs" / "p.csv")["epoch"]) == [0, 1, 2, 3, 4]
    assert summary["epochs_run"] == 5


def test_run_folders_are_unique_even_in_the_same_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = {new_run_dir("x") for _ in range(3)}
    assert len(folders) == 3 and all(p.is_dir() for p in folders)


def test_out_that_is_a_file_is_one_clear_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["train", "binary_nodule", "--profile", "smoke", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_phantom_config):
    run = tmp_path_factory.mktemp("safety") / "run"
    cache = f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"
    assert main(["train", "binary_nodule", "--profile", "smoke", "--out", str(run), "--set", cache]) == 0
    return run


def test_a_finished_run_says_so_and_an_unfinished_one_is_refused(finished_run, tmp_path, capsys):
    assert run_status(finished_run)["status"] == "finished"
    unfinished = tmp_path / "copy"
    unfinished.mkdir()
    for name in ("config.yaml", "metrics.json"):
        (unfinished / name).write_bytes((finished_run / name).read_bytes())
    mark_status(unfinished, "running")
    with pytest.raises(LungnetError, match="still running or was interrupted"):
        require_finished(unfinished)
    assert main(["export", str(unfinished)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["evaluate", str(unfinished), "--data", "lidc-phantom"]) == 2
    assert "still running or was interrupted" in capsys.readouterr().err


def test_evaluate_never_writes_into_the_run(finished_run, capsys):
    before = (finished_run / "metrics.json").read_bytes()
    for out in (finished_run, finished_run / "models"):
        assert main(["evaluate", str(finished_run), "--data", "lidc-phantom", "--out", str(out)]) == 2
        assert "whose own results it would overwrite" in capsys.readouterr().err
    assert (finished_run / "metrics.json").read_bytes() == before


def test_resume_refuses_options_it_cannot_apply(finished_run, tmp_path, capsys):
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "config.yaml").write_bytes((finished_run / "config.yaml").read_bytes())
    mark_status(interrupted, "running")
    for extra in (["--set", "training.epochs=3"], ["--data", "x.csv"], ["--out", "o"], ["--profile", "full"]):
        assert main(["train", "binary_nodule", "--resume", str(interrupted), *extra]) == 2
        assert "cannot apply" in capsys.readouterr().err
    assert main(["train", "attention_unet", "--resume", str(interrupted)]) == 2
    assert "that run is experiment 'binary_nodule'" in capsys.readouterr().err
    assert main(["train", "binary_nodule", "--resume", str(finished_run)]) == 2
    assert "already finished" in capsys.readouterr().err


def test_a_run_stopped_before_it_began_leaves_no_folder(tmp_path, tiny_phantom_config, capsys):
    out = tmp_path / "run"
    cache = f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"
    bad_split = "data.split=[0.96, 0.02, 0.02]"  # leaves a class out of validation
    assert (
        main(
            [
                "train",
                "binary_nodule",
                "--profile",
                "smoke",
                "--out",
                str(out),
                "--set",
                cache,
                "--set",
                bad_split,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "removed" in err and not out.exists()


def test_an_unexpected_crash_marks_the_run_failed(tmp_path, monkeypatch):
    from lungnet.studies import registry
    from lungnet.studies.runner import run_study

    def crash(config, run_dir, progress=True):
        (run_dir / "partial.txt").write_text("work done before the crash")
        raise RuntimeError("a library failed\nwith details")

    study = registry.get_study("segmentation")
    monkeypatch.setitem(registry.STUDIES, "segmentation", dataclasses.replace(study, run=crash))
    config = load_experiment(resolve_experiment_path("attention_unet"), profile="smoke")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(RuntimeError):
        run_study(config, run_dir, progress=False)
    status = run_status(run_dir)
    assert status["status"] == "failed" and status["error"] == "RuntimeError: a library failed"
    assert (run_dir / "partial.txt").is_file()  # nothing already written is lost
    # a resume that finishes owns its status; the failed attempt is kept as history, not as its error
    monkeypatch.setitem(registry.STUDIES, "segmentation", dataclasses.replace(study, run=lambda *a, **k: {}))
    run_study(config, run_dir, progress=False)
    status = run_status(run_dir)
    assert status["status"] == "finished" and "error" not in status and "failed_at" not in status
    (attempt,) = status["earlier_attempts"]
    assert attempt["status"] == "failed" and attempt["error"] == "RuntimeError: a library failed"
    assert status["wall_seconds_all_attempts"] == pytest.approx(
        attempt["wall_seconds"] + status["wall_seconds"]
    )
    # each attempt names its machine, so wall times from different machines are not mixed up
    for record in (status, attempt):
        assert record["machine"]["cpus"] >= 1 and record["machine"]["cpu"]
        assert record["machine"]["tensorflow"] == tf.__version__
    from lungnet.reports.training import run_note

    assert f"on {status['machine']['cpu']}, {status['machine']['cpus']} cores" in run_note(run_dir)


def test_the_machine_is_read_from_cpuinfo(tmp_path):
    from lungnet.machine import cpu_line, cpu_model

    cpuinfo = tmp_path / "cpuinfo"
    processor = "model name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n"
    cpuinfo.write_text(processor + "\n" + processor)  # one block per logical CPU: the first is read
    name, extensions = cpu_model(cpuinfo)
    assert name == "Example CPU 9000" and extensions == ("avx2", "fma", "avx512f", "avx512_bf16")
    assert cpu_line(name, 2, extensions) == "Example CPU 9000, 2 cores (avx2, fma, avx512f, avx512_bf16)"
    assert cpu_model(tmp_path / "missing")[1] == ()  # not Linux: no extensions, no error


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("training.epochs=0", r"--set training\.epochs: 0 must be >= 1"),
        ("training.seed=-1", r"--set training\.seed: -1 must be >= 0"),
        ("evaluation.explain_samples=0", r"evaluation\.explain_samples: 0 must be >= 1"),
        ("evaluation.lime_samples=0", r"evaluation\.lime_samples"),
        ("evaluation.retrieval_k=-1", r"evaluation\.retrieval_k"),
        ("training.epochs=abc", r"--set training\.epochs: expected an integer"),
    ],
)
def test_option_values_are_checked_when_the_config_loads(assignment, message):
    from lungnet.studies.runner import parse_overrides

    with pytest.raises(ConfigError, match=message) as caught:
        load_experiment(resolve_experiment_path("binary_nodule"), "smoke", parse_overrides([assignment]))
    assert "binary_nodule.yaml" not in str(caught.value)  # the file did not hold the value


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "abc"], r"--split \['abc'\] must be three numbers"),
        (
            ["--split", "0.7,0.2,0.2"],
            r"--split \(0\.7, 0\.2, 0\.2\) must be three non-negative numbers summing to 1",
        ),
        (["--split-seed", "-1"], r"--split-seed: -1 must be >= 0"),
    ],
)
def test_data_info_checks_its_options_before_reading_data(args, message, capsys):
    assert main(["data", "info", "lidc-phantom", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert __import__("re").search(message, err), err


def test_data_seeds_and_split_are_checked_on_load():
    from lungnet.studies.runner import parse_overrides

    for assignment, message in (
        ("data.seed=-3", r"--set data\.seed: -3 must be >= 0"),
        ("data.split=[0.5, 0.5, 0.5]", r"data\.split: .* summing to 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_experiment(resolve_experiment_path("binary_nodule"), "smoke", parse_overrides([assignment]))


def test_warnings_reach_the_user_as_one_line(capsys):
    import warnings

    from lungnet import cli

    original = warnings.showwarning
    try:
        assert main(["models", "list", "--task", "encoder"]) == 0
        warnings.warn("row 7 repeats row 2", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = original
    assert "warning: row 7 repeats row 2\n" in capsys.readouterr().err
    assert cli._warning_line  # the hook main() installs


def test_early_stopping_follows_the_monitor_and_its_direction(tmp_path):
    """val_auc: higher is better; the kept weights are those of the best AUC epoch, not the best loss."""
    model = _tiny()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    callback = checkpoints.PhaseCheckpoint(
        tmp_path / "b",
        last=tmp_path / "last.weights.h5",
        best=tmp_path / "best.weights.h5",
        patience=2,
        monitor="val_auc",
    )
    (tmp_path / "b").mkdir()
    callback.set_model(model)
    kept = None
    for epoch, (loss, auc) in enumerate([(0.7, 0.60), (0.5, 0.80), (0.4, 0.75), (0.3, 0.70)]):
        for w in model.trainable_weights:
            w.assign(w + 1.0)  # each epoch's weights differ
        if epoch == 1:
            kept = [w.numpy().copy() for w in model.weights]
        callback.on_epoch_end(epoch, {"val_loss": loss, "val_auc": auc})
        if model.stop_training:
            break
    assert callback.state["best_epoch"] == 2 and callback.state["best"] == pytest.approx(0.80)
    assert callback.state["stopped"] and epoch == 3  # two epochs without a better AUC
    callback.on_train_end()
    for a, b in zip(kept, model.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


def test_cosine_schedule_with_warm_up():
    from lungnet.training.fit import scheduled_learning_rate

    config = TrainingConfig(lr_schedule="cosine", warmup_epochs=2, min_learning_rate_ratio=0.1)
    rates = [scheduled_learning_rate(e, 1.0, 6, config) for e in range(6)]
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0])  # warm-up, then the cosine starts at the base rate
    assert rates[2] > rates[3] > rates[4] > rates[5] > 0.1
    assert scheduled_learning_rate(5, 1.0, 6, TrainingConfig()) == 1.0  # constant by default
    with pytest.raises(ConfigError, match="training.monitor"):
        TrainingConfig(monitor="auc")


def test_scheduled_phase_logs_its_learning_rates(tmp_path):
    config = TrainingConfig(verbose=0, lr_schedule="cosine", warmup_epochs=1, monitor="val_loss")
    _phase(_tiny(), tmp_path, config, epochs=3, learning_rate=0.1)
    log = pd.read_csv(tmp_path / "logs" / "p.csv")
    assert log["learning_rate"].tolist() == pytest.approx([0.1, 0.1, 0.05], rel=1e-5)
