"""Models Genesis pretraining: the transforms (hand-worked arrays), the restoration model, encoder weights
files and their provenance, the cache (hit, miss, stale parameters, interrupted builds), and the command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from lungnet.cli import main
from lungnet.data.dataset import DataConfig
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import ConfigError, DataError
from lungnet.models import CLASSIFIERS, build_classifier
from lungnet.models.weights import (
    WeightsError,
    check_encoder_file,
    provenance,
    save_encoder_weights,
    validate_weights_option,
)
from lungnet.pretraining import GenesisConfig, PretrainConfig, cache, genesis_pair, pretrain, pretrain_encoder
from lungnet.pretraining.genesis import (
    bezier_curve,
    inner_cutout,
    local_pixel_shuffle,
    nonlinear_intensity,
    outer_cutout,
    random_flips,
)
from lungnet.pretraining.restoration import restoration_model


class ScriptedRng:
    """Stands in for np.random.Generator: returns scripted values, in order, for each kind of draw."""

    def __init__(self, random=(), integers=(), permutations=(), noise=0.5):
        self._random, self._integers, self._perms, self.noise = (
            list(random),
            list(integers),
            list(permutations),
            noise,
        )

    def random(self, size=None):
        if size is None:
            return self._random.pop(0)
        if isinstance(size, int):  # a vector of uniform draws (block positions)
            return np.array([self._random.pop(0) for _ in range(size)])
        return np.full(size, self.noise)

    def integers(self, low, high=None, size=None):
        if size is None:
            value = self._integers.pop(0)
            assert low <= value < high, (low, value, high)
            return value
        return np.array([self.integers(low, high) for _ in range(size)])

    def permutation(self, n):
        return np.asarray(self._perms.pop(0))


def _ramp(h=4, w=4, c=1):
    return np.arange(h * w * c, dtype=np.float32).reshape(h, w, c) / (h * w * c)


# --- transforms -------------------------------------------------------------------------------------------


def test_flips_apply_to_input_and_target_while_draws_stay_below_the_rate():
    x = _ramp()
    # draws 0.1 < 0.4 (flip rows), 0.2 < 0.4 (flip columns), then 0.9: stop
    rng = ScriptedRng(random=[0.1, 0.2, 0.9], integers=[0, 1])
    fx, fy = random_flips(x, x.copy(), rng, 0.4)
    np.testing.assert_array_equal(fx, x[::-1, ::-1])
    np.testing.assert_array_equal(fy, x[::-1, ::-1])
    # at most three flips even at rate 1: rows three times = rows once
    fx, _ = random_flips(x, x, ScriptedRng(random=[0.0] * 3, integers=[0, 0, 0]), 1.0)
    np.testing.assert_array_equal(fx, x[::-1])


def test_bezier_curve_through_diagonal_points_is_the_identity_and_its_reversal_inverts():
    xs, ys = bezier_curve(np.array([[0, 0], [0.3, 0.3], [0.7, 0.7], [1, 1]]), 11)
    np.testing.assert_allclose(xs, ys)
    assert xs[0] == pytest.approx(1.0) and xs[-1] == pytest.approx(0.0)  # traced from the last point
    x = _ramp()
    # control points on the diagonal; 0.9 >= 0.5: both sorted -> y = x
    same = nonlinear_intensity(x, ScriptedRng(random=[0.3, 0.3, 0.7, 0.7, 0.9]))
    np.testing.assert_allclose(same, x, atol=1e-6)
    # 0.1 < 0.5: only x sorted -> the decreasing mapping y = 1 - x
    inverted = nonlinear_intensity(x, ScriptedRng(random=[0.3, 0.3, 0.7, 0.7, 0.1]))
    np.testing.assert_allclose(inverted, 1 - x, atol=1e-6)


def test_local_shuffle_permutes_a_window_keeping_each_pixels_channels_together():
    x = np.stack([_ramp(4, 4)[..., 0], 10 + _ramp(4, 4)[..., 0]], axis=-1)  # 2 channels
    # on a 4 x 4 image the window sides are at most max(1, 4 // 10) = 1 px
    rng = ScriptedRng(integers=[1, 1], random=[0.0, 0.5], permutations=[[0]])
    out = local_pixel_shuffle(x, rng, blocks=1)
    np.testing.assert_array_equal(out, x)  # a 1x1 window cannot change
    big = np.arange(20 * 20 * 2, dtype=np.float32).reshape(20, 20, 2)
    # a 2x2 window at (0, 0) (uniform draws 0 -> position 0), reversed pixel order
    rng = ScriptedRng(integers=[2, 2], random=[0.0, 0.0], permutations=[[3, 2, 1, 0]])
    out = local_pixel_shuffle(big, rng, blocks=1)
    expected = big.copy()
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = (
        big[1, 1],
        big[1, 0],
        big[0, 1],
        big[0, 0],
    )
    np.testing.assert_array_equal(out, expected)


def test_inner_cutout_fills_boxes_with_noise_and_outer_cutout_keeps_only_boxes():
    x = np.zeros((21, 21, 1), dtype=np.float32)
    # one box: 0.5 < 0.95, sides 5 and 6 (in [21//6, 21//3] = [3, 7]), at (3, 4); then 0.99: stop
    out = inner_cutout(x, ScriptedRng(random=[0.5, 0.99], integers=[5, 6, 3, 4], noise=0.25))
    expected = x.copy()
    expected[3:8, 4:10] = 0.25
    np.testing.assert_array_equal(out, expected)

    img = np.ones((21, 21, 1), dtype=np.float32)
    # side = 21 - randint(9, 12): draws 9 and 11 -> 12 x 10 box at (4, 5); then 0.99: no more boxes
    out = outer_cutout(img, ScriptedRng(random=[0.99], integers=[9, 11, 4, 5], noise=0.5))
    expected = np.full_like(img, 0.5)
    expected[4:16, 5:15] = 1.0
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ConfigError, match="at least 14 px"):
        inner_cutout(np.zeros((8, 8, 1), np.float32), np.random.default_rng(0))


def test_genesis_pair_targets_the_flipped_original_and_keeps_the_unit_range():
    image = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    none = GenesisConfig(flip_rate=0, local_rate=0, nonlinear_rate=0, paint_rate=0)
    x, y = genesis_pair(image, np.random.default_rng(0), none)
    np.testing.assert_array_equal(x, image)
    np.testing.assert_array_equal(y, image)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(20):
        x, y = genesis_pair(image, rng)
        assert x.dtype == np.float32 and x.shape == image.shape
        assert x.min() >= 0 and x.max() <= 1
        flips = [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
        assert any(np.array_equal(y, f) for f in flips)  # the target is the original, flipped at most
        changed += not np.array_equal(x, y)
    assert changed >= 15  # with the paper's rates nearly every input is transformed
    assert GenesisConfig().blocks_for(128, 128) == 1250  # 10,000 per 64 x 64 x 32 voxels
    with pytest.raises(ConfigError, match="paint_rate"):
        GenesisConfig(paint_rate=1.5)


# --- weights files --------------------------------------------------------------------------------------


def test_encoder_file_loads_into_a_classifier_and_refuses_other_backbones_or_inputs(tmp_path):
    _, encoder = restoration_model({"name": "efficientnet_b2", "weights": None}, (32, 32, 3))
    path = save_encoder_weights(
        encoder,
        tmp_path / "base.weights.h5",
        {"backbone": "efficientnet_b2", "input_shape": [32, 32, 3], "provenance": "self-supervised (test)"},
    )
    model = build_classifier(
        CLASSIFIERS.parse({"name": "efficientnet_b2", "weights": str(path)}), (32, 32, 3), 2
    )
    for name in ("stem_conv", "block6a_expand_conv", "top_conv"):
        for a, b in zip(
            encoder.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    assert provenance(str(path)) == "self-supervised (test)"
    assert provenance("imagenet") == "ImageNet" and provenance(None) == "random initialisation"
    with pytest.raises(WeightsError, match=r"input \[32, 32, 3\].*input \[64, 64, 3\]"):
        check_encoder_file(path, "efficientnet_b2", (64, 64, 3))
    with pytest.raises(WeightsError, match="efficientnet_b3"):
        build_classifier(CLASSIFIERS.parse({"name": "efficientnet_b3", "weights": str(path)}), (32, 32, 3), 2)
    with pytest.raises(ConfigError, match="lungnet pretrain --backbone efficientnet_b2"):
        build_classifier(CLASSIFIERS.parse({"name": "efficientnet_b2", "weights": "genesis"}), (32, 32, 3), 2)
    with pytest.raises(ConfigError, match="'imagenet', null"):
        validate_weights_option("genesis")  # only encoders that can be pretrained accept it


# --- pretraining and the cache ----------------------------------------------------------------------------


def _write_crops(root, patients=4, per_patient=3, size=32):
    rng = np.random.default_rng(0)
    rows = []
    (root / "images").mkdir(parents=True)
    for p in range(patients):
        for s in range(per_patient):
            yy, xx = np.mgrid[:size, :size]
            blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (3 + s) ** 2))
            image = (255 * np.clip(0.2 + 0.6 * blob + 0.1 * rng.random((size, size)), 0, 1)).astype(np.uint8)
            name = f"images/p{p}_s{s}.png"
            Image.fromarray(image).save(root / name)
            rows.append({"image": name, "patient_id": f"P{p}", "label": "benign" if p % 2 else "malignant"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


TINY = PretrainConfig(steps=2, steps_per_epoch=1, batch_size=4, patience=2)
DATA = DataConfig(preprocess=PreprocessConfig(image_size=32, channels=1, center_crop=None, sigmoid_gain=None))


@pytest.fixture
def crops(tmp_path):
    from lungnet.data.registry import load_source

    source = load_source(str(_write_crops(tmp_path / "crops")), progress=False)
    return dataclasses.replace(DATA, source=source.spec), source.manifest


def test_pretraining_trains_caches_and_reuses_a_base(tmp_path, crops, monkeypatch, capsys):
    data, frame = crops
    config = dataclasses.replace(TINY, cache_dir=str(tmp_path / "cache"))
    base = pretrain_encoder("conv", frame, data, "test crops", config, progress=False)
    info = json.loads((base.path.parent / cache.INFO_FILE).read_text())
    assert base.path.is_file() and info["steps_run"] == 2 and info["backbone"] == "conv"
    assert info["images"] + len(frame[frame.patient_id.isin(info["held_out_patients"])]) == len(frame)
    assert base.provenance.startswith(
        "self-supervised (Models Genesis) on test crops (3 patients, 9 images), 2 steps"
    )
    log = pd.read_csv(base.path.parent / "logs" / f"{pretrain.PHASE}.csv")
    assert len(log) == 2 and np.isfinite(log["val_loss"]).all()
    assert (base.path.parent / "learning_curve.png").stat().st_size > 1000
    assert not (base.path.parent / "checkpoints").exists()  # the restoration checkpoints are not kept

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(pretrain, "train_phase", no_training)
    again = pretrain_encoder("conv", frame, data, "test crops", config, progress=False)
    assert again.path == base.path and "reused from the cache" in capsys.readouterr().out
    # stale parameters: another step budget, another image set or preprocessing -> another entry (a miss)
    keys = {
        pretrain.base_key("conv", pretrain.pretraining_frame(f), d, c)
        for f, d, c in [
            (frame, data, config),
            (frame, data, dataclasses.replace(config, steps=3)),
            (frame.iloc[:-1], data, config),
            (
                frame,
                dataclasses.replace(data, preprocess=dataclasses.replace(data.preprocess, image_size=64)),
                config,
            ),
        ]
    }
    assert len(keys) == 4
    with pytest.raises(AssertionError, match="must not train"):
        pretrain_encoder(
            "conv", frame, data, "test crops", dataclasses.replace(config, steps=3), progress=False
        )


def test_an_interrupted_pretraining_leaves_nothing_finished_and_resumes(tmp_path, crops, monkeypatch):
    data, frame = crops
    config = dataclasses.replace(TINY, steps=4, cache_dir=str(tmp_path / "cache"))
    from lungnet.training.checkpoints import PhaseCheckpoint

    real_epoch_end = PhaseCheckpoint.on_epoch_end

    def killed_after_epoch_two(self, epoch, logs=None):
        real_epoch_end(self, epoch, logs)  # epoch 2's checkpoint is complete, then the process "dies"
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(PhaseCheckpoint, "on_epoch_end", killed_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain_encoder("conv", frame, data, "test crops", config, progress=False)
    entries = list((tmp_path / "cache" / "pretrained").iterdir())
    assert [e.name.endswith(".partial") for e in entries] == [True]
    assert cache.finished_weights(entries[0].with_name(entries[0].name[: -len(".partial")])) is None
    monkeypatch.setattr(PhaseCheckpoint, "on_epoch_end", real_epoch_end)
    base = pretrain_encoder("conv", frame, data, "test crops", config, progress=False)
    assert base.info["steps_run"] == 4  # resumed: epochs 3 and 4 only in the second call
    assert len(pd.read_csv(base.path.parent / "logs" / f"{pretrain.PHASE}.csv")) == 4
    assert not any(e.name.endswith(".partial") for e in (tmp_path / "cache" / "pretrained").iterdir())


def _pretrain_conv(manifest, cache_dir, *options) -> int:
    """`lungnet pretrain` of the tiny conv encoder; returns the exit code."""
    return main(
        [
            "pretrain",
            "--backbone",
            "conv",
            "--data",
            str(manifest),
            "--cache-dir",
            str(cache_dir),
            "--quiet",
            *options,
        ]
    )


def test_bad_pretraining_inputs_are_named(tmp_path, crops, capsys):
    data, frame = crops
    with pytest.raises(ConfigError, match=r"'resnet9' is not an encoder.*efficientnet_b2"):
        pretrain_encoder("resnet9", frame, data, "x", TINY)
    with pytest.raises(DataError, match="no images"):
        pretrain_encoder("conv", frame.iloc[:0], data, "x", TINY)
    with pytest.raises(DataError, match="at least 2 patients"):
        pretrain_encoder(
            "conv",
            frame[frame.patient_id == "P0"],
            data,
            "x",
            dataclasses.replace(TINY, cache_dir=str(tmp_path)),
        )
    zscored = dataclasses.replace(data, preprocess=dataclasses.replace(data.preprocess, normalize="zscore"))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        pretrain_encoder("conv", frame, zscored, "x", dataclasses.replace(TINY, cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="steps, minutes or both"):
        PretrainConfig(steps=None, minutes=None)
    manifest = _write_crops(tmp_path / "cli")
    assert main(["pretrain", "--backbone", "resnet9", "--data", str(manifest)]) == 2
    assert "choices" in capsys.readouterr().err
    excluded = tmp_path / "all.txt"
    excluded.write_text("P0\nP1\nP2\nP3\n")
    code = _pretrain_conv(manifest, tmp_path / "c", "--all-patients", "--exclude-patients", str(excluded))
    assert code == 2 and "no images" in capsys.readouterr().err


def test_pretrain_command_uses_the_training_split_and_prints_the_weights(tmp_path, capsys):
    manifest = _write_crops(tmp_path / "cli", patients=20, per_patient=1)
    code = _pretrain_conv(manifest, tmp_path / "c", "--steps", "1", "--batch-size", "2")
    out = capsys.readouterr().out
    assert code == 0, out
    path = out.split("weights: ")[1].split()[0]
    info = json.loads((tmp_path / "c" / "pretrained" / path.split("/")[-2] / cache.INFO_FILE).read_text())
    assert "training split of the default split" in info["data"]
    assert info["patients"] + len(info["held_out_patients"]) == 14  # 70 %: validation and test patients out
    assert "model.weights: " in out


# --- studies ----------------------------------------------------------------------------------------------


def _offline(monkeypatch):
    """ImageNet weights cannot be downloaded, whatever this machine's network."""
    from lungnet.models import WeightsUnavailableError
    from lungnet.studies import classification

    real_build = classification.build_classifier

    def offline_build(config, *args):
        if getattr(config, "weights", None) == "imagenet":
            raise WeightsUnavailableError(f"{config.name} ImageNet weights could not be downloaded (offline)")
        return real_build(config, *args)

    monkeypatch.setattr(classification, "build_classifier", offline_build)


def _study_config(tiny_phantom_config, tmp_path, models):
    from lungnet.experiment import load_experiment, resolve_experiment_path

    overrides = {
        "data": {"phantom": {"cache_dir": tiny_phantom_config.cache_dir}},
        "models": models,
        "pretraining": {
            "steps": 2,
            "steps_per_epoch": 1,
            "batch_size": 4,
            "cache_dir": str(tmp_path / "bases"),
        },
        "training": {"fine_tune_epochs": 1},
        "evaluation": {"explain": False, "tta": False},
    }
    return load_experiment(resolve_experiment_path("binary_nodule"), profile="smoke", overrides=overrides)


def test_offline_study_starts_the_encoder_from_its_own_genesis_base(
    tmp_path, tiny_phantom_config, monkeypatch
):
    from lungnet.studies.classification import run_classification_study

    _offline(monkeypatch)
    tiny_cnn = {
        "name": "custom_cnn",
        "model": {"name": "custom_cnn", "filters": [4, 4, 8, 8], "dense_units": 8},
    }
    resnet = {
        "name": "resnet34_d",
        "model": {"name": "resnet34_d", "weights": "imagenet", "fine_tune_layers": 5},
        "fine_tune": True,
        "if_weights_unavailable": "genesis",
    }
    config = _study_config(tiny_phantom_config, tmp_path, [tiny_cnn, resnet])
    summary = run_classification_study(config, tmp_path / "run", progress=False)
    assert list(summary["models"]) == ["custom_cnn", "resnet34_d_transfer", "resnet34_d_finetuned"]
    for name in ("resnet34_d_transfer", "resnet34_d_finetuned"):
        weights = summary["models"][name]["training"]["weights"]
        assert weights.startswith("encoder: self-supervised (Models Genesis) on lidc-phantom (training split")
        assert "ImageNet" not in weights
    assert summary["models"]["custom_cnn"]["training"]["weights"] == "random initialisation"
    report = (tmp_path / "run" / "report.html").read_text()
    assert "self-supervised (Models Genesis)" in report and "could not be downloaded" in report
    [entry] = (tmp_path / "bases" / "pretrained").iterdir()
    info = json.loads((entry / cache.INFO_FILE).read_text())
    test_patients = set(pd.read_csv(tmp_path / "run" / "predictions.csv")["patient_id"].astype(str))
    base_patients = set(info["pretraining_patients"]) | set(info["held_out_patients"])
    assert base_patients and not base_patients & test_patients  # training-split patients only


@pytest.mark.slow  # two more study runs (~60 s); the cache hit itself is tested above on a tiny encoder
def test_weights_genesis_reuses_the_fallbacks_base(tmp_path, tiny_phantom_config, monkeypatch, capsys):
    from lungnet.studies.classification import run_classification_study

    _offline(monkeypatch)
    resnet = {"name": "resnet34_d", "model": {"name": "resnet34_d", "weights": "imagenet"}}
    config = _study_config(tiny_phantom_config, tmp_path, [{**resnet, "if_weights_unavailable": "genesis"}])
    run_classification_study(config, tmp_path / "run", progress=False)
    capsys.readouterr()
    # weights: genesis asks for the same base directly: a cache hit
    config = _study_config(
        tiny_phantom_config, tmp_path, [{**resnet, "model": {**resnet["model"], "weights": "genesis"}}]
    )
    run_classification_study(config, tmp_path / "again", progress=False)
    assert "reused from the cache" in capsys.readouterr().out


@pytest.mark.slow
def test_offline_flagship_trains_its_three_models(tmp_path, tiny_phantom_config, monkeypatch):
    """The default profile's models (EfficientNetB2 with if_weights_unavailable: genesis), smoke-sized."""
    from lungnet.experiment import load_experiment, resolve_experiment_path
    from lungnet.studies.classification import run_classification_study

    _offline(monkeypatch)
    default = load_experiment(resolve_experiment_path("binary-nodule"), profile="default")
    models = [
        {"name": "custom_cnn", "model": {"name": "custom_cnn", "filters": [4, 4, 8, 8], "dense_units": 8}},
        {
            "name": "efficientnet_b2",
            "model": {"name": "efficientnet_b2", "weights": "imagenet"},
            "fine_tune": True,
            "if_weights_unavailable": default.models[1].if_weights_unavailable,
        },
    ]
    summary = run_classification_study(
        _study_config(tiny_phantom_config, tmp_path, models), tmp_path / "run", progress=False
    )
    assert list(summary["models"]) == ["custom_cnn", "efficientnet_b2_transfer", "efficientnet_b2_finetuned"]
    assert "Models Genesis" in summary["models"]["efficientnet_b2_finetuned"]["training"]["weights"]


@pytest.mark.parametrize("name", ["binary_nodule", "binary_full", "five_class_nodule", "five_class_full"])
def test_every_profile_monitors_a_metric_its_task_reports(name):
    from lungnet.experiment import load_experiment, resolve_experiment_path

    path = resolve_experiment_path(name)
    profiles = set(yaml.safe_load(path.read_text()).get("profiles") or {}) | set(
        yaml.safe_load(resolve_experiment_path("binary_nodule").read_text())["profiles"]
    )
    for profile in sorted(profiles):
        config = load_experiment(path, profile=profile)
        if config.data.grouping == "5class":
            assert "auc" not in config.training.monitor, (name, profile, config.training.monitor)


def test_batch_norm_statistics_are_re_estimated_on_the_images():
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 1, kernel_initializer="ones", use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    images = (3.0 + np.random.default_rng(0).normal(0, 2.0, (256, 8, 8, 1))).astype(np.float16)
    used = pretrain.recalibrate_batch_norm(model, images, batch_size=32, batches=50)
    bn = model.get_layer("bn")
    assert used == 50 * 32 and bn.momentum == 0.99  # the images cycled; the layer's own momentum restored
    # 50 batches at momentum 0.9 leave 0.9**50 = 0.5 % of the old (0, 1): the data's (3, 4) through a 1x1 conv
    np.testing.assert_allclose(bn.moving_mean.numpy(), 3.0, rtol=0.05)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 4.0, rtol=0.1)
