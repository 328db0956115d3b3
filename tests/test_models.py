"""Models: shapes, parameter counts, flat graphs, embedding, transfer/fine-tune trainability, training steps,
weights files and the offline ImageNet download error. No test touches the network."""

from __future__ import annotations

import urllib.error

import h5py
import keras
import numpy as np
import pytest
from keras import layers
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from lungnet.errors import ConfigError, LungnetError
from lungnet.explain.gradcam import find_last_conv_layer
from lungnet.models import (
    BACKBONE_INPUT_NAME,
    CLASSIFIERS,
    WeightsError,
    WeightsUnavailableError,
    build_classifier,
)
from lungnet.models.classifiers.custom_cnn import CustomCNNConfig
from lungnet.models.classifiers.pretrained import PretrainedClassifierConfig
from lungnet.models.encoders.applications import BASES, IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_ROOT
from lungnet.models.weights import encoder_record
from lungnet.training.schedules import encoder_layers, set_fine_tuning, set_transfer_learning

WEIGHTS_FILE = BASES["efficientnet_b2"].weights_file
WEIGHTS_URL = WEIGHTS_ROOT + WEIGHTS_FILE

SIZE = 64  # EfficientNet input side in these tests (>= 32, and 2x2 at top_activation)
B2_WIDTH = 1408
TINY = {"name": "custom_cnn", "weights": None, "filters": (4, 8, 8, 16), "dense_units": 8, "dropout": 0.2}
CNN_SIZE = 32


def _units(num_classes: int) -> int:
    return 1 if num_classes == 2 else num_classes


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _labels(n: int, num_classes: int) -> np.ndarray:
    y = np.arange(n) % num_classes
    return y.astype("float32") if num_classes == 2 else keras.utils.to_categorical(y, num_classes)


def _snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    return {w.path: np.array(w.numpy()) for w in model.weights}


def _changed(before: dict[str, np.ndarray], model: keras.Model) -> set[str]:
    return {w.path for w in model.weights if not np.array_equal(before[w.path], w.numpy())}


def _one_step(model: keras.Model, num_classes: int, size: int, run_eagerly: bool = False) -> float:
    loss = "binary_crossentropy" if num_classes == 2 else "categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, run_eagerly=run_eagerly)
    history = model.fit(_images(4, size), _labels(4, num_classes), batch_size=4, epochs=1, verbose=0)
    return history.history["loss"][0]


def _is_flat(model: keras.Model) -> bool:
    return not any(isinstance(layer, keras.Model) for layer in model.layers)


def classifier_config(**fields):
    """A classifier config, chosen and validated by the registry as an experiment file's mapping is."""
    return CLASSIFIERS.parse(fields, "model")


def has_pretrained_encoder(model: keras.Model) -> bool:
    record = encoder_record(model)
    return record is not None and record.pretrained


def _weights_by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


# ----------------------------------------------------------------------------------------------- config


def test_config_defaults_and_family_configs():
    b2 = classifier_config(name="efficientnet_b2")
    assert isinstance(b2, PretrainedClassifierConfig) and b2 == PretrainedClassifierConfig(
        name="efficientnet_b2"
    )
    assert b2.weights == "imagenet" and b2.fine_tune_layers == 20
    cnn = classifier_config(name="custom_cnn", filters=[8, 8, 16, 16], weights=None)
    assert isinstance(cnn, CustomCNNConfig) and cnn.filters == (8, 8, 16, 16) and cnn.weights is None
    assert CustomCNNConfig(filters=[1, 2, 3, 4]).filters == (1, 2, 3, 4)
    assert {"custom_cnn", "efficientnet_b2"} <= set(CLASSIFIERS.names())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "resnet"}, "name"),
        ({"name": "custom_cnn", "weights": "imagnet"}, "weights"),
        ({"name": "custom_cnn", "weights": "weights.pt"}, "weights"),
        ({"name": "custom_cnn", "dropout": 1.0}, "dropout"),
        ({"name": "custom_cnn", "dropout": -0.1}, "dropout"),
        ({"name": "custom_cnn", "filters": [8, 8, 8]}, "filters"),
        ({"name": "custom_cnn", "filters": [8, 8, 0, 8]}, "filters"),
        ({"name": "custom_cnn", "dense_units": 0}, "dense_units"),
        ({"name": "custom_cnn", "fine_tune_layers": 0}, "fine_tune_layers"),
        ({"name": "custom_cnn", "fine_tune_layers": 2.5}, "fine_tune_layers"),
        ({"name": "custom_cnn", "depth": 3}, "depth"),
        ({"name": "efficientnet_b2", "filters": [8, 8, 8, 8]}, "filters"),  # the CNN's key, not B2's
        ({"name": "efficientnet_b2", "fine_tune_layers": 0}, "fine_tune_layers"),
    ],
)
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        CLASSIFIERS.parse(data, "x.yaml: model")


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        CustomCNNConfig(dropout=2)
    with pytest.raises(ConfigError, match=r"model\.dense_units"):
        CustomCNNConfig(dense_units=True)
    with pytest.raises(ConfigError, match="expects CustomCNNConfig"):
        CLASSIFIERS.parse(PretrainedClassifierConfig(name="custom_cnn"))


def test_build_model_checks_its_arguments():
    config = classifier_config(**TINY)
    with pytest.raises(ConfigError, match="num_classes"):
        build_classifier(config, (CNN_SIZE, CNN_SIZE, 3), 1)
    with pytest.raises(ConfigError, match="input_shape"):
        build_classifier(config, (CNN_SIZE, CNN_SIZE), 2)
    with pytest.raises(ConfigError, match="at least 16x16"):
        build_classifier(config, (8, 8, 3), 2)
    with pytest.raises(ConfigError, match="at least 32x32"):
        build_classifier(classifier_config(name="efficientnet_b2", weights=None), (16, 16, 3), 2)
    with pytest.raises(ConfigError, match="channels: 3"):
        build_classifier(classifier_config(name="efficientnet_b2", weights="imagenet"), (SIZE, SIZE, 1), 2)


# ------------------------------------------------------------------------------------------- custom CNN


def expected_custom_cnn_params(
    size: int, channels: int, filters, dense: int, num_classes: int
) -> tuple[int, int]:
    """(total, trainable) parameters of the custom CNN, counted by hand from its architecture."""
    total, c_in = 0, channels
    for f in filters:
        total += 3 * 3 * c_in * f  # 3x3 convolution, no bias (batch norm's beta replaces it)
        total += 4 * f  # batch norm: gamma, beta (trainable), moving mean, moving variance (not)
        c_in = f
    side = size // 2**4  # four 2x2 max-pools
    total += side * side * filters[-1] * dense + dense  # flatten -> Dense(dense_units)
    units = _units(num_classes)
    total += dense * units + units  # output layer
    return total, total - 2 * sum(filters)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_custom_cnn_shapes_parameters_and_graph(num_classes):
    config = classifier_config(**TINY)
    model = build_classifier(config, (CNN_SIZE, CNN_SIZE, 3), num_classes)
    out = model.predict(_images(3, CNN_SIZE), verbose=0)
    assert out.shape == (3, _units(num_classes))
    if num_classes == 2:
        assert model.get_layer("probabilities").activation.__name__ == "sigmoid"
        assert np.all((out > 0) & (out < 1))
    else:
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    total, trainable = expected_custom_cnn_params(
        CNN_SIZE, 3, config.filters, config.dense_units, num_classes
    )
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    # flat; the last conv feature map and the embedding are reachable from the input
    assert _is_flat(model)
    assert find_last_conv_layer(model) == "block4_act"
    assert model.get_layer("embedding").output.shape == (None, config.dense_units)
    probe = keras.Model(model.input, [model.get_layer(find_last_conv_layer(model)).output, model.output])
    feature_map, probs = probe.predict(_images(2, CNN_SIZE), verbose=0)
    assert feature_map.shape == (2, CNN_SIZE // 8, CNN_SIZE // 8, config.filters[-1])  # before the 4th pool
    np.testing.assert_allclose(probs, model.predict(_images(2, CNN_SIZE), verbose=0), rtol=1e-5)


def test_custom_cnn_default_parameter_count():
    model = build_classifier(classifier_config(name="custom_cnn", weights=None), (128, 128, 3), 2)
    assert (
        model.count_params() == expected_custom_cnn_params(128, 3, (32, 64, 128, 256), 128, 2)[0] == 2_487_265
    )


@pytest.mark.parametrize("num_classes", [2, 5])
def test_custom_cnn_one_training_step(num_classes):
    model = build_classifier(classifier_config(**TINY), (CNN_SIZE, CNN_SIZE, 3), num_classes)
    before = _snapshot(model)
    loss = _one_step(model, num_classes, CNN_SIZE)
    assert np.isfinite(loss)
    changed = _changed(before, model)
    assert {w.path for w in model.trainable_weights} <= changed  # every trainable weight moved
    assert any("moving_mean" in path for path in changed)  # batch norms trained (training mode)


def test_custom_cnn_has_no_pretrained_encoder():
    model = build_classifier(classifier_config(**TINY), (CNN_SIZE, CNN_SIZE, 3), 2)
    assert encoder_layers(model) == [] and not has_pretrained_encoder(model)
    assert set_transfer_learning(model) is False
    assert len(model.trainable_weights) == len([w for w in model.weights if w.trainable])
    assert all(layer.trainable for layer in model.layers)
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        set_fine_tuning(model, 5)


def test_custom_cnn_weights_file_and_round_trip(tmp_path):
    config = classifier_config(**TINY)
    model = build_classifier(config, (CNN_SIZE, CNN_SIZE, 3), 2)
    path = tmp_path / "cnn.weights.h5"
    model.save_weights(path)
    again = build_classifier(classifier_config(**{**TINY, "weights": str(path)}), (CNN_SIZE, CNN_SIZE, 3), 2)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsError, match="cnn.weights.h5"):  # built for another number of classes
        build_classifier(classifier_config(**{**TINY, "weights": str(path)}), (CNN_SIZE, CNN_SIZE, 3), 5)
    # a saved and reloaded model keeps its names, so Grad-CAM and retrieval still find their layers
    model.save(tmp_path / "cnn.keras")
    loaded = keras.saving.load_model(tmp_path / "cnn.keras")
    assert _is_flat(loaded) and find_last_conv_layer(loaded) == "block4_act"
    np.testing.assert_allclose(
        loaded.predict(_images(2, CNN_SIZE), verbose=0),
        model.predict(_images(2, CNN_SIZE), verbose=0),
        rtol=1e-5,
    )


# --------------------------------------------------------------------------------------- EfficientNetB2


@pytest.fixture(scope="module")
def plain_b2_params() -> int:
    return keras.applications.EfficientNetB2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    ).count_params()


@pytest.fixture(scope="module")
def b2_weights_files(tmp_path_factory) -> dict[str, object]:
    """Random EfficientNetB2 base weights with ImageNet's normalisation statistics, saved as the keras-applications
    download is (legacy Keras 2 .h5) and in the Keras 3 .weights.h5 format."""
    folder = tmp_path_factory.mktemp("b2-weights")
    keras.utils.set_random_seed(7)
    base = keras.applications.EfficientNetB2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    norm = next(layer for layer in base.layers if isinstance(layer, layers.Normalization))
    # what the real file holds: the ImageNet mean, and the standard deviations stored as the "variance"
    norm.set_weights([np.array(IMAGENET_MEAN, "float32"), np.array(IMAGENET_STD, "float32"), np.int64(0)])
    legacy = folder / WEIGHTS_FILE
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    modern = folder / "b2.weights.h5"
    base.save_weights(modern)
    return {"legacy": legacy, "modern": modern, "weights": _weights_by_layer(base), "folder": folder}


@pytest.mark.parametrize("num_classes", [2, 5])
def test_efficientnet_shapes_parameters_and_graph(num_classes, plain_b2_params):
    model = build_classifier(
        classifier_config(name="efficientnet_b2", weights=None), (SIZE, SIZE, 3), num_classes
    )
    units = _units(num_classes)
    assert model.count_params() == plain_b2_params + B2_WIDTH * units + units
    out = model(_images(2, SIZE))  # eager calls: tracing predict() through 340 layers takes seconds
    assert out.shape == (2, units)
    # flat: the EfficientNet layers are the model's own layers, not one nested sub-model
    assert _is_flat(model)
    assert {"stem_conv", "block1a_dwconv", "top_conv", "top_activation"} <= {
        layer.name for layer in model.layers
    }
    assert find_last_conv_layer(model) == "top_activation"
    assert model.get_layer("embedding").output.shape == (None, B2_WIDTH)
    probe = keras.Model(model.input, [model.get_layer("top_activation").output, model.output])
    feature_map, _ = probe(_images(1, SIZE))
    assert feature_map.shape == (1, SIZE // 32, SIZE // 32, B2_WIDTH)
    backbone = encoder_layers(model)
    assert backbone[0].name == BACKBONE_INPUT_NAME and backbone[-1].name == "top_activation"
    head = {layer.name for layer in model.layers} - {layer.name for layer in backbone}
    assert head == {"image", "embedding", "head_dropout", "probabilities"}


def test_efficientnet_random_init_is_not_frozen_for_transfer():
    model = build_classifier(classifier_config(name="efficientnet_b2", weights=None), (SIZE, SIZE, 3), 2)
    assert not has_pretrained_encoder(model)
    assert set_transfer_learning(model) is False  # a random base must be trained, not frozen
    assert all(layer.trainable for layer in model.layers)


def _pretrained(b2_weights_files, kind: str = "legacy", num_classes: int = 2) -> keras.Model:
    config = classifier_config(name="efficientnet_b2", weights=str(b2_weights_files[kind]), dropout=0.3)
    return build_classifier(config, (SIZE, SIZE, 3), num_classes)


@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_efficientnet_loads_a_local_weights_file(b2_weights_files, kind):
    model = _pretrained(b2_weights_files, kind)
    saved = b2_weights_files["weights"]
    loaded = _weights_by_layer(model)
    for name in ("stem_conv", "block3b_dwconv", "top_conv", "top_bn"):
        for a, b in zip(saved[name], loaded[name], strict=True):
            np.testing.assert_array_equal(a, b)
    # the ImageNet file's stored std-as-variance is turned into a true variance: inputs become (x - mean) / std
    norm = next(layer for layer in model.layers if isinstance(layer, layers.Normalization))
    normalize = keras.Model(model.input, norm.output)
    x = _images(1, SIZE)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalize(x)),
        (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD),
        rtol=1e-4,
        atol=1e-5,
    )
    assert has_pretrained_encoder(model)


def test_imagenet_weights_path_matches_local_file(b2_weights_files, monkeypatch):
    """weights="imagenet" (the download replaced by the local file) and weights=<that file> give one model."""
    requested = {}

    def fake_get_file(fname=None, origin=None, **kwargs):
        requested.update(fname=fname, origin=origin)
        return str(b2_weights_files["legacy"])

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    from_imagenet = build_classifier(
        classifier_config(name="efficientnet_b2", weights="imagenet"), (SIZE, SIZE, 3), 5
    )
    assert requested == {"fname": WEIGHTS_FILE, "origin": WEIGHTS_URL}
    assert _is_flat(from_imagenet) and find_last_conv_layer(from_imagenet) == "top_activation"
    from_file = _pretrained(b2_weights_files, "legacy", num_classes=5)
    from_file.get_layer("probabilities").set_weights(from_imagenet.get_layer("probabilities").get_weights())
    x = _images(2, SIZE, seed=3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(from_file(x)),
        keras.ops.convert_to_numpy(from_imagenet(x)),
        rtol=1e-4,
        atol=1e-6,
    )


def _trainable_names(model: keras.Model) -> set[str]:
    return {w.path for w in model.trainable_weights}


def test_transfer_then_fine_tune_trainability(b2_weights_files):
    model = _pretrained(b2_weights_files)
    backbone = encoder_layers(model)
    head_weights = {w.path for w in model.get_layer("probabilities").weights}

    assert set_transfer_learning(model) is True
    assert _trainable_names(model) == head_weights  # base frozen, only the head trains
    assert not any(layer.trainable for layer in backbone)

    n = 20
    unfrozen = set_fine_tuning(model, n)
    top = backbone[-n:]
    expected = [layer for layer in top if not isinstance(layer, layers.BatchNormalization)]
    assert unfrozen == len(expected) == 15
    assert {layer.name for layer in backbone if layer.trainable} == {layer.name for layer in expected}
    assert not any(layer.trainable for layer in backbone if isinstance(layer, layers.BatchNormalization))
    expected_weights = {w.path for layer in expected for w in layer.trainable_weights} | head_weights
    assert _trainable_names(model) == expected_weights
    assert "top_conv/kernel" in {w.path for w in model.trainable_weights}

    # the whole base (BN excepted), and back to transfer learning
    everything = set_fine_tuning(model, 10_000)
    assert everything == sum(not isinstance(layer, layers.BatchNormalization) for layer in backbone)
    assert all(layer.trainable != isinstance(layer, layers.BatchNormalization) for layer in backbone)
    assert set_transfer_learning(model) is True and _trainable_names(model) == head_weights
    with pytest.raises(ConfigError, match="fine_tune_layers"):
        set_fine_tuning(model, -1)


def test_efficientnet_training_steps_transfer_and_fine_tune(b2_weights_files):
    """One real step in each phase: only trainable weights move; frozen batch norms keep their statistics."""
    model = _pretrained(b2_weights_files)
    set_transfer_learning(model)
    before = _snapshot(model)
    assert np.isfinite(_one_step(model, 2, SIZE, run_eagerly=True))
    changed = _changed(before, model)
    # the kernel may keep a zero gradient where pooled features are zero, the bias always moves
    assert "probabilities/bias" in changed
    assert changed <= {w.path for w in model.get_layer("probabilities").weights} | {"seed_generator_state"}

    set_fine_tuning(model, 20)
    trainable = _trainable_names(model)
    before = _snapshot(model)
    assert np.isfinite(_one_step(model, 2, SIZE, run_eagerly=True))
    changed = {path for path in _changed(before, model) if "seed_generator" not in path}
    assert "top_conv/kernel" in changed
    assert changed <= trainable  # nothing frozen moved: no batch-norm statistic, no lower layer


@pytest.mark.slow
def test_efficientnet_compiled_training_step():
    """model.fit in graph mode (tf.function), 5 classes, every layer trainable (weights=None): about two
    minutes on 2 CPUs, nearly all of it tracing the train step."""
    model = build_classifier(classifier_config(name="efficientnet_b2", weights=None), (SIZE, SIZE, 3), 5)
    before = _snapshot(model)
    assert np.isfinite(_one_step(model, 5, SIZE))
    changed = _changed(before, model)
    assert {"stem_conv/kernel", "top_conv/kernel", "probabilities/bias"} <= changed


# ------------------------------------------------------------------------------------------ weights errors


def _assert_ways_out(message: str) -> None:
    assert "model.weights: null" in message
    assert f"model.weights: /path/to/{WEIGHTS_FILE}" in message
    assert WEIGHTS_URL in message


def test_failed_download_through_keras_get_file(monkeypatch, tmp_path):
    """The real Keras download path, with urlretrieve failing as it does offline (and an empty cache)."""
    real_get_file = file_utils.get_file

    def offline_urlretrieve(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", offline_urlretrieve)
    monkeypatch.setattr(
        file_utils, "get_file", lambda *a, **k: real_get_file(*a, **{**k, "cache_dir": str(tmp_path)})
    )
    with pytest.raises(WeightsUnavailableError) as caught:
        build_classifier(classifier_config(name="efficientnet_b2", weights="imagenet"), (SIZE, SIZE, 3), 2)
    _assert_ways_out(str(caught.value))
    assert "Name or service not known" in str(caught.value)
    assert isinstance(caught.value, LungnetError)


def test_failed_download_raised_from_url_error(monkeypatch):
    def offline(*args, **kwargs):
        try:
            raise urllib.error.URLError("no network")
        except urllib.error.URLError as exc:
            raise Exception(f"URL fetch failure on {WEIGHTS_URL}: None -- no network") from exc

    monkeypatch.setattr(keras.applications, "EfficientNetB2", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_classifier(classifier_config(name="efficientnet_b2"), (SIZE, SIZE, 3), 5)
    _assert_ways_out(str(caught.value))


def test_other_errors_are_not_reported_as_download_failures(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(keras.applications, "EfficientNetB2", broken)
    with pytest.raises(RuntimeError, match="something else"):
        build_classifier(classifier_config(name="efficientnet_b2"), (SIZE, SIZE, 3), 2)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / WEIGHTS_FILE
    with pytest.raises(WeightsError, match=r"nowhere/efficientnetb2_notop\.h5 does not exist"):
        build_classifier(classifier_config(name="efficientnet_b2", weights=str(missing)), (SIZE, SIZE, 3), 2)


def test_weights_of_another_architecture(tmp_path):
    b0 = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    legacy = tmp_path / "efficientnetb0_notop.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, b0)
    modern = tmp_path / "b0.weights.h5"
    b0.save_weights(modern)
    for path in (legacy, modern):
        with pytest.raises(WeightsError, match=rf"{path.name} does not hold weights of an EfficientNetB2"):
            build_classifier(classifier_config(name="efficientnet_b2", weights=str(path)), (SIZE, SIZE, 3), 2)


def test_a_file_that_is_not_hdf5(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("<html>a proxy's error page saved as the weights</html>")
    with pytest.raises(WeightsError, match=r"junk\.h5 is not an HDF5 file"):
        build_classifier(classifier_config(name="efficientnet_b2", weights=str(junk)), (SIZE, SIZE, 3), 2)
    with pytest.raises(WeightsError, match=r"junk\.h5 is not an HDF5 file"):
        build_classifier(classifier_config(**{**TINY, "weights": str(junk)}), (CNN_SIZE, CNN_SIZE, 3), 2)
