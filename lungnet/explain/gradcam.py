"""Grad-CAM (Selvaraju et al., ICCV 2017) and Grad-CAM++ (Chattopadhay et al., WACV 2018) for flat Keras models.

Both methods look at one 4-D feature map ``A`` of shape ``[B, h, w, c]`` (by default the last spatial one
before global pooling, see `find_last_conv_layer`) and a scalar class score ``Y`` per image:

- Grad-CAM: ``w_k = mean_ij dY/dA_ijk``; ``CAM = ReLU(sum_k w_k A_k)``.
- Grad-CAM++: with the exponential score ``S = exp(Y)`` the higher derivatives have a closed form
  (``d2S/dA2 = S g**2``, ``d3S/dA3 = S g**3`` with ``g = dY/dA``, exact for piecewise-linear networks), so
  ``alpha_ijk = g**2 / (2 g**2 + sum_ab A_abk g**3)`` and ``w_k = sum_ij alpha_ijk ReLU(S g_ijk)``;
  ``CAM = ReLU(sum_k w_k A_k)``. ``S`` is a positive per-image constant that cancels in the normalisation
  below, so it is left out (``exp`` of a large logit would overflow). By default these are the paper's
  equations 19-20, as in pytorch-grad-cam. The authors' reference code (and tf-keras-vis) also divide each
  channel's alphas by their spatial sum, which can change the map a lot: ``renormalize_alphas=True`` does
  that (checked against tf-keras-vis 0.8.7 to 1e-6 on a random CNN; plain Grad-CAM matches it too).

Each map is upsampled bilinearly to the input size and divided by its maximum, so it lies in ``[0, 1]`` with
``1`` at the strongest evidence; a map with no positive evidence is all zeros.

**Class score.** The score is the pre-activation value (logit) of the output layer when it can be reached,
as the papers prescribe, otherwise the output probability:

- softmax ``[B, K]``: ``Y_c = z_c``, the logit of class ``c``;
- one sigmoid unit ``[B, 1]``: class 1 uses ``Y = z`` (the logit of malignancy) and class 0 uses ``Y = -z``.
  ``-z`` is the logit of class 0 against class 1 in the equivalent two-class softmax, so the class-0 map shows
  the evidence *against* malignancy;
- the logit is reachable when the output layer (the layer named ``probabilities``, else the model's output
  layer) is an ``Activation`` or ``Softmax`` layer, or a layer with an ``activation`` argument (``Dense``, ``Conv2D``, ...):
  the same layer is rebuilt with a linear activation and the trained weights. If the output activation is
  already linear the output itself is the score. Otherwise the probability is used (``p_c``; ``p`` and
  ``-p`` for a single sigmoid unit), which `score_kind` reports.

``class_index=None`` explains the predicted class (``argmax``; ``p >= 0.5`` for a single sigmoid unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from lungnet.errors import ConfigError, DataError
from lungnet.models.contract import EMBEDDING_NAME, OUTPUT_NAME, layers_up_to

_GLOBAL_POOLING = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)
# Layers whose 4-D output counts as a convolutional feature map for `find_last_conv_layer`.
_FEATURE_MAP_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
)
_OUTPUT_LAYER_NAME = OUTPUT_NAME

Method = Literal["gradcam", "gradcam++"]


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called more than once
        return None


def feature_map_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D ``[B, h, w, c]`` output, in graph order (Grad-CAM candidates)."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and _output_rank(layer) == 4
    ]


def find_last_conv_layer(model: keras.Model) -> str:
    """Name of the last convolutional feature map (a 4-D conv or activation output) before the pooling.

    The default for models that do not declare their explanation layer (lungnet's registered models do:
    `lungnet.models.registry.Entry.explanation_layer`). The search runs backwards through the layers that
    feed the ``embedding`` layer (or, without one, the last global-pooling/flatten layer), so side branches
    (squeeze-and-excitation) are passed over. It needs a convolutional model: a transformer declares its map.
    """
    names = {layer.name for layer in model.layers}
    if EMBEDDING_NAME in names:
        end = model.get_layer(EMBEDDING_NAME)
    else:
        pools = [layer for layer in model.layers if isinstance(layer, _GLOBAL_POOLING)]
        if not pools:
            raise ConfigError(
                f"model {model.name!r} has neither an {EMBEDDING_NAME!r} layer nor a pooling layer, so no 4-D "
                "feature map before one; pass layer_name= (Grad-CAM needs a spatial feature map)"
            )
        end = pools[-1]
    # The embedding layer may itself be the pooling (EfficientNet) or a Dense after the pooling (custom CNN).
    for layer in reversed(layers_up_to(model, end.input)):
        if isinstance(layer, _FEATURE_MAP_LAYERS) and len(layer.output.shape) == 4:
            return layer.name
    raise ConfigError(
        f"model {model.name!r} has no convolution or activation with a 4-D output before {end.name!r}; "
        "pass layer_name= (Grad-CAM needs a flat functional model)"
    )


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    try:
        return model.get_layer(_OUTPUT_LAYER_NAME)
    except ValueError:
        pass
    if len(model.outputs) != 1:
        raise ConfigError(
            f"model {model.name!r} has {len(model.outputs)} outputs and none is a layer named "
            f"{_OUTPUT_LAYER_NAME!r}; name the classification output {_OUTPUT_LAYER_NAME!r}"
        )
    return model.outputs[0]._keras_history.operation


def _activation_name(layer: keras.layers.Layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", None) or type(activation).__name__
    return name.lower()


def _linear_copy(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """``layer`` rebuilt with a linear activation and its trained weights; None if that is not possible."""
    try:
        config = dict(layer.get_config(), activation="linear", name=f"{layer.name}_logits")
        head = type(layer).from_config(config)
        head.build(layer.input.shape)
        head.set_weights(layer.get_weights())
    except Exception:  # custom, quantised or LoRA layers: fall back to the probability
        return None
    return head


class _ScoreModel:
    """Wraps a model so that one call gives the feature map, the class scores and the probabilities."""

    def __init__(self, model: keras.Model, layer_name: str | None):
        if len(model.inputs) != 1:
            raise ConfigError(f"model {model.name!r} has {len(model.inputs)} inputs; Grad-CAM needs one")
        self.layer_name = layer_name or find_last_conv_layer(model)
        try:
            feature_layer = model.get_layer(self.layer_name)
        except ValueError:
            raise ConfigError(
                f"layer_name={self.layer_name!r} is not a layer of model {model.name!r}; "
                f"layers with 4-D outputs: {feature_map_layers(model)}"
            ) from None
        if _output_rank(feature_layer) != 4:
            raise ConfigError(
                f"layer_name={self.layer_name!r}: output shape {feature_layer.output.shape} is not 4-D "
                f"[B, h, w, c]; layers with 4-D outputs: {feature_map_layers(model)}"
            )
        out_layer = _output_layer(model)
        out_tensor = out_layer.output
        activation = _activation_name(out_layer)
        self._linear_head = None
        if isinstance(out_layer, keras.layers.Softmax) or (
            activation in ("sigmoid", "softmax") and isinstance(out_layer, keras.layers.Activation)
        ):
            score_tensor, self.score_kind = out_layer.input, "logit"
        elif activation in ("sigmoid", "softmax") and "activation" in out_layer.get_config():
            self._linear_head = _linear_copy(out_layer)
            if self._linear_head is not None:
                score_tensor, self.score_kind = out_layer.input, "logit"
            else:
                score_tensor, self.score_kind = out_tensor, "probability"
        elif activation == "linear":
            score_tensor, self.score_kind = out_tensor, "logit"
        else:
            score_tensor, self.score_kind = out_tensor, "probability"
        if len(out_tensor.shape) != 2:
            raise ConfigError(f"output {out_layer.name!r} has shape {out_tensor.shape}; expected [B, K]")
        self.n_outputs = int(out_tensor.shape[-1])
        self.single_unit = self.n_outputs == 1
        self.input_shape = tuple(model.inputs[0].shape[1:])
        try:
            self._model = keras.Model(model.inputs, [feature_layer.output, score_tensor, out_tensor])
        except Exception as err:  # Keras raises ValueError/KeyError variants for disconnected graphs
            raise ConfigError(
                f"layer_name={self.layer_name!r} is not reachable from the input of model {model.name!r} "
                f"(nested sub-model?); Grad-CAM needs a flat functional model: {err}"
            ) from err

    def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        fmap, score_in, probs = self._model(images, training=False)
        scores = self._linear_head(score_in) if self._linear_head is not None else score_in
        return fmap, tf.cast(scores, tf.float32), tf.cast(probs, tf.float32)

    def predicted_class(self, probs: tf.Tensor) -> tf.Tensor:
        if self.single_unit:
            return tf.cast(probs[:, 0] >= 0.5, tf.int32)
        return tf.cast(tf.argmax(probs, axis=-1), tf.int32)

    def class_score(self, scores: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        if self.single_unit:
            sign = tf.where(classes == 1, 1.0, -1.0)
            return sign * scores[:, 0]
        return tf.gather(scores, classes, axis=1, batch_dims=1)


def _as_batch(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise DataError(f"images: expected [N, H, W, C] or [H, W, C], got shape {images.shape}")
    return images


def _class_indices(class_index, n: int, n_classes: int) -> np.ndarray | None:
    if class_index is None:
        return None
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,)).astype(np.int32)
    valid = 2 if n_classes == 1 else n_classes
    bad = (classes < 0) | (classes >= valid)
    if bad.any():
        raise ConfigError(f"class_index={classes[bad][0]} is out of range for a model with {valid} classes")
    return classes


def _weights(
    method: Method, grads: tf.Tensor, fmap: tf.Tensor, renormalize_alphas: bool = False
) -> tf.Tensor:
    """Channel weights [B, 1, 1, c] from the gradients of the class score w.r.t. the feature map."""
    if method == "gradcam":
        return tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    g2 = tf.square(grads)
    g3 = g2 * grads
    global_sum = tf.reduce_sum(fmap, axis=(1, 2), keepdims=True)
    denom = 2.0 * g2 + global_sum * g3
    alphas = tf.math.divide_no_nan(g2, tf.where(denom != 0.0, denom, tf.ones_like(denom)))
    if renormalize_alphas:
        alphas = tf.math.divide_no_nan(alphas, tf.reduce_sum(alphas, axis=(1, 2), keepdims=True))
    return tf.reduce_sum(alphas * tf.nn.relu(grads), axis=(1, 2), keepdims=True)


def _cam(
    model: keras.Model,
    images,
    class_index,
    layer_name: str | None,
    method: Method,
    batch_size: int,
    renormalize_alphas: bool = False,
) -> np.ndarray:
    if method not in ("gradcam", "gradcam++"):
        raise ConfigError(f"method={method!r}: expected 'gradcam' or 'gradcam++'")
    images = _as_batch(images)
    scorer = _ScoreModel(model, layer_name)
    expected = scorer.input_shape
    if len(expected) != 3 or any(
        e is not None and e != g for e, g in zip(expected, images.shape[1:], strict=True)
    ):
        raise DataError(
            f"images: shape {images.shape} does not match the model input [N, {', '.join(map(str, expected))}]"
        )
    n, height, width = images.shape[:3]
    classes = _class_indices(class_index, n, scorer.n_outputs)
    out = np.zeros((n, height, width), dtype=np.float32)
    for start in range(0, n, batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            fmap, scores, probs = scorer(batch)
            fmap = tf.cast(fmap, tf.float32)
            if classes is None:
                batch_classes = scorer.predicted_class(probs)
            else:
                batch_classes = tf.constant(classes[start : start + batch_size])
            score = scorer.class_score(scores, batch_classes)
        grads = tape.gradient(score, fmap)
        if grads is None:
            raise ConfigError(f"the class score does not depend on layer {scorer.layer_name!r}")
        weights = _weights(method, grads, fmap, renormalize_alphas)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, (height, width), method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        out[start : start + batch_size] = tf.math.divide_no_nan(cam, peak).numpy()
    return np.clip(out, 0.0, 1.0)


def grad_cam(
    model: keras.Model,
    images,
    class_index: int | Sequence[int] | None = None,
    layer_name: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM heatmaps ``[N, H, W]`` in ``[0, 1]`` for ``images`` ``[N, H, W, C]`` (or one ``[H, W, C]``).

    ``class_index``: the class to explain, one int for all images or one per image; ``None`` = each image's
    predicted class. For a single sigmoid unit, class 1 is malignant and class 0 is its complement (see the
    module docstring for the score used). ``layer_name``: the feature map; default `find_last_conv_layer`.
    """
    return _cam(model, images, class_index, layer_name, "gradcam", batch_size)


def grad_cam_plus_plus(
    model: keras.Model,
    images,
    class_index: int | Sequence[int] | None = None,
    layer_name: str | None = None,
    batch_size: int = 32,
    renormalize_alphas: bool = False,
) -> np.ndarray:
    """Grad-CAM++ heatmaps ``[N, H, W]`` in ``[0, 1]``; arguments as for `grad_cam`.

    ``renormalize_alphas``: divide each channel's alphas by their spatial sum as the authors' code and
    tf-keras-vis do (default: the paper's equations; see the module docstring).
    """
    return _cam(model, images, class_index, layer_name, "gradcam++", batch_size, renormalize_alphas)


def class_score_kind(model: keras.Model) -> str:
    """``"logit"`` if the CAMs of ``model`` use the pre-activation score, else ``"probability"``."""
    return _ScoreModel(model, None).score_kind
