"""Weights files, ImageNet download errors, and where a model's encoder weights came from.

A builder records each model's `EncoderRecord` (the encoder's first and last layers, and the provenance of
its weights) for the models of this process; the transfer / fine-tune schedule and the reports read it.
"""

from __future__ import annotations

import json
import re
import urllib.error
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras

from lungnet.errors import ConfigError, LungnetError

WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")


class WeightsError(LungnetError):
    """A weights file that does not exist, cannot be read, or belongs to another architecture."""


class WeightsUnavailableError(WeightsError):
    """Pretrained weights that could not be downloaded (no network)."""


@dataclass(frozen=True)
class EncoderRecord:
    """A built model's pretrained-encoder facts: its last layer (the schedule's boundary) and its weights.

    ``provenance`` is what a report says of the weights: ``"ImageNet"``, ``"self-supervised (Models Genesis)
    on <data>, N steps"`` (a lungnet encoder file), ``"file <path>"`` or ``"random initialisation"``; ``pretrained`` is whether transfer learning has anything to transfer.
    """

    end_layer: str
    pretrained: bool
    provenance: str


# A weak map: a record never keeps a model alive. Models loaded from a file have none.
_RECORDS: weakref.WeakKeyDictionary[keras.Model, EncoderRecord] = weakref.WeakKeyDictionary()


def record_encoder(model: keras.Model, record: EncoderRecord) -> None:
    _RECORDS[model] = record


def encoder_record(model: keras.Model) -> EncoderRecord | None:
    """The model's `EncoderRecord`, or None (no pretrained-encoder family, or loaded from a file)."""
    return _RECORDS.get(model)


def provenance(weights: str | None) -> str:
    if weights == "imagenet":
        return "ImageNet"
    if weights is None:
        return "random initialisation"
    path = Path(weights).expanduser()
    if is_encoder_weights_file(path):
        return encoder_weights_info(path)["provenance"]
    return f"file {weights}"


def validate_weights_option(weights, field: str = "model.weights", genesis: bool = False) -> None:
    """``"imagenet"``, ``None``, a path ending in a weights suffix, or (encoders that can be pretrained,
    `genesis`) ``"genesis"``; else a `ConfigError` naming it."""
    if weights is None:
        return
    named = ("imagenet", GENESIS) if genesis else ("imagenet",)
    if not isinstance(weights, str) or (
        weights not in named and not weights.lower().endswith(WEIGHTS_SUFFIXES)
    ):
        choices = " or ".join(repr(n) for n in named)
        raise ConfigError(
            f"{field}: {weights!r} must be {choices}, null, or a path to a weights file ending in "
            f"{list(WEIGHTS_SUFFIXES)}"
        )


def unresolved_genesis(name: str) -> ConfigError:
    """``weights: genesis`` reaching a builder: only a study (which knows its data) can resolve it."""
    return ConfigError(
        f"model.weights: 'genesis' for {name} names a Models Genesis base built from a study's training "
        "patients; a study resolves it when it trains. To build this model alone, run `lungnet pretrain "
        f"--backbone {name}` and give the path it prints as model.weights"
    )


# --- lungnet's encoder weights files ---------------------------------------------------------------------
# The encoder's weighted layers in graph order (nested models flattened), one HDF5 group each with the
# layer's name and class, so an encoder pretrained inside one graph (the restoration model) loads into the
# same encoder built inside another (a classifier, a U-Net), whatever wraps it. Names must match, except
# Keras' automatic suffixes (``normalization_2`` is ``normalization_1`` of another process's graph); root
# attributes say which encoder and input the file belongs to and where it came from.

GENESIS = "genesis"
ENCODER_FILE_FORMAT = "lungnet-encoder-weights"
ENCODER_FILE_VERSION = 1
_AUTO_SUFFIX = re.compile(r"_\d+$")


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer in graph order, nested models flattened (their layers, not the wrapper)."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        found.extend(flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return found


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in flat_layers(model) if layer.weights]


def save_encoder_weights(encoder: keras.Model, path: str | Path, info: dict) -> Path:
    """Write `encoder`'s weights layer by layer with `info` (``backbone``, ``input_shape``, ``provenance``,
    anything else JSON-able) as the file's attributes; atomic (a temporary file renamed)."""
    from lungnet.fileio import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".tmp.h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = ENCODER_FILE_FORMAT
        f.attrs["version"] = ENCODER_FILE_VERSION
        f.attrs["info"] = json.dumps(info, sort_keys=True)
        for index, layer in enumerate(_weighted_layers(encoder)):
            group = f.create_group(f"{index:05d}")
            group.attrs["name"], group.attrs["class"] = layer.name, type(layer).__name__
            for i, weight in enumerate(layer.get_weights()):
                group.create_dataset(str(i), data=weight)
    return path


def is_encoder_weights_file(path: Path) -> bool:
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return f.attrs.get("format") == ENCODER_FILE_FORMAT


def encoder_weights_info(path: str | Path) -> dict:
    """The attributes `save_encoder_weights` wrote (backbone, input_shape, provenance, ...)."""
    with h5py.File(Path(path), "r") as f:
        return json.loads(f.attrs["info"])


def check_encoder_file(path: str | Path, backbone: str, input_shape: tuple[int, ...]) -> dict:
    """The file's info if it is a lungnet encoder file of `backbone` at `input_shape`; else a WeightsError
    naming the file, what it holds and what was asked for."""
    path = weights_path(path, f"a {backbone} encoder")
    if not is_encoder_weights_file(path):
        raise WeightsError(f"model.weights: {path} is not a lungnet encoder weights file")
    info = encoder_weights_info(path)
    held = (info.get("backbone"), tuple(info.get("input_shape") or ()))
    if held != (backbone, tuple(input_shape)):
        raise WeightsError(
            f"model.weights: {path} holds the encoder of {held[0]} for input {list(held[1])}, but the model's "
            f"is {backbone} with input {list(input_shape)}; pretrain a base for this backbone and input "
            f"(`lungnet pretrain --backbone {backbone}` with the experiment's preprocessing)"
        )
    return info


def check_encoder_weights_option(weights: str | None, backbone: str, input_shape: tuple[int, ...]) -> None:
    """Before an encoder is built: ``genesis`` must have been resolved to a file, and a lungnet encoder
    file must be of this backbone and input (other weights files are checked as they load)."""
    if weights == GENESIS:
        raise unresolved_genesis(backbone)
    if weights not in (None, "imagenet") and is_encoder_weights_file(Path(weights).expanduser()):
        check_encoder_file(weights, backbone, input_shape)


def _same_layer(stored_name: str, name: str) -> bool:
    return stored_name == name or _AUTO_SUFFIX.sub("", stored_name) == _AUTO_SUFFIX.sub("", name)


def load_encoder_weights(model: keras.Model, path: str | Path, what: str) -> None:
    """Set `model`'s weighted layers from a lungnet encoder file, in order: the same number of layers, each
    of the same name (up to Keras' automatic suffix), class and weight shapes; else a WeightsError."""
    path = Path(path)
    layers = _weighted_layers(model)
    with h5py.File(path, "r") as f:
        groups = [f[key] for key in sorted(f.keys())]
        if len(groups) != len(layers):
            raise WeightsError(
                f"model.weights: {path} does not hold weights of {what}: it has {len(groups)} weighted "
                f"layers, the model {len(layers)}"
            )
        values = []
        for group, layer in zip(groups, layers, strict=True):
            stored = [group[str(i)][()] for i in range(len(group))]
            shapes = [tuple(w.shape) for w in layer.weights]
            name, cls = str(group.attrs["name"]), str(group.attrs["class"])
            if (
                not _same_layer(name, layer.name)
                or cls != type(layer).__name__
                or [v.shape for v in stored] != shapes
            ):
                raise WeightsError(
                    f"model.weights: {path} does not hold weights of {what}: its layer {name!r} ({cls}, shapes "
                    f"{[list(v.shape) for v in stored]}) meets {layer.name!r} ({type(layer).__name__}, shapes "
                    f"{[list(x) for x in shapes]})"
                )
            values.append(stored)
    for layer, stored in zip(layers, values, strict=True):  # nothing is set unless every layer fits
        layer.set_weights(stored)


def download_failed(exc: BaseException) -> bool:
    """Keras's get_file raises a plain Exception chained (implicitly or with `from`) to a URLError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib.error.URLError | TimeoutError | ConnectionError):
            return True
        current = current.__cause__ or current.__context__
    return "URL fetch failure" in str(exc)


def weights_path(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is an existing weights file, else a `WeightsError` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"model.weights: {path} does not exist (expected weights of {what})")
    if not str(path).lower().endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(
            f"model.weights: {path} is not a weights file; expected one of {list(WEIGHTS_SUFFIXES)}"
        )
    if not h5py.is_hdf5(path):
        raise WeightsError(f"model.weights: {path} is not an HDF5 file (expected weights of {what})")
    return path


def load_weights_file(model: keras.Model, path: str | Path, what: str) -> None:
    """``model.load_weights(path)`` with errors a user can act on (`WeightsError` naming the file).

    Reads Keras 3 ``.weights.h5`` and legacy Keras 2 ``.h5`` files (the format of the keras-applications
    downloads). `what` names the architecture in messages, e.g. "an EfficientNetB2 base (include_top=False)".
    """
    path = weights_path(path, what)
    if is_encoder_weights_file(path):
        load_encoder_weights(model, path, what)
        return
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        # wrong architecture (layer count or shape mismatch), not an HDF5 file, or a truncated file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"model.weights: {path} does not hold weights of {what}: {detail}") from exc
    skipped = [w for w in caught if "could not be loaded" in str(w.message) or "Skipping" in str(w.message)]
    if skipped:
        raise WeightsError(
            f"model.weights: {path} does not hold weights of {what}: only part of the model could be loaded "
            f"({len(skipped)} warnings, e.g. {str(skipped[0].message).splitlines()[0]})"
        )
    for w in caught:  # anything else Keras had to say
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
