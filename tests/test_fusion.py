"""The CT + genomic fusion head: its two inputs, and that it learns a signal carried by a genomic column only
(the images are noise), which a copy trained on shuffled genomics cannot."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lungnet.errors import ConfigError
from lungnet.models import build_classifier
from lungnet.models.contract import GENOMICS_INPUT_NAME, INPUT_NAME

TINY = {
    "name": "genomic_fusion",
    "encoder": "conv",
    "encoder_options": {"depth": 2, "filters": 4},
    "genomic_features": 3,
    "image_units": 4,
    "genomic_units": 8,
    "fusion_units": 8,
    "dropout": 0.0,
}


def _data(n, rng):
    genomics = rng.normal(size=(n, 3)).astype("float32")
    genomics[:, 2] = 1.0  # has_genomics
    labels = (genomics[:, 0] > 0).astype("float32")[:, None]
    images = rng.random((n, 16, 16, 3), dtype=np.float32)
    return {INPUT_NAME: images, GENOMICS_INPUT_NAME: genomics}, labels


def _accuracy(shuffle: bool) -> float:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    (train, y), (test, y_test) = _data(128, rng), _data(128, rng)
    if shuffle:
        train[GENOMICS_INPUT_NAME] = rng.permutation(train[GENOMICS_INPUT_NAME])
    model = build_classifier(TINY, (16, 16, 3), 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(train, y, batch_size=32, epochs=40, verbose=0)
    predicted = keras.ops.convert_to_numpy(model.predict(test, verbose=0)) > 0.5
    return float((predicted == (y_test > 0.5)).mean())


def test_the_head_learns_a_genomic_signal():
    assert _accuracy(shuffle=False) > 0.9
    assert _accuracy(shuffle=True) < 0.75


def test_inputs_and_errors():
    model = build_classifier(TINY, (16, 16, 3), 2)
    assert [t.name for t in model.inputs] == [INPUT_NAME, GENOMICS_INPUT_NAME]
    assert tuple(model.get_layer(GENOMICS_INPUT_NAME).output.shape) == (None, 3)
    with pytest.raises(ConfigError, match="model.genomic_features"):
        build_classifier({**TINY, "genomic_features": 0}, (16, 16, 3), 2)
    with pytest.raises(ConfigError, match="model.encoder_options"):
        build_classifier({**TINY, "encoder_options": {"depth": 2, "colour": 1}}, (16, 16, 3), 2)
