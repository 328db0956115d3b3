"""Weights files, ImageNet download errors, and where a model's encoder weights came from.

A builder records each model's `EncoderRecord` (the encoder's first and last layers, and the provenance of
its weights) for the models of this process; the transfer / fine-tune schedule and the reports read it.
"""

from __future__ import annotations

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

    ``provenance`` is what a report says of the weights: ``"ImageNet"``, ``"file <path>"`` or
    ``"random initialisation"``; ``pretrained`` is whether transfer learning has anything to transfer.
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
    return "random initialisation" if weights is None else f"file {weights}"


def validate_weights_option(weights, field: str = "model.weights") -> None:
    """``"imagenet"``, ``None`` or a path ending in a weights suffix; else a `ConfigError` naming it."""
    if weights is None:
        return
    if not isinstance(weights, str) or (
        weights != "imagenet" and not weights.lower().endswith(WEIGHTS_SUFFIXES)
    ):
        raise ConfigError(
            f"{field}: {weights!r} must be 'imagenet', null, or a path to a weights file ending in "
            f"{list(WEIGHTS_SUFFIXES)}"
        )


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
