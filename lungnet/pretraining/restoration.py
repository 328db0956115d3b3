"""The restoration network of self-supervised pretraining: any registered encoder + a light U-Net decoder.

::

    image -> encoder (nested model, its pyramid P_a..P_b) -> from the deepest level up: 2x bilinear
    upsampling, concatenate the next level, 3x3 conv + BN + ReLU -> upsample to the input -> 3x3 conv + ReLU
    -> 1x1 conv, sigmoid -> ``restored`` [H, W, C] in [0, 1]

Only the encoder is kept (`lungnet.models.weights.save_encoder_weights`); the decoder exists to make it
learn. Like the Models Genesis U-Net, the decoder reads every level through skip connections.
"""

from __future__ import annotations

import keras
from keras import layers

from lungnet.models.contract import INPUT_NAME
from lungnet.models.encoders import build_encoder
from lungnet.models.registry import ENCODERS

RESTORED_NAME = "restored"


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def restoration_model(encoder_config, input_shape: tuple[int, int, int]) -> tuple[keras.Model, keras.Model]:
    """(restoration model, its encoder): `encoder_config` is a registered encoder's config (weights null)."""
    config = ENCODERS.parse(encoder_config)
    encoder = build_encoder(config, input_shape)
    keys = ENCODERS.get(config.name).pyramid_keys(config)
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    pyramid = encoder(inputs)
    x = pyramid[keys[-1]]
    for i, key in enumerate(reversed(keys[:-1])):
        skip = pyramid[key]
        factor = int(skip.shape[1]) // int(x.shape[1])
        if factor > 1:
            x = layers.UpSampling2D(factor, interpolation="bilinear", name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skip])
        x = _conv_bn_relu(x, max(16, 256 >> i), f"dec{i}")
    factor = input_shape[0] // int(x.shape[1])
    if factor > 1:
        x = layers.UpSampling2D(factor, interpolation="bilinear", name="dec_out_up")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="dec_out_conv")(x)
    outputs = layers.Conv2D(input_shape[-1], 1, activation="sigmoid", name=RESTORED_NAME)(x)
    return keras.Model(inputs, outputs, name=f"{config.name}_restoration"), encoder
