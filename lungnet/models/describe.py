"""What lungnet has, without reading code: `list_models` and `describe` (``lungnet models list|describe``)."""

from __future__ import annotations

import dataclasses

import keras

from lungnet.errors import ConfigError
from lungnet.models.contract import layer_name_of, pyramid_channels
from lungnet.models.registry import REGISTRIES, Registry

DEFAULT_CHANNELS = {"classification": 3, "segmentation": 1, "encoder": 3}
BUILD_ARGS = {"classification": (2,)}  # after the input shape: a binary classifier


def list_models(task: str | None = None) -> list[dict]:
    """One row per registered architecture: name, task, family, description."""
    rows = []
    for registry in _registries(task):
        for name in registry.names():
            entry = registry.get(name)
            rows.append(
                {
                    "name": name,
                    "task": registry.task,
                    "family": entry.family,
                    "description": entry.description,
                }
            )
    return rows


def _registries(task: str | None) -> list[Registry]:
    if task is None:
        return list(REGISTRIES.values())
    if task not in REGISTRIES:
        raise ConfigError(f"--task: {task!r} is not one of {sorted(REGISTRIES)}")
    return [REGISTRIES[task]]


def describe(name: str, input_size: int = 128, task: str | None = None, channels: int | None = None) -> dict:
    """Build `name` with its default config (random weights) at `input_size` and say what it is.

    Parameters, input shape, outputs (or pyramid levels for an encoder), explanation layer, side outputs.
    A name registered in several registries (``efficientnet_b2`` is an encoder and a classifier) is
    described in the first of classification, segmentation, encoder, unless `task` says which.
    """
    matches = [r for r in _registries(task) if name in r]
    if not matches:
        known = sorted({n for r in REGISTRIES.values() for n in r.names()})
        raise ConfigError(f"no architecture {name!r}; known: {known}")
    registry = matches[0]
    entry = registry.get(name)
    config = registry.parse({"name": name})
    if getattr(config, "weights", None) is not None:  # describe offline: the same graph, random weights
        config = dataclasses.replace(config, weights=None)
    shape = (input_size, input_size, channels or DEFAULT_CHANNELS[registry.task])
    if registry.task == "encoder":
        inputs = keras.Input(shape=shape)
        pyramid = registry.build(config, inputs)
        model = keras.Model(inputs, pyramid)
        outputs = {k: [int(d) for d in t.shape[1:]] for k, t in pyramid.items()}
        extra = {
            "pyramid_channels": pyramid_channels(pyramid),
            "pyramid_layers": {k: layer_name_of(t) for k, t in pyramid.items()},
        }
    else:
        model = registry.build(config, shape, *BUILD_ARGS.get(registry.task, ()))
        output = model.output if isinstance(model.output, dict) else {"probabilities": model.output}
        outputs = {k: [int(d) for d in t.shape[1:]] for k, t in output.items()}
        extra = {}
    return {
        "name": name,
        "task": registry.task,
        "also_in": [r.task for r in REGISTRIES.values() if name in r and r is not registry],
        "family": entry.family,
        "description": entry.description,
        "config": dataclasses.asdict(config),
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(w.numpy().size) for w in model.trainable_weights)),
        "input_shape": list(shape),
        "input_scaling": entry.input_scaling,
        "outputs": outputs,
        "explanation_layer": entry.explanation_layer(config),
        "side_outputs": list(entry.side_outputs(config)),
        "extra_inputs": list(entry.extra_inputs),
        **extra,
    }


def format_description(info: dict) -> str:
    lines = [f"{info['name']} ({info['task']}, family {info['family']}): {info['description']}"]
    if info["also_in"]:
        lines.append(f"  also registered as: {', '.join(info['also_in'])} (--task to choose)")
    lines.append(f"  parameters: {info['parameters']:,} ({info['trainable_parameters']:,} trainable)")
    lines.append(f"  input: image {info['input_shape']} ({info['input_scaling']})")
    label = "pyramid" if info["task"] == "encoder" else "outputs"
    for key, shape in info["outputs"].items():
        lines.append(f"  {label} {key}: {shape}")
    lines.append(f"  explanation layer: {info['explanation_layer'] or 'none'}")
    if info["side_outputs"]:
        lines.append(f"  side outputs (loss only): {', '.join(info['side_outputs'])}")
    if info["extra_inputs"]:
        lines.append(f"  extra inputs: {', '.join(info['extra_inputs'])}")
    lines.append(f"  default config: {info['config']}")
    return "\n".join(lines)
