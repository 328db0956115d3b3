"""`lungnet models list|describe`, run folders made before the model registry, and the package layering."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from lungnet.cli import main
from lungnet.errors import ConfigError
from lungnet.models import CLASSIFIERS, ENCODERS, SEGMENTERS
from lungnet.runs import load_run_config

PACKAGE = Path(__file__).resolve().parents[1] / "lungnet"


def test_models_list_shows_every_registered_name(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {(r["task"], r["name"]) for r in rows}
    for registry in (CLASSIFIERS, SEGMENTERS, ENCODERS):
        assert {(registry.task, n) for n in registry.names()} <= listed
    assert ("segmentation", "unet_plus_plus") in listed and ("encoder", "resnet34_d") in listed
    assert main(["models", "list", "--task", "encoder"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("encoder:") and "conv" in text and "unet" not in text


def test_models_describe(capsys):
    assert main(["models", "describe", "unet_plus_plus", "--input-size", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "segmentation" and info["outputs"] == {"probabilities": [32, 32, 1]}
    assert info["input_shape"] == [32, 32, 1] and info["parameters"] > 0
    assert main(["models", "describe", "efficientnet_b2", "--task", "encoder", "--input-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "pyramid P5: [2, 2, 1408]" in text and "explanation layer: top_activation" in text
    assert main(["models", "describe", "efficientnet_b2", "--input-size", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "classification" and info["also_in"] == ["encoder"]
    assert info["parameters"] == 7_769_978 and info["config"]["weights"] is None  # described offline


def test_models_describe_unknown_name_is_a_clear_error(capsys):
    assert main(["models", "describe", "vnet"]) == 2
    err = capsys.readouterr().err
    assert "no architecture 'vnet'" in err and "unet_plus_plus" in err


def _write_run(tmp_path: Path, task: str, models: list[dict]) -> Path:
    run = tmp_path / task
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "x", "task": task, "models": models}))
    return run


def test_run_folders_from_before_the_registry_still_load(tmp_path):
    """Before the registry every model entry held all keys of one flat config; its families keep theirs."""
    flat = {
        "weights": "imagenet",
        "dropout": 0.3,
        "filters": [4, 4, 8, 8],
        "dense_units": 8,
        "fine_tune_layers": 20,
    }
    run = _write_run(
        tmp_path,
        "classification",
        [
            {"name": "custom_cnn", "model": {"name": "custom_cnn", **flat}},
            {"name": "efficientnet_b2", "model": {"name": "efficientnet_b2", **flat}, "fine_tune": True},
        ],
    )
    cnn, b2 = (spec.model for spec in load_run_config(run).models)
    assert cnn.filters == (4, 4, 8, 8) and not hasattr(cnn, "fine_tune_layers")
    assert b2.fine_tune_layers == 20 and not hasattr(b2, "filters")
    seg = _write_run(
        tmp_path,
        "segmentation",
        [
            {
                "name": "a",
                "model": {"name": "attention_res_unet", "depth": 2, "filters": 4, "batch_norm": False},
            }
        ],
    )
    assert load_run_config(seg).models[0].model.depth == 2


def test_new_experiment_files_keep_strict_keys(tmp_path):
    run = _write_run(tmp_path, "classification", [{"name": "c", "model": {"name": "custom_cnn", "widht": 3}}])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['widht'\]"):
        load_run_config(run)


def _imports(path: Path) -> set[str]:
    """Every lungnet module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("lungnet.")}


def _unit(module: str) -> str:
    """lungnet.models.encoders.conv -> models; lungnet.experiment -> experiment."""
    return module.split(".")[1]


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        unit = parts[0]
        graph.setdefault(unit, set()).update(_unit(m) for m in _imports(path) if _unit(m) != unit)

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = sorted(unit for unit in graph if reaches(unit, unit, {unit}))
    assert not cycles, {unit: sorted(graph[unit]) for unit in cycles}
    assert "studies" not in graph["serving"] and "serving" not in graph["studies"]
    assert not any(dep in graph["models"] for dep in ("studies", "training", "runs", "serving"))


def test_the_registry_module_imports_no_family():
    imported = _imports(PACKAGE / "models" / "registry.py")
    assert not any(
        m.split(".")[2] in {"classifiers", "segmenters", "encoders"} for m in imported if m.count(".") >= 2
    )
