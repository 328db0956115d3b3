"""Multi-scale training, as Inf-Net's reference does it: every training batch is trained once at each of
``rates`` times the input size, in that order, rounded to a multiple of the network's deepest stride (the
reference: ``round(352 * rate / 32) * 32``, so 256 / 352 / 448 px for rates 0.75 / 1 / 1.25). A batch
therefore gives one optimiser step per rate: ``steps_per_epoch`` counts these steps.

Images are resized bilinearly; masks bilinearly too, then thresholded at 0.5 so that the loss still sees
binary masks (the reference trains on the interpolated values). The model trains through a wrapper that takes
any spatial size and shares every layer and weight with the model itself, which keeps its fixed input size
for evaluation, explanation and export.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lungnet.config import is_int
from lungnet.errors import ConfigError
from lungnet.models.contract import INPUT_NAME

DEEPEST_STRIDE = 32


def check_rates(rates, field: str) -> tuple[float, ...] | None:
    """`rates` as a tuple of positive numbers (None or empty: single-scale training)."""
    if rates is None:
        return None
    values = tuple(rates) if isinstance(rates, list | tuple) else (rates,)
    if not values:
        return None
    if not all(isinstance(r, int | float) and not isinstance(r, bool) and 0.25 <= r <= 4 for r in values):
        raise ConfigError(f"{field}: {rates!r} must be a list of rates in [0.25, 4], e.g. [0.75, 1.0, 1.25]")
    return tuple(float(r) for r in values)


def scaled_sizes(size: int, rates, stride: int = DEEPEST_STRIDE) -> tuple[int, ...]:
    """The training size of each rate for an input of `size` px: ``round(size * rate / stride) * stride``, at
    least one stride, in the order of `rates` (equal sizes kept: each rate is one step)."""
    if not is_int(size) or size < 1:
        raise ConfigError(f"multi-scale training: image size {size!r} must be a positive integer")
    return tuple(max(stride, int(round(size * rate / stride)) * stride) for rate in rates)


def multiscale_batches(
    dataset: tf.data.Dataset, size: int, rates, stride: int = DEEPEST_STRIDE
) -> tf.data.Dataset:
    """Batches of (image, mask), each batch repeated at every size of `rates`, in order."""
    sizes = scaled_sizes(size, rates, stride)

    def resized(image, mask, target: int):
        image = tf.cast(tf.image.resize(image, [target, target], method="bilinear"), image.dtype)
        scaled = tf.image.resize(tf.cast(mask, tf.float32), [target, target], method="bilinear")
        return image, tf.cast(scaled >= 0.5, mask.dtype)

    def every_size(image, mask):
        return tuple(resized(image, mask, target) for target in sizes)

    def one_step_each(*pairs):
        steps = tf.data.Dataset.from_tensors(pairs[0])
        for pair in pairs[1:]:
            steps = steps.concatenate(tf.data.Dataset.from_tensors(pair))
        return steps

    # The resizing in a parallel map: inside flat_map it would run on one thread, batch after batch.
    resized_batches = dataset.map(every_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return resized_batches.flat_map(one_step_each).prefetch(tf.data.AUTOTUNE)


def any_size_model(model: keras.Model) -> keras.Model:
    """`model` callable on batches of any spatial size (a multiple of the deepest stride): a wrapper that shares
    all of its layers and weights. Only models whose resizes follow their inputs' own sizes can take it."""
    inputs = keras.Input((None, None, model.input_shape[-1]), name=INPUT_NAME)
    # the same layer objects re-applied (not the model called as a layer, whose input check would refuse
    # another size wherever shapes are concrete: eager calls, XLA, JAX)
    wrapper = keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)
    wrapper.name = f"{model.name}_any_size"
    return wrapper


def multiscale_training(model: keras.Model, dataset: tf.data.Dataset, rates, size: int):
    """(the model to fit, its training batches): the wrapper and resized batches when `rates` are set,
    `model` and `dataset` unchanged otherwise."""
    if not rates:
        return model, dataset
    return any_size_model(model), multiscale_batches(dataset, size, rates)
