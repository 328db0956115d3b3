"""One registry per output contract: encoders (feature pyramids), classifiers and segmenters.

A family registers itself from its own module, with its own validated config dataclass::

    @CLASSIFIERS.register("custom_cnn", CustomCNNConfig, family="custom_cnn", description="...",
                          explanation_layer=lambda config: "block4_act")
    def build_custom_cnn(config, input_shape, num_classes) -> keras.Model: ...

Variants (EfficientNet b2 / b3, ResNet depths) are names of one family sharing a builder; the config's
``name`` says which. This module imports no family: importing `lungnet.models` registers them all.

Builders by registry:

- encoders: ``(config, x) -> Pyramid`` applied to a tensor ``x`` of the caller's graph (flat models);
- classifiers: ``(config, input_shape, num_classes) -> keras.Model`` with output ``probabilities``;
- segmenters: ``(config, input_shape) -> keras.Model`` with output ``probabilities`` ``[B, H, W, 1]`` and,
  when the config asks for deep supervision, side outputs ``aux_*`` (a dict of outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from lungnet.config import from_dict
from lungnet.errors import ConfigError


def _no_side_outputs(config) -> tuple[str, ...]:
    return ()


def _no_explanation_layer(config) -> None:
    return None


@dataclass(frozen=True)
class Entry:
    """What the tools need to know of one registered architecture, without building it."""

    name: str
    task: str
    family: str
    config_class: type
    builder: Callable
    description: str
    # Grad-CAM's feature map (a layer name of the built model), or None where there is none to explain.
    explanation_layer: Callable[[Any], str | None] = _no_explanation_layer
    # Names of side outputs (``aux_*``) the loss reads; evaluation and serving read ``probabilities`` only.
    side_outputs: Callable[[Any], tuple[str, ...]] = _no_side_outputs
    extra_inputs: tuple[str, ...] = ()  # named inputs beside ``image`` (a second stream)
    # Encoders: the pyramid's keys, shallowest first (``P{k}`` at stride 2**k).
    pyramid_keys: Callable[[Any], tuple[str, ...]] = _no_side_outputs
    input_scaling: str = ""  # what the ``image`` input expects, in words


class Registry:
    """Architectures of one output contract, by name."""

    def __init__(self, task: str):
        self.task = task
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        names: str | tuple[str, ...],
        config_class: type,
        *,
        family: str,
        description: str,
        explanation_layer: Callable[[Any], str | None] = _no_explanation_layer,
        side_outputs: Callable[[Any], tuple[str, ...]] = _no_side_outputs,
        extra_inputs: tuple[str, ...] = (),
        input_scaling: str = "",
        pyramid_keys: Callable[[Any], tuple[str, ...]] = _no_side_outputs,
    ) -> Callable[[Callable], Callable]:
        """A decorator registering a builder under one name or several (the variants of one family)."""
        names = (names,) if isinstance(names, str) else tuple(names)

        def decorator(builder: Callable) -> Callable:
            for name in names:
                if name in self._entries:
                    raise ConfigError(f"{self.task} registry: {name!r} is registered twice")
                self._entries[name] = Entry(
                    name=name,
                    task=self.task,
                    family=family,
                    config_class=config_class,
                    builder=builder,
                    description=description,
                    explanation_layer=explanation_layer,
                    side_outputs=side_outputs,
                    extra_inputs=extra_inputs,
                    input_scaling=input_scaling,
                    pyramid_keys=pyramid_keys,
                )
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, where: str = "model.name") -> Entry:
        if name not in self._entries:
            raise ConfigError(f"{where}: {name!r} is not a {self.task} model; known: {self.names()}")
        return self._entries[name]

    def parse(self, value, where: str = "model"):
        """A family config from a mapping with a ``name`` (or a config object, checked), errors naming keys."""
        if isinstance(value, FamilyConfig):
            entry = self.get(value.name, f"{where}.name")
            if not isinstance(value, entry.config_class):
                raise ConfigError(
                    f"{where}: a {type(value).__name__} cannot configure {value.name!r} "
                    f"(expects {entry.config_class.__name__})"
                )
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise ConfigError(
                f"{where}: expected a mapping with a 'name', one of {self.names()}; got {value!r}"
            )
        entry = self.get(value["name"], f"{where}.name")
        return from_dict(entry.config_class, value, where)

    def entry_for(self, config) -> Entry:
        return self.get(self.parse(config).name)

    def build(self, config, *args, **kwargs):
        """Build the architecture `config` names (validated first)."""
        config = self.parse(config)
        return self._entries[config.name].builder(config, *args, **kwargs)


ENCODERS = Registry("encoder")
CLASSIFIERS = Registry("classification")
SEGMENTERS = Registry("segmentation")
REGISTRIES = {registry.task: registry for registry in (CLASSIFIERS, SEGMENTERS, ENCODERS)}


@dataclass(frozen=True)
class FamilyConfig:
    """Base of every family's config: ``name`` picks the registered architecture (and so the family).

    In an experiment file a field typed with one of the bases below accepts a mapping; the registry chooses
    the family's own dataclass by the mapping's ``name`` and validates every other key against it.
    """

    name: str
    registry: ClassVar[Registry]

    @classmethod
    def from_config_dict(cls, value, where: str):
        return cls.registry.parse(value, where)


@dataclass(frozen=True)
class EncoderConfig(FamilyConfig):
    registry: ClassVar[Registry] = ENCODERS


@dataclass(frozen=True)
class ClassifierConfig(FamilyConfig):
    registry: ClassVar[Registry] = CLASSIFIERS


@dataclass(frozen=True)
class SegmenterConfig(FamilyConfig):
    registry: ClassVar[Registry] = SEGMENTERS
