"""keras.applications bases as feature-pyramid encoders, through a table of their stage layers.

The base's layers are applied to the caller's tensor (``input_tensor``), so they join its graph directly:
flat models whose every feature map is reachable (Grad-CAM, fine-tuning by layer). lungnet's images are in
``[0, 1]``; ``backbone_input`` turns them into the pixels each base's ImageNet weights were trained on, as
its row's ``preprocessing`` says:

- ``"builtin"``: a ``Rescaling(255)``; the base (EfficientNet) starts with its own ImageNet normalisation of
  0-255 pixels;
- ``"caffe"``: the base (ResNet) has none, so `CaffePreprocessing` does
  ``keras.applications.resnet.preprocess_input``'s work: 0-255, RGB -> BGR, minus the ImageNet BGR mean.

With ``weights: null`` either is a fixed affine map of the input (no harm). A new base is one row of `BASES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np
from keras import layers

from lungnet.models.contract import BACKBONE_INPUT_NAME, Pyramid, check_input_shape
from lungnet.models.encoders.pretrained import PretrainedEncoderConfig, check_rgb
from lungnet.models.layers.imagenet_input import IMAGENET_MEAN, IMAGENET_STD, CaffePreprocessing
from lungnet.models.registry import ENCODERS
from lungnet.models.weights import (
    WeightsUnavailableError,
    check_encoder_weights_option,
    download_failed,
    load_weights_file,
    weights_path,
)

WEIGHTS_ROOT = "https://storage.googleapis.com/keras-applications/"
RESNET_WEIGHTS_ROOT = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


@dataclass(frozen=True)
class Base:
    constructor: str  # the keras.applications function
    stages: tuple[tuple[str, str], ...]  # (pyramid key, the layer ending that stage), shallowest first
    weights_file: str  # the keras-applications download (include_top=False)
    # what backbone_input does to [0, 1] images: "builtin" x255 (the base normalises itself), "caffe" as
    # keras.applications.resnet.preprocess_input (the base has no normalisation)
    preprocessing: Literal["builtin", "caffe"] = "builtin"
    weights_root: str = WEIGHTS_ROOT  # where Keras downloads weights_file from
    min_size: int = 32  # keras.applications' minimum input side

    @property
    def architecture(self) -> str:
        article = "an" if self.constructor[0] in "AEIOU" else "a"
        return f"{article} {self.constructor} base (keras.applications.{self.constructor}, include_top=False)"

    @property
    def weights_url(self) -> str:
        return self.weights_root + self.weights_file

    def input_layer(self) -> keras.layers.Layer:
        """``backbone_input``: [0, 1] images to the pixels this base's ImageNet weights expect."""
        if self.preprocessing == "caffe":
            return CaffePreprocessing(name=BACKBONE_INPUT_NAME)
        return layers.Rescaling(255.0, name=BACKBONE_INPUT_NAME)


def _resnet(constructor: str, conv4_blocks: int, weights_file: str) -> Base:
    """A keras.applications ResNet v1: stage k ends at ``conv{k}_block{n}_out``; caffe-style input."""
    return Base(
        constructor,
        (
            ("P1", "conv1_relu"),
            ("P2", "conv2_block3_out"),
            ("P3", "conv3_block4_out"),
            ("P4", f"conv4_block{conv4_blocks}_out"),
            ("P5", "conv5_block3_out"),
        ),
        weights_file,
        preprocessing="caffe",
        weights_root=RESNET_WEIGHTS_ROOT,
    )


BASES = {
    "efficientnet_b2": Base(
        "EfficientNetB2",
        (
            ("P1", "block1b_add"),
            ("P2", "block2c_add"),
            ("P3", "block3c_add"),
            ("P4", "block5d_add"),
            ("P5", "top_activation"),
        ),
        "efficientnetb2_notop.h5",
    ),
    "efficientnet_b3": Base(
        "EfficientNetB3",
        (
            ("P1", "block1b_add"),
            ("P2", "block2c_add"),
            ("P3", "block3c_add"),
            ("P4", "block5e_add"),
            ("P5", "top_activation"),
        ),
        "efficientnetb3_notop.h5",
    ),
    "resnet50": _resnet("ResNet50", 6, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet101": _resnet("ResNet101", 23, "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


def _explanation_layer(config: PretrainedEncoderConfig) -> str:
    return BASES[config.name].stages[-1][1]


@ENCODERS.register(
    tuple(BASES),
    PretrainedEncoderConfig,
    family="keras_applications",
    description="keras.applications base (EfficientNet, ResNet), ImageNet weights when they can be downloaded",
    explanation_layer=_explanation_layer,
    input_scaling="[0, 1], 3 channels for ImageNet weights (turned inside into the base's ImageNet input)",
    pyramid_keys=lambda c: tuple(key for key, _ in BASES[c.name].stages),
)
def build_applications_encoder(config: PretrainedEncoderConfig, x) -> Pyramid:
    base_spec = BASES[config.name]
    shape = check_input_shape(tuple(x.shape[1:]), minimum=base_spec.min_size, what=config.name)
    check_rgb(config.weights, shape[-1])
    check_encoder_weights_option(config.weights, config.name, shape)
    x = base_spec.input_layer()(x)
    base = _base(base_spec, x, config.weights)
    return {key: base.get_layer(layer).output for key, layer in base_spec.stages}


def _base(spec: Base, x, weights: str | None) -> keras.Model:
    constructor = getattr(keras.applications, spec.constructor)
    if weights == "imagenet":
        try:
            return constructor(include_top=False, weights="imagenet", input_tensor=x)
        except Exception as exc:
            if download_failed(exc):
                raise WeightsUnavailableError(_unavailable_message(spec, exc)) from exc
            raise
    if weights is not None:
        weights_path(weights, spec.architecture)  # fail before the build if the file is missing
    base = constructor(include_top=False, weights=None, input_tensor=x)
    if weights is not None:
        load_weights_file(base, weights, spec.architecture)
        _match_imagenet_normalization(base)
    return base


def _unavailable_message(spec: Base, exc: BaseException) -> str:
    return (
        f"{spec.constructor} ImageNet weights could not be downloaded ({exc}). Two ways out:\n"
        f"  1. use a local copy: on a machine with internet access download {spec.weights_url}\n"
        f"     (Keras keeps it as ~/.keras/models/{spec.weights_file} after one "
        f"`keras.applications.{spec.constructor}(include_top=False)`), copy it here and set\n"
        f"     `model.weights: /path/to/{spec.weights_file}` (placing it in ~/.keras/models/ also makes "
        "`model.weights: imagenet` work offline);\n"
        "  2. train without pretrained weights: set `model.weights: null` (random initialisation; the base is "
        "then trained rather than frozen, and small data sets give lower accuracy)."
    )


def _match_imagenet_normalization(base: keras.Model) -> None:
    """Give a base loaded from a local ImageNet file the input normalisation of ``weights="imagenet"``.

    The keras-applications files store the ImageNet standard deviations as the Normalization layer's
    *variance*, so that layer alone divides by sqrt(std); with ``weights="imagenet"`` Keras adds a second
    Rescaling(1/sqrt(std)) to complete the division (keras issue 16392, tensorflow issue 49930). A file loaded
    from a path gets no such layer, so the variance is set to std**2 here: the same (x - mean) / std.
    Other files (stats that are not ImageNet's) are left alone.
    """
    norms = [layer for layer in base.layers if isinstance(layer, layers.Normalization)]
    if len(norms) != 1:
        return
    norm = norms[0]
    mean, variance, *rest = norm.get_weights()
    if np.allclose(mean, IMAGENET_MEAN, atol=1e-6) and np.allclose(variance, IMAGENET_STD, atol=1e-6):
        norm.set_weights([mean, np.square(np.asarray(IMAGENET_STD, dtype=variance.dtype)), *rest])
        norm.finalize_state()  # the layer computes with tensors derived from its variables; refresh them
