"""benchmarks/study_pipelines.py: it times the studies' own pipelines and sets them against a GPU result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study_pipelines = _module("study_pipelines")


def test_every_gpu_family_has_its_studys_pipeline():
    gpu_training = _module("gpu_training")
    families = [f for fams in study_pipelines.STUDIES.values() for f in fams]
    assert sorted(families) == sorted(gpu_training.FAMILIES)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return study_pipelines.synthetic_crops(tmp_path_factory.mktemp("crops"), patients=20)


def test_inf_nets_pipeline_counts_each_image_once_over_its_three_sizes(crops):
    dataset, repeats, work = study_pipelines.study_pipeline("inf_net", crops)
    assert repeats == 3 and work["multiscale_sizes"] == [256, 352, 448] and work["size"] == 352
    sizes = [int(images.shape[1]) for images, _ in dataset.take(3)]
    assert sizes == [256, 352, 448]
    epochs = study_pipelines.time_epochs(dataset, repeats, epochs=2)
    # the training split's images, each delivered at three sizes, counted once
    assert epochs[0]["images"] == epochs[1]["images"] and 30 <= epochs[0]["images"] <= 50
    assert all(e["images_per_s"] > 0 and e["cpu_ms_per_image"] > 0 for e in epochs)


def test_the_classification_pipeline_is_the_studys_oversampled_training_split(crops):
    dataset, repeats, work = study_pipelines.study_pipeline("binary_nodule", crops)
    assert repeats == 1 and (work["size"], work["channels"], work["batch"]) == (128, 3, 128)
    assert work["augment"]["rotation"] == 0.1 and "zoom" not in work["augment"]
    images, _ = next(iter(dataset))
    assert tuple(images.shape[1:]) == (128, 128, 3)


def test_the_fusion_pipeline_carries_each_slices_mask(crops):
    dataset, repeats, work = study_pipelines.study_pipeline("nodule_hyperfusion", crops)
    assert repeats == 1 and (work["size"], work["channels"], work["batch"]) == (64, 1, 32)
    inputs, _ = next(iter(dataset))
    assert tuple(inputs["image"].shape[1:]) == (64, 64, 1) and tuple(inputs["mask"].shape[1:]) == (64, 64, 1)
    assert set(np.unique(inputs["mask"].numpy())) <= {0.0, 1.0} and inputs["mask"].numpy().any()
    [epoch] = study_pipelines.time_epochs(dataset, repeats, epochs=1)
    assert epoch["images"] > 0 and epoch["images_per_s"] > 0


def test_cores_needed_follow_the_gpus_fastest_precision():
    studies = {
        "attention_unet": {
            "cores": {"1": {"cached_images_per_s": 300.0}, "2": {"cached_images_per_s": 1000.0}}
        },
        "segmentation_zoo": {"cores": {"2": {"error": "failed"}}},
    }
    gpu = {
        "results": {
            "unet": {
                "float32": {"images_per_second": 500.0},
                "mixed_bfloat16": {"images_per_second": 1500.0},
            },
            "attention_res_unet": {"float32": {"images_per_second": 9000.0}, "mixed_float16": {"error": "x"}},
            "unar": {"float32": {"images_per_second": 800.0}},
        }
    }
    rows = study_pipelines.against_gpu(studies, gpu, host_cores=16)
    # the widest pinning's share of a core, 1,000 / 2 images/s: 1,500 images/s need 3 cores
    assert rows["unet"]["gpu_precision"] == "mixed_bfloat16" and rows["unet"][
        "cores_needed"
    ] == pytest.approx(3.0)
    assert rows["unet"]["pipeline_keeps_up"] is True
    assert rows["attention_res_unet"]["cores_needed"] == pytest.approx(18.0)
    assert rows["attention_res_unet"]["pipeline_keeps_up"] is False
    assert "unar" not in rows  # its study's pipeline was not measured
    assert study_pipelines.against_gpu(studies, None, host_cores=16) == {}
