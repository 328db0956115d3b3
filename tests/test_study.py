"""The classification study end to end on a tiny phantom: run folder, report, export, resume, evaluate."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from lungnet.cli import main
from lungnet.config import to_dict
from lungnet.errors import ConfigError, DataError, LungnetError
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.reports.run_spread import compare_runs
from lungnet.studies.classification import run_classification_study
from tests.report_checks import check_report
from tests.test_run_spread import check_spread_of_copies


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_phantom_config):
    config = load_experiment(
        resolve_experiment_path("binary_nodule"),
        profile="smoke",
        overrides={"data": {"phantom": {"cache_dir": tiny_phantom_config.cache_dir}}},
    )
    run_dir = tmp_path_factory.mktemp("run")
    summary = run_classification_study(config, run_dir, progress=False)
    return run_dir, summary


def test_run_folder_holds_every_artefact(smoke_run):
    run_dir, summary = smoke_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("f1", "f1_macro", "precision", "recall", "accuracy", "auc"):
        assert key in metrics and metrics[key] == summary[key]
    assert metrics["selected_model"] == "custom_cnn" and "size_only" in metrics["baselines"]
    assert {"nodule", "patient"} <= set(metrics["levels"]) and "levels" in metrics["baselines"]["size_only"]
    calibration = metrics["models"]["custom_cnn"][
        "calibration"
    ]  # test ECE with its patient-bootstrap interval
    assert calibration["ece_after_ci95"][0] <= calibration["ece_after_ci95"][1]
    against = metrics["against_size_only"]  # the selected model minus the diameter, same test patients
    assert against["slice"]["auc"]["difference"] == pytest.approx(
        metrics["auc"] - metrics["baselines"]["size_only"]["auc"]
    )
    assert against["nodule"]["n"] == metrics["levels"]["nodule"]["n"]
    patient = metrics["levels"]["patient"]  # per patient, the same aggregation as the run's own levels
    assert against["patient"]["n"] == patient["n"]
    assert against["patient"]["f1_macro"]["a"] == pytest.approx(patient["f1_macro"])
    assert (run_dir / "figures" / "learning_curves.png").is_file()
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert list(predictions.columns) == [
        "image",
        "patient_id",
        "label",
        "pred",
        "prob_benign",
        "prob_malignant",
    ]
    assert np.allclose(predictions[["prob_benign", "prob_malignant"]].sum(axis=1), 1.0, atol=1e-5)
    assert len(predictions) == metrics["n_test"]
    assert predictions["image"].str.contains("crops.npy#").all()  # the source's own references
    html = (run_dir / "report.html").read_text()
    assert "phantom rendered from real LIDC-IDRI annotations" in html
    assert "65.57" in html and html.count("data:image/png;base64,") >= 8
    for name in ("gradcam", "lime", "retrieval", "outliers", "reliability", "confusion_matrix", "roc"):
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 1000
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "custom_cnn.csv").is_file()


def test_export_round_trip_matches_keras(smoke_run, tmp_path):
    from lungnet.data.preprocessing import preprocess_image
    from lungnet.runs import load_run_config
    from lungnet.serving.export import export_run

    run_dir, _ = smoke_run
    path = export_run(run_dir, out=tmp_path / "saved")
    served = tf.saved_model.load(str(path))
    rng = np.random.default_rng(0)
    raw_hu = rng.uniform(-1000, 400, size=(3, 90, 90)).astype(np.float32)
    out = served.signatures["serving_default"](images=tf.constant(raw_hu))["probabilities"].numpy()
    model = keras.models.load_model(run_dir / "models" / "custom_cnn.keras")
    config = load_run_config(run_dir)
    p = model.predict(preprocess_image(tf.constant(raw_hu)[..., None], config.data.preprocess), verbose=0)
    np.testing.assert_allclose(out, np.concatenate([1 - p, p], axis=1), atol=1e-5)
    uint8 = served.signatures["serving_uint8"](
        images=tf.constant(rng.integers(0, 255, (2, 64, 64), np.uint8))
    )
    assert uint8["probabilities"].shape == (2, 2)
    assert json.loads((path / "lungnet.json").read_text())["class_names"] == ["benign", "malignant"]
    # bad input: refused with a message saying what the signature takes; an empty batch is an empty answer
    serve = served.signatures["serving_default"]
    assert serve(images=tf.zeros([0, 90, 90]))["probabilities"].shape == (0, 2)
    assert served.signatures["serving_uint8"](images=tf.zeros([0, 9, 9], tf.uint8))[
        "probabilities"
    ].shape == (0, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected \[batch, height, width\]"):
        serve(images=tf.zeros([2, 90, 90, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected \[batch, height, width\]"):
        serve(images=tf.zeros([90]))
    for bad in (np.nan, np.inf):
        image = raw_hu[:1].copy()
        image[0, 5, 5] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or infinite pixels"):
            serve(images=tf.constant(image))


def test_evaluate_on_another_dataset(smoke_run, tmp_path, capsys):
    import cv2

    run_dir, _ = smoke_run
    rows = []
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"n{i}.png"), np.full((50, 50), 20 * i, np.uint8))
        rows.append(
            {
                "image": f"n{i}.png",
                "patient_id": f"P{i}",
                "malignancy": 1 + (i % 2) * 4,
                "diameter_mm": 4.0 + 10 * (i % 2) + 0.1 * i,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "external.csv", index=False)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "external.csv"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["split"] == "all samples"
    # the run's own calibration (fitted on its validation split) applied to this set
    recorded = json.loads((run_dir / "metrics.json").read_text())["models"][metrics["model"]]["calibration"]
    assert metrics["calibration"]["temperature"] == recorded["temperature"]
    assert 0 <= metrics["calibration"]["ece_after"] <= 1
    low, high = metrics["calibration"]["ece_after_ci95"]  # patient bootstrap over this set's 8 patients
    assert 0 <= low <= high <= 1
    assert f"{low:.3f} .. {high:.3f}" in (out / "report.html").read_text()
    assert len(pd.read_csv(out / "predictions.csv")) == 8 and (out / "report.html").is_file()
    # the run's own size-only fit on this set's diameters, and the network against it on the same patients
    size_only = metrics["baselines"]["size_only"]
    assert size_only["n"] == 8 and size_only["auc"] == 1.0  # the diameters grow with the label here
    against = metrics["against_size_only"]["slice"]["auc"]
    assert against["b"] == 1.0 and against["difference"] == pytest.approx(metrics["auc"] - 1.0)
    assert "Against the diameter" in (out / "report.html").read_text()
    # without diameters the baseline is skipped with the reason, never a traceback
    pd.DataFrame(rows).drop(columns="diameter_mm").to_csv(tmp_path / "bare.csv", index=False)
    bare = tmp_path / "eval-bare"
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "bare.csv"), "--out", str(bare)]) == 0
    skipped = json.loads((bare / "metrics.json").read_text())["baselines"]["size_only"]["skipped"]
    assert "diameter_mm" in skipped
    capsys.readouterr()
    check_report(out / "report.html", tmp_path)


def test_report_renders_with_every_figure(smoke_run, tmp_path):
    check_report(smoke_run[0] / "report.html", tmp_path)


def test_compare_runs_reads_a_real_classification_record(smoke_run, tmp_path):
    run_dir, summary = smoke_run
    spread = check_spread_of_copies(run_dir, tmp_path, "slice AUC").set_index(["model", "metric"])
    assert spread.loc[(summary["selected_model"], "slice AUC"), "mean"] == pytest.approx(summary["auc"])


def test_a_run_with_another_seed_trains_differently_on_the_same_split(
    smoke_run, tmp_path, tiny_phantom_config
):
    run_dir, _ = smoke_run
    out = tmp_path / "seed3"
    cache = f"data.phantom.cache_dir={tiny_phantom_config.cache_dir}"
    assert (
        main(
            ["train", "binary_nodule", "--profile", "smoke", "--set", cache, "--seed", "3", "--out", str(out)]
        )
        == 0
    )
    record = compare_runs([run_dir, out], tmp_path / "spread")
    assert record["differences"] == {"data.seed": [0, 3], "training.seed": [0, 3]}
    first, second = (pd.read_csv(r / "predictions.csv") for r in (run_dir, out))
    assert first["image"].tolist() == second["image"].tolist()  # the same test rows
    assert not np.allclose(first.filter(like="prob_"), second.filter(like="prob_"))  # other weights


def test_bad_run_folders_give_clear_errors(tmp_path, smoke_run, capsys):
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), "--data", "lidc-phantom"]) == 2
    assert "not a lungnet run folder" in capsys.readouterr().err
    run_dir, _ = smoke_run
    assert main(["export", str(run_dir), "--model", "resnet"]) == 2
    assert "no trained model 'resnet'" in capsys.readouterr().err


def test_training_resumes_after_interruption(tmp_path):
    from lungnet.training.fit import TrainingConfig, train_phase

    x = np.random.default_rng(0).uniform(size=(16, 16, 16, 1)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(16) % 2]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def model():
        inputs = keras.Input((16, 16, 1))
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    config = TrainingConfig(verbose=0, early_stopping_patience=10)
    original_fit = keras.Model.fit

    def interrupted_fit(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], Interrupt()]
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = interrupted_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            train_phase(
                model(), ds, ds, run_dir=tmp_path, phase="p", epochs=4, learning_rate=1e-3, config=config
            )
    finally:
        keras.Model.fit = original_fit
    assert not (tmp_path / "phases.json").exists()
    summary = train_phase(
        model(), ds, ds, run_dir=tmp_path, phase="p", epochs=4, learning_rate=1e-3, config=config
    )
    log = pd.read_csv(tmp_path / "logs" / "p.csv")
    assert list(log["epoch"]) == [0, 1, 2, 3]  # epochs 0-1 before the interruption, 2-3 after the resume
    assert summary["epochs_run"] == 4
    again = train_phase(
        model(), ds, ds, run_dir=tmp_path, phase="p", epochs=4, learning_rate=1e-3, config=config
    )
    assert again["resumed"].startswith("skipped")


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    from lungnet.training.fit import load_checkpoint

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    small.save_weights(tmp_path / "small.weights.h5")
    big = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    with pytest.raises(LungnetError, match="checkpoint does not fit model"):
        load_checkpoint(big, tmp_path / "small.weights.h5")


def test_set_overrides_reach_the_config():
    from lungnet.studies.runner import parse_overrides

    overrides = parse_overrides(
        ["data.grouping=exclude-indeterminate", "training.epochs=3", "data.split=[0.6,0.2,0.2]"]
    )
    assert overrides == {
        "data": {"grouping": "exclude-indeterminate", "split": [0.6, 0.2, 0.2]},
        "training": {"epochs": 3},
    }
    config = load_experiment(resolve_experiment_path("binary-nodule"), profile="smoke", overrides=overrides)
    assert config.data.grouping == "exclude-indeterminate" and config.training.epochs == 3
    with pytest.raises(Exception, match="expected KEY=VALUE"):
        parse_overrides(["grouping"])
    with pytest.raises(Exception, match=r"unknown key\(s\) \['epoch'\]"):
        load_experiment(resolve_experiment_path("binary_nodule"), overrides={"training": {"epoch": 3}})


def test_seed_sets_every_training_seed_and_keeps_the_split(tmp_path):
    from lungnet.studies.runner import prepare_config, prepare_run

    config = prepare_config("binary-nodule", profile="cpu-real-folds", seed=5)
    assert (config.data.seed, config.training.seed, config.data.split_seed) == (5, 5, 0)
    measured = config.measured_nodule.overrides  # its segmenter's seeds, beside the profile's own overrides
    assert measured["data"]["seed"] == 5 and measured["training"] == {"max_minutes": 25, "seed": 5}
    segmentation = prepare_config("attention-unet", profile="smoke", seed=7)
    assert (segmentation.data.seed, segmentation.training.seed) == (7, 7)
    inf_net = prepare_config("inf-net", profile="smoke", seed=3)
    assert (
        inf_net.training.seed == 3
        and inf_net.labels.seed == prepare_config("inf-net", profile="smoke").labels.seed
    )
    with pytest.raises(ConfigError, match="give the seed once"):
        prepare_config("binary-nodule", profile="smoke", seed=5, assignments=["training.seed=1"])
    with pytest.raises(ConfigError, match="--seed -1"):
        prepare_config("binary-nodule", profile="smoke", seed=-1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(to_dict(prepare_config("binary-nodule", profile="smoke")))
    )
    with pytest.raises(ConfigError, match="--seed"):
        prepare_run(None, resume=run, seed=5)


@pytest.mark.parametrize(
    ("name", "grouping", "view", "crop"),
    [
        ("binary-nodule", "paper", "crop", 96),
        ("binary-full", "paper", "full", None),
        ("five-class-nodule", "5class", "crop", 96),
        ("five-class-full", "5class", "full", None),
    ],
)
def test_the_four_columns_of_the_study(name, grouping, view, crop):
    config = load_experiment(resolve_experiment_path(name), profile="default")
    assert (config.data.grouping, config.data.view, config.data.preprocess.center_crop) == (
        grouping,
        view,
        crop,
    )
    assert set(config.published) == {"custom_cnn", "efficientnet_b2_transfer", "efficientnet_b2_finetuned"}


@pytest.mark.slow  # XLA compilation takes ~30-60 s on 2 cores
def test_mixed_precision_and_xla_switches_run_on_cpu(tmp_path):
    from lungnet.models import build_classifier
    from lungnet.training.fit import TrainingConfig, set_global_options, train_phase

    config = TrainingConfig(mixed_precision=True, xla=True, verbose=0, steps_per_epoch=1)
    set_global_options(config)
    try:
        model = build_classifier(
            {"name": "custom_cnn", "filters": [4, 4, 4, 4], "dense_units": 4}, (16, 16, 3), 2
        )
        assert model.get_layer("block1_conv").compute_dtype == "float16"
        assert model.output.dtype == "float32"  # the probabilities stay float32
        x = np.random.default_rng(0).uniform(size=(8, 16, 16, 3)).astype("float32")
        ds = tf.data.Dataset.from_tensor_slices((x, np.eye(2, dtype="float32")[np.arange(8) % 2])).batch(4)
        summary = train_phase(
            model, ds, ds, run_dir=tmp_path, phase="p", epochs=1, learning_rate=1e-3, config=config
        )
        assert np.isfinite(summary["best_val_loss"])
    finally:
        set_global_options(TrainingConfig())


def test_models_without_weights_are_skipped_or_fail_as_configured(tmp_path, tiny_phantom_config, monkeypatch):
    from lungnet.models import WeightsUnavailableError
    from lungnet.studies import classification

    real_build = classification.build_classifier

    def offline_build(config, *args):
        if config.name == "efficientnet_b2" and config.weights == "imagenet":
            raise WeightsUnavailableError("EfficientNetB2 ImageNet weights could not be downloaded (offline)")
        return real_build(config, *args)

    monkeypatch.setattr(classification, "build_classifier", offline_build)
    efficientnet = {"name": "efficientnet_b2", "model": {"name": "efficientnet_b2"}, "fine_tune": True}
    tiny_cnn = {
        "name": "custom_cnn",
        "model": {"name": "custom_cnn", "filters": [4, 4, 8, 8], "dense_units": 8},
    }
    overrides = {
        "data": {"phantom": {"cache_dir": tiny_phantom_config.cache_dir}},
        "models": [tiny_cnn, {**efficientnet, "if_weights_unavailable": "skip"}],
        "evaluation": {"explain": False, "tta": False},
    }
    config = load_experiment(resolve_experiment_path("binary_nodule"), profile="smoke", overrides=overrides)
    summary = run_classification_study(config, tmp_path / "skip", progress=False)
    assert list(summary["models"]) == ["custom_cnn"]
    assert "ImageNet weights could not be downloaded" in summary["skipped_models"]["efficientnet_b2"]
    assert "efficientnet_b2: not trained" in (tmp_path / "skip" / "report.html").read_text()

    overrides["models"] = [{**efficientnet, "if_weights_unavailable": "error"}]
    config = load_experiment(resolve_experiment_path("binary_nodule"), profile="smoke", overrides=overrides)
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded"):
        run_classification_study(config, tmp_path / "error", progress=False)


def test_serve_config_layout_and_both_clients_against_the_signature(smoke_run, tmp_path):
    from tensorflow_serving.apis import predict_pb2

    from lungnet.serving.client import (
        grpc_request,
        parse_grpc_response,
        parse_rest_response,
        rest_request,
        rest_url,
    )

    run_dir, _ = smoke_run
    out = tmp_path / "serving"
    assert main(["serve-config", str(run_dir), str(run_dir), "--out", str(out)]) == 0
    config = (out / "models.config").read_text()
    assert "name: 'binary_nodule'" in config and "name: 'binary_nodule_2'" in config
    assert "base_path: '/models/binary_nodule'" in config and config.startswith("model_config_list {")
    served = tf.saved_model.load(str(out / "binary_nodule" / "1"))
    images = np.random.default_rng(1).uniform(-1000, 400, (2, 70, 70)).astype(np.float32)
    expected = served.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()

    # REST: what a server does with the body (columnar inputs to the named signature), then the reply
    body = json.loads(json.dumps(rest_request(images)))
    assert body["signature_name"] == "serving_default" and set(body["inputs"]) == {"images"}
    signature = served.signatures[body["signature_name"]]
    outputs = signature(**{k: tf.constant(np.asarray(v, np.float32)) for k, v in body["inputs"].items()})
    reply = json.dumps({"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}})
    np.testing.assert_allclose(parse_rest_response(reply), expected, atol=1e-6)
    assert rest_url("h", "binary_nodule") == "http://h:8501/v1/models/binary_nodule:predict"
    with pytest.raises(DataError, match="refused"):
        parse_rest_response({"error": "bad input"})
    assert rest_request(images.astype(np.uint8))["signature_name"] == "serving_uint8"

    # gRPC: the PredictRequest's tensors, through the signature, back as a PredictResponse
    request = grpc_request("binary_nodule", images, version=1)
    assert request.model_spec.name == "binary_nodule" and request.model_spec.version.value == 1
    signature = served.signatures[request.model_spec.signature_name]
    outputs = signature(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    np.testing.assert_allclose(parse_grpc_response(response), expected, atol=1e-6)
    with pytest.raises(DataError, match="pixel_spacing_mm"):
        rest_request(images, spacing=[0.7])
