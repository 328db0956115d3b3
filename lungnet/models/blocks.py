"""Building blocks shared by the model families, and helpers that read a built model's graph.

Conventions every classifier built here follows (Grad-CAM, retrieval and export rely on them):

- the input layer is named ``image`` and takes ``[B, H, W, C]`` floats in ``[0, 1]``;
- the penultimate feature vector (used for image retrieval) is the output of the layer named ``embedding``;
- the output layer is named ``probabilities``: one sigmoid unit ``[B, 1]`` for two classes (the probability
  of class 1, malignant), a softmax ``[B, K]`` for ``K > 2``; it computes in float32 even under mixed precision;
- the graph is flat: a pretrained backbone's layers sit directly in the model (no nested ``keras.Model``),
  so every feature map is reachable from the model input; the backbone starts at a layer named
  ``backbone_input`` and ends at `last_conv_layer_name`; layers after it are the head.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path

import h5py
import keras
from keras import layers

from lungnet.errors import ConfigError, LungnetError

INPUT_NAME = "image"
EMBEDDING_NAME = "embedding"
OUTPUT_NAME = "probabilities"
BACKBONE_INPUT_NAME = "backbone_input"
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")

# Layers whose 4-D output counts as a convolutional feature map for `last_conv_layer_name`.
_FEATURE_MAP_LAYERS = (
    layers.Conv2D,
    layers.DepthwiseConv2D,
    layers.SeparableConv2D,
    layers.Activation,
    layers.ReLU,
    layers.LeakyReLU,
    layers.PReLU,
    layers.ELU,
)
_POOLING_LAYERS = (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D, layers.Flatten)

# Whether a model's backbone holds pretrained weights, recorded by the builders for the models of this
# process (a weak map: it never keeps a model alive). A model loaded from a file has no entry.
_PRETRAINED: weakref.WeakKeyDictionary[keras.Model, bool] = weakref.WeakKeyDictionary()


class WeightsError(LungnetError):
    """A weights file that does not exist, cannot be read, or belongs to another architecture."""


class WeightsUnavailableError(WeightsError):
    """Pretrained weights that could not be downloaded (no network)."""


def conv_block(x, filters: int, name: str, kernel_size: int = 3, activation: str = "relu", pool: bool = True):
    """Conv2D (same padding, no bias: the batch norm's offset replaces it) -> BatchNorm -> activation -> 2x2 max-pool.

    Layers are named ``{name}_conv``, ``{name}_bn``, ``{name}_act`` and ``{name}_pool``.
    """
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9, not Keras' 0.99: the inference-time moving statistics must settle within a few hundred
    # steps (CPU profiles); at 0.99 they still carried ~13 % of their initial values after 200 steps and
    # pushed every validation probability below 0.5 (measured on the phantom).
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    x = layers.Activation(activation, name=f"{name}_act")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return x


def output_units(num_classes: int) -> tuple[int, str]:
    """(units, activation) of the output layer: one sigmoid unit for 2 classes, else a K-way softmax."""
    return (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")


def classification_head(features, num_classes: int, dropout: float):
    """Dropout (``head_dropout``, if > 0) then the output layer ``probabilities`` on an embedding tensor."""
    x = layers.Dropout(dropout, name="head_dropout")(features) if dropout > 0 else features
    units, activation = output_units(num_classes)
    # float32 output: keeps the probabilities (and the loss) exact under a mixed-precision policy
    return layers.Dense(units, activation=activation, dtype="float32", name=OUTPUT_NAME)(x)


def _layers_up_to(model: keras.Model, tensor) -> list[keras.layers.Layer]:
    """The layers (no input layers) that `tensor` depends on, in graph order, found through Keras's own graph."""
    sub = keras.Model(model.inputs, tensor)
    return [layer for layer in sub.layers if not isinstance(layer, layers.InputLayer)]


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last convolutional feature map (a 4-D conv or activation output) before the pooling.

    The search runs backwards through the layers that feed the ``embedding`` layer (or, without one, the
    last global-pooling/flatten layer), so side branches (squeeze-and-excitation) are passed over.
    EfficientNetB2: ``top_activation``; custom CNN: ``block4_act``.
    """
    if _has_layer(model, EMBEDDING_NAME):
        end = model.get_layer(EMBEDDING_NAME)
    else:
        pools = [layer for layer in model.layers if isinstance(layer, _POOLING_LAYERS)]
        if not pools:
            raise ConfigError(
                f"model {model.name!r} has neither an {EMBEDDING_NAME!r} layer nor a pooling layer, so no 4-D "
                "feature map before one; Grad-CAM needs a flat functional model with a spatial feature map"
            )
        end = pools[-1]
    # The embedding layer may itself be the pooling (EfficientNet) or a Dense after the pooling (custom CNN).
    for layer in reversed(_layers_up_to(model, end.input)):
        if isinstance(layer, _FEATURE_MAP_LAYERS) and len(layer.output.shape) == 4:
            return layer.name
    raise ConfigError(
        f"model {model.name!r} has no convolution or activation with a 4-D output before {end.name!r}; "
        "Grad-CAM needs a flat functional model"
    )


def has_backbone(model: keras.Model) -> bool:
    """True if the model was built with a backbone (it has a ``backbone_input`` layer)."""
    return _has_layer(model, BACKBONE_INPUT_NAME)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in graph order: from ``backbone_input`` to the last conv feature map.

    Empty for a model without a backbone (the custom CNN). Everything else in the model is the head.
    """
    if not has_backbone(model):
        return []
    chain = _layers_up_to(model, model.get_layer(last_conv_layer_name(model)).output)
    names = [layer.name for layer in chain]
    return chain[names.index(BACKBONE_INPUT_NAME) :]


def mark_pretrained(model: keras.Model, pretrained: bool) -> None:
    """Record whether `model`'s backbone starts from pretrained weights (builders call this)."""
    _PRETRAINED[model] = pretrained


def has_pretrained_backbone(model: keras.Model) -> bool:
    """True if the model has a backbone with pretrained weights.

    For a model this process built, as recorded by its builder (``weights: null`` gives False). For a model
    loaded from a file, any backbone counts as pretrained (its weights were trained before it was saved).
    """
    if not has_backbone(model):
        return False
    return _PRETRAINED.get(model, True)


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
