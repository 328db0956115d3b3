"""Training schedules over the one fit path (`lungnet.training.fit.train_phase`).

Transfer learning -> fine-tuning (the Keras transfer-learning guide): `set_transfer_learning` freezes a
pretrained encoder and trains the head; `set_fine_tuning` then unfreezes the encoder's top layers, batch
norms excepted, for training at a lower learning rate; `transfer_then_fine_tune` runs both phases. The
encoder's layers are found from the `EncoderRecord` its builder left (`lungnet.models.weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import keras
from keras import layers

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import BACKBONE_INPUT_NAME, layers_up_to
from lungnet.models.weights import encoder_record

# (phase name, epochs, learning rate) -> the phase summary of `train_phase`
PhaseFit = Callable[[str, int, float], dict]


def _flatten(layer_list) -> list[keras.layers.Layer]:
    """Nested models (keras-hub backbones) expanded into their own layers, in their graph order."""
    out = []
    for layer in layer_list:
        if isinstance(layer, keras.Model):
            out.extend(_flatten(inner for inner in layer.layers if not isinstance(inner, layers.InputLayer)))
        else:
            out.append(layer)
    return out


def encoder_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The pretrained encoder's layers in graph order, ``backbone_input`` to its deepest level; else []."""
    record = encoder_record(model)
    if record is None:
        return []
    chain = layers_up_to(model, model.get_layer(record.end_layer).output)
    names = [layer.name for layer in chain]
    return _flatten(chain[names.index(BACKBONE_INPUT_NAME) :])


def set_transfer_learning(model: keras.Model) -> bool:
    """Transfer-learning phase: freeze a pretrained encoder, keep the head trainable.

    Returns True if an encoder was frozen. A model without pretrained weights (the custom CNN, or an
    encoder with ``weights: null``, whose random weights must be trained) is left fully trainable and
    False comes back. Compile the model after calling this.
    """
    for layer in model.layers:
        layer.trainable = True
    record = encoder_record(model)
    if record is None or not record.pretrained:
        return False
    for layer in encoder_layers(model):
        layer.trainable = False
    return True


def set_fine_tuning(model: keras.Model, n_layers: int) -> int:
    """Fine-tuning phase: the top `n_layers` layers of the encoder become trainable, except batch norms.

    As in the Keras fine-tuning guide, `n_layers` counts the encoder's last layers in graph order (batch norms
    and weightless layers included); of those, every layer but the ``BatchNormalization`` ones is unfrozen.
    Batch norms stay frozen, which in Keras 3 also keeps them in inference mode, so their ImageNet statistics
    are not overwritten by small batches. Everything below is frozen; the head is trainable. ``n_layers`` at
    least the encoder's size unfreezes the whole encoder (batch norms excepted).

    Returns the number of encoder layers made trainable. Compile the model (lower learning rate) afterwards.
    """
    if not is_int(n_layers) or n_layers < 0:
        raise ConfigError(f"model.fine_tune_layers: {n_layers!r} must be an integer >= 0")
    encoder = encoder_layers(model)
    if not encoder:
        raise ConfigError(
            f"model {model.name!r} has no pretrained encoder to fine-tune; fine-tuning applies to families "
            "built on one, such as efficientnet_b2"
        )
    for layer in model.layers:
        layer.trainable = True
    for layer in encoder:
        layer.trainable = False
    unfrozen = 0
    for layer in encoder[len(encoder) - min(n_layers, len(encoder)) :]:
        if not isinstance(layer, layers.BatchNormalization):
            layer.trainable = True
            unfrozen += 1
    return unfrozen


def transfer_then_fine_tune(
    model: keras.Model,
    name: str,
    fit: PhaseFit,
    *,
    epochs: int,
    learning_rate: float,
    fine_tune: bool = False,
    fine_tune_layers: int = 20,
    fine_tune_epochs: int = 0,
    fine_tune_learning_rate: float = 1e-5,
) -> Iterator[tuple[str, dict]]:
    """Yield (model name, phase summary) per phase, the model trained in place between yields.

    A pretrained encoder is frozen for the first phase (``{name}_transfer``: the head only); then, when asked,
    its top layers are fine-tuned from the transferred weights (``{name}_finetuned``). A model without one
    trains end to end as ``{name}`` and is not fine-tuned.
    """
    pretrained = set_transfer_learning(model)
    summary = fit(name, epochs, learning_rate)
    yield (f"{name}_transfer" if pretrained else name), summary
    if fine_tune and pretrained:
        unfrozen = set_fine_tuning(model, fine_tune_layers)
        summary = fit(f"{name}_finetuned", fine_tune_epochs, fine_tune_learning_rate)
        yield f"{name}_finetuned", {**summary, "layers_unfrozen": unfrozen}
