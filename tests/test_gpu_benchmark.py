"""benchmarks/gpu_training.py: its table is the studies' `full` settings, and a quick run writes its JSON."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.models import CLASSIFIERS, SEGMENTERS

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_training", ROOT / "benchmarks" / "gpu_training.py")
gpu_training = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_training)

EXPERIMENT = {"custom_cnn": "binary_nodule", "efficientnet_b2": "binary_nodule", "unet": "attention_unet"}
EXPERIMENT |= {"attention_res_unet": "attention_unet", "inf_net": "inf_net"}
EXPERIMENT |= {"nodule_hyperfusion": "nodule_hyperfusion"}
WEIGHT_FIELDS = {"weights", "encoder_weights"}  # the benchmark starts from random weights (no download)


def _fields(config) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in WEIGHT_FIELDS}


@pytest.mark.parametrize("family", list(gpu_training.FAMILIES))
def test_each_family_runs_at_its_studys_full_settings(family):
    task, model, size, channels, batch = gpu_training.FAMILIES[family]
    config = load_experiment(
        resolve_experiment_path(EXPERIMENT.get(family, "segmentation_zoo")), profile="full"
    )
    data = config.data
    study_size = data.image_size if hasattr(data, "image_size") else data.preprocess.image_size
    study_channels = data.channels if hasattr(data, "channels") else data.preprocess.channels
    assert (size, channels, batch) == (study_size, study_channels, data.batch_size)
    registry = CLASSIFIERS if task == "classification" else SEGMENTERS
    ours = _fields(registry.parse(dict(model), "model"))
    assert any(_fields(m.model) == ours for m in config.models), f"{family}: no model of the study matches"


def test_a_quick_run_writes_every_number(tmp_path):
    out = tmp_path / "gpu.json"
    argv = ["--quick", "--families", "light_unet", "--precisions", "float32", "--out", str(out)]
    assert gpu_training.main(argv) == 0
    result = json.loads(out.read_text())
    entry = result["results"]["light_unet"]["float32"]
    assert result["backend"] == "tensorflow" and entry["finite"] and entry["images_per_second"] > 0
    assert entry["speedup_vs_float32"] == 1.0 and entry["batch"] == 2 and result["complete"] is True


def test_a_run_cut_off_keeps_what_it_measured(tmp_path, monkeypatch):
    """A device call ends at its time limit: every measurement made before it stays in the JSON."""
    out = tmp_path / "gpu.json"
    rates = {"float32": 10.0, "mixed_bfloat16": 25.0}  # the writing is under test; `measure` is above

    def measure_then_cut_off(family, precision, args):
        if (family, precision) == ("unet", "mixed_bfloat16"):
            raise KeyboardInterrupt  # stands in for the limit's signal, which ends the process mid-measurement
        return {"images_per_second": rates[precision], "batch": 2}

    monkeypatch.setattr(gpu_training, "measure", measure_then_cut_off)
    precisions = ["--precisions", "float32", "mixed_bfloat16"]
    argv = ["--quick", "--families", "light_unet", "unet", *precisions, "--out", str(out)]
    with pytest.raises(KeyboardInterrupt):
        gpu_training.main(argv)
    result = json.loads(out.read_text())
    assert result["complete"] is False and result["families_asked"] == ["light_unet", "unet"]
    assert list(result["results"]["light_unet"]) == ["float32", "mixed_bfloat16"]
    assert list(result["results"]["unet"]) == ["float32"]  # the family it was cut off in, up to the cut
    assert result["results"]["light_unet"]["mixed_bfloat16"]["speedup_vs_float32"] == 2.5
