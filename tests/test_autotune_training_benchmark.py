"""benchmarks/autotune_training.py: training with tf.data autotuning on and off, summarised per setting."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location(
    "autotune_training", ROOT / "benchmarks" / "autotune_training.py"
)
autotune_training = importlib.util.module_from_spec(spec)
spec.loader.exec_module(autotune_training)


def _run(study, autotune, seconds, cpu, idle):
    return {
        "study": study,
        "autotune": autotune,
        "training_seconds": seconds,
        "training_cpu_seconds": cpu,
        "training_images_per_s": 100 / seconds,
        "idle_share": idle,
    }


def test_the_summary_is_the_median_per_study_and_setting_and_skips_failed_runs():
    runs = [
        _run("binary_nodule", True, 10.0, 18.0, 0.1),
        _run("binary_nodule", False, 8.0, 15.0, 0.06),
        _run("binary_nodule", True, 14.0, 19.0, 0.3),
        _run("binary_nodule", False, 9.0, 16.0, 0.1),
        _run("binary_nodule", True, 12.0, 20.0, 0.2),
        {"study": "attention_unet", "autotune": True, "error": "Traceback ..."},
        _run("attention_unet", False, 30.0, 55.0, 0.08),
    ]
    table = autotune_training.summarise(runs)
    on, off = table["binary_nodule"]["on"], table["binary_nodule"]["off"]
    assert (on["training_seconds"], on["training_cpu_seconds"], on["idle_share"], on["runs"]) == (
        12.0,
        19.0,
        0.2,
        3,
    )
    assert off["training_seconds"] == pytest.approx(8.5) and off["runs"] == 2
    assert list(table["attention_unet"]) == ["off"]  # the failed run is not summarised as a setting


def test_missing_crops_are_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        autotune_training.main(["--data", str(tmp_path / "absent")])
