"""The real-CT recipes' training parts: seed ensembles, the wall-clock budget, the monitor check, the
5-class macro-F1 metric, and the profiles that use them."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungnet.errors import ConfigError
from lungnet.experiment import ModelSpec, load_experiment, resolve_experiment_path
from lungnet.models.ensemble import average_ensemble, ensemble_members, first_member
from lungnet.training.fit import TrainingConfig, train_phase, unconverged_phases


def tiny_data(n: int = 16, classes: int = 2):
    x = np.random.default_rng(0).uniform(size=(n, 16, 16, 1)).astype("float32")
    y = np.eye(classes, dtype="float32")[np.arange(n) % classes]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def tiny_model(units: int = 1):
    inputs = keras.Input((16, 16, 1), name="image")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    activation = "sigmoid" if units == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Dense(units, activation=activation, name="probabilities")(h))


def test_the_time_budget_stops_before_an_epoch_that_would_overrun(tmp_path):
    ds = tiny_data()
    config = TrainingConfig(verbose=0, max_minutes=1e-6, early_stopping_patience=10)
    summary = train_phase(
        tiny_model(), ds, ds, run_dir=tmp_path, phase="p", epochs=5, learning_rate=1e-3, config=config
    )
    assert summary["epochs_run"] == 1 and summary["stopped_by_time_budget"]
    assert summary["wall_seconds"] >= 0
    with pytest.raises(ConfigError, match="max_minutes: 0 must be > 0"):
        TrainingConfig(max_minutes=0)


def test_a_budget_that_cuts_training_while_validation_improves_is_reported(tmp_path):
    ds = tiny_data()
    cut = TrainingConfig(verbose=0, max_minutes=1e-6, early_stopping_patience=10)
    segmenter = tmp_path / "segmenter"  # a nested run, as a measured-nodule run's segmenter
    summary = train_phase(
        tiny_model(), ds, ds, run_dir=segmenter, phase="unet", epochs=5, learning_rate=1e-3, config=cut
    )
    assert summary["cut_while_improving"]  # its best epoch is its only one, inside the patience
    unhurried = TrainingConfig(verbose=0, early_stopping_patience=10)
    summary = train_phase(
        tiny_model(), ds, ds, run_dir=tmp_path, phase="cnn", epochs=2, learning_rate=1e-3, config=unhurried
    )
    assert not summary["stopped_by_time_budget"] and not summary["cut_while_improving"]
    (line,) = unconverged_phases(tmp_path)
    assert line.startswith(
        "segmenter/unet: its time budget stopped it after 1 epoch, 0 after its best val_loss (epoch 1), before "
        "early stopping would have"
    )


def test_a_monitor_the_model_does_not_report_is_named(tmp_path):
    ds = tiny_data()
    config = TrainingConfig(verbose=0, monitor="val_acuracy")
    with pytest.raises(ConfigError, match=r"'val_acuracy' is not a validation value.*'val_accuracy'"):
        train_phase(
            tiny_model(), ds, ds, run_dir=tmp_path, phase="p", epochs=2, learning_rate=1e-3, config=config
        )


def test_multi_class_models_report_macro_f1_for_early_stopping(tmp_path):
    ds = tiny_data(classes=5, n=20)
    config = TrainingConfig(verbose=0, monitor="val_f1_macro")
    summary = train_phase(
        tiny_model(5), ds, ds, run_dir=tmp_path, phase="p", epochs=2, learning_rate=1e-3, config=config
    )
    assert summary["monitor"] == "val_f1_macro" and 0 <= summary["best_monitor"] <= 1


def test_an_ensemble_is_the_mean_of_its_members():
    members = [tiny_model(), tiny_model()]
    ensemble = average_ensemble(members, "cnn")
    x = np.random.default_rng(1).uniform(size=(4, 16, 16, 1)).astype("float32")
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, atol=1e-6)
    assert [m.name for m in ensemble_members(ensemble)] == ["member_1", "member_2"]
    assert first_member(ensemble).name == "member_1" and first_member(members[0]) is members[0]
    assert ensemble.output.name.startswith("probabilities") or ensemble.layers[-1].name == "probabilities"


def test_ensemble_settings_are_checked():
    model = {"name": "custom_cnn"}
    with pytest.raises(ConfigError, match="ensemble: 0 must be an integer >= 1"):
        load_experiment(
            resolve_experiment_path("binary_nodule"),
            profile="smoke",
            overrides={"models": [{"name": "cnn", "model": model, "ensemble": 0}]},
        )
    with pytest.raises(ConfigError, match="with fine_tune is not supported"):
        ModelSpec(name="cnn", model=None, fine_tune=True, ensemble=2)


def test_the_real_ct_profiles_keep_the_published_settings_apart():
    real = load_experiment(resolve_experiment_path("binary_nodule"), profile="cpu-real-2.5d")
    pre = real.data.preprocess
    assert real.data.neighbour_slices and (pre.pixel_spacing_mm, pre.center_crop, pre.image_size) == (
        0.75,
        64,
        64,
    )
    assert real.models[0].ensemble == 3 and real.training.monitor == "val_auc" and real.data.augment.zoom == 0
    full = load_experiment(resolve_experiment_path("binary_nodule"), profile="full")
    assert not full.data.neighbour_slices and full.data.preprocess.pixel_spacing_mm is None
    assert full.data.preprocess.center_crop == 96 and full.models[0].ensemble == 1
    five = load_experiment(resolve_experiment_path("five_class_nodule"), profile="cpu-real-2.5d")
    assert (
        five.training.monitor == "val_f1_macro"
        and five.data.neighbour_slices
        and five.data.grouping == "5class"
    )
    seg = load_experiment(resolve_experiment_path("attention_unet"), profile="cpu-real-budget")
    assert seg.evaluation.tta and seg.training.monitor == "val_iou" and seg.training.max_minutes == 20
    longer = load_experiment(resolve_experiment_path("attention_unet"), profile="cpu-real-augmented")
    augment = longer.data.augment
    assert augment.elastic > 0 and augment.grid_distortion > 0 and augment.coarse_dropout == 4
    assert (longer.training.epochs, longer.training.lr_schedule, longer.training.max_minutes) == (
        40,
        "plateau",
        28,
    )
    assert longer.loss == seg.loss and [m.model for m in longer.models] == [m.model for m in seg.models]


def test_the_measured_classifier_trains_its_segmenter_with_the_longer_recipe(tmp_path):
    from lungnet.studies.measured_segmenter import segmenter_config

    real = load_experiment(resolve_experiment_path("binary_nodule"), profile="cpu-real-measured")
    seg = segmenter_config(real.measured_nodule, tmp_path / "segmenter_manifest.csv", real.data.view)
    assert [m.name for m in seg.models] == ["unet"] and seg.data.split_level == "manifest"
    assert seg.data.view == real.data.view == "crop"  # it outlines what the classifier reads
    assert seg.data.augment.elastic > 0 and seg.training.lr_schedule == "plateau"
    assert seg.training.max_minutes == 25 and not seg.evaluation.intensity_test


def smoke_ensemble(phantom, evaluation: dict, **spec):
    """The smoke profile on the tiny phantom with a 2-member custom CNN ensemble (`spec`: more fields)."""
    model = {"name": "custom_cnn", "model": {"name": "custom_cnn", "filters": [4, 4, 8, 8]}, "ensemble": 2}
    return load_experiment(
        resolve_experiment_path("binary_nodule"),
        profile="smoke",
        overrides={
            "data": {"phantom": {"cache_dir": phantom.cache_dir}},
            "models": [{**model, **spec}],
            "evaluation": evaluation,
        },
    )


def test_an_ensemble_run_trains_each_member_and_saves_one_model(tmp_path, tiny_phantom_config):
    from lungnet.studies.classification import run_classification_study

    config = smoke_ensemble(
        tiny_phantom_config,
        evaluation={"explain": True, "outliers": False, "lime_samples": 20, "explain_samples": 2},
    )
    summary = run_classification_study(config, tmp_path, progress=False)
    training = json.loads((tmp_path / "metrics.json").read_text())["models"]["custom_cnn"]["training"]
    assert training["ensemble"] == 2 and [m["seed"] for m in training["members"]] == [0, 1]
    phases = json.loads((tmp_path / "phases.json").read_text())
    assert set(phases) == {"custom_cnn_member1", "custom_cnn_member2"}
    model = keras.models.load_model(tmp_path / "models" / "custom_cnn.keras")
    assert len(ensemble_members(model)) == 2 and summary["selected_model"] == "custom_cnn"
    assert (tmp_path / "figures" / "gradcam.png").is_file()  # explained through its first member


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_patient_folds_keep_each_patient_in_one_fold_with_every_class_in_each():
    import pandas as pd

    from lungnet.data.splits import patient_folds
    from lungnet.errors import DataError

    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(30)], 3)
    frame = pd.DataFrame({"patient_id": patients, "target": rng.integers(0, 2, len(patients))})
    folds = patient_folds(frame, 5, seed=0)
    assert set(folds) == set(range(5))
    assert (frame.assign(fold=folds).groupby("patient_id")["fold"].nunique() == 1).all()
    for fold in range(5):
        assert set(frame.loc[folds == fold, "target"]) == {0, 1}
    assert not np.array_equal(folds, patient_folds(frame, 5, seed=1))  # the seed shuffles patients
    with pytest.raises(DataError, match="3 patients cannot make 5 patient folds"):
        patient_folds(frame[frame["patient_id"].isin(["p0", "p1", "p2"])], 5)
    one_malignant = frame.assign(target=(frame["patient_id"] == "p0").astype(int))
    with pytest.raises(DataError, match="has no row of class"):
        patient_folds(one_malignant, 5)


def test_fold_ensemble_settings_are_checked():
    with pytest.raises(ConfigError, match="patient-folds needs ensemble >= 2"):
        ModelSpec(name="cnn", model=None, ensemble_validation="patient-folds")
    model = {"name": "custom_cnn"}
    with pytest.raises(ConfigError, match="data.reader_targets gives training rows other targets"):
        load_experiment(
            resolve_experiment_path("binary_nodule"),
            profile="smoke",
            overrides={
                "data": {"reader_targets": True},
                "models": [
                    {"name": "cnn", "model": model, "ensemble": 2, "ensemble_validation": "patient-folds"}
                ],
            },
        )
    folds = load_experiment(resolve_experiment_path("binary_nodule"), profile="cpu-real-folds")
    measured = load_experiment(resolve_experiment_path("binary_nodule"), profile="cpu-real-measured")
    assert folds.models[0].ensemble_validation == "patient-folds" and folds.models[0].ensemble == 5
    # the same recipe but for where the members stop
    assert dataclasses.replace(folds.models[0], ensemble_validation="split") == measured.models[0]
    training_folds = load_experiment(
        resolve_experiment_path("binary_nodule"), profile="cpu-real-training-folds"
    )
    assert training_folds.models[0] == dataclasses.replace(
        folds.models[0], ensemble_validation="training-folds"
    )
    assert (training_folds.data, training_folds.training) == (folds.data, folds.training)
    assert (folds.data, folds.training, folds.measured_nodule) == (
        measured.data,
        measured.training,
        measured.measured_nodule,
    )


def fold_ensemble(phantom, validation: str):
    """(config, prepared data) of a 2-member fold ensemble on the tiny phantom, without explanations."""
    from lungnet.data.dataset import prepare_data

    config = smoke_ensemble(
        phantom,
        evaluation={"explain": False, "outliers": False, "tta": False},
        ensemble_validation=validation,
    )
    return config, prepare_data(config.data, progress=False)


def test_a_fold_ensemble_stops_each_member_on_patients_it_never_trains_on(tmp_path, tiny_phantom_config):
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from lungnet.data.splits import patient_folds
    from lungnet.evaluation import cross_fitted_size_only
    from lungnet.studies.classification import HeldOut, _member_data, run_classification_study

    config, data = fold_ensemble(tiny_phantom_config, "patient-folds")
    pool = data.manifest[data.manifest["split"] != "test"].reset_index(drop=True)
    folds = patient_folds(pool, 2)
    for fold in (0, 1):
        member = _member_data(data, pool, folds, fold)
        trained_on = set(member.train_manifest["patient_id"])
        held = set(pool.loc[folds == fold, "patient_id"])
        assert trained_on.isdisjoint(held) and trained_on | held == set(pool["patient_id"])
        assert member.train_manifest["augment_copy"].any()  # balanced like the training split
        assert sum(len(x) for x, _ in member.val) == (folds == fold).sum()

    run_classification_study(config, tmp_path, progress=False)
    record = json.loads((tmp_path / "metrics.json").read_text())["models"]["custom_cnn"]
    where = "out-of-fold (2 patient folds of training + validation)"
    assert record["training"]["stopped_on"] == where
    assert sum(m["fold_patients"] for m in record["training"]["members"]) == pool["patient_id"].nunique()
    assert record["calibration"]["fitted_on"] == where and record["threshold_from_val"]["chosen_on"] == where
    assert where in (tmp_path / "report.html").read_text()
    held_out = pd.read_csv(tmp_path / "out_of_fold_custom_cnn.csv")
    assert len(held_out) == len(pool) and set(held_out["split"]) == {"train", "val"}
    # the saved table reads back as the rows' folds and probabilities (the analysis scripts use it)
    read_back = HeldOut.from_table(pool, held_out, data.class_names)
    np.testing.assert_array_equal(read_back.fold, folds)
    assert read_back.probs[:, 1] == pytest.approx(held_out["prob_malignant"].to_numpy())
    for member, rows in held_out.groupby("member"):  # each slice predicted by the member of its fold
        assert set(rows["patient_id"]) == set(pool.loc[folds == member - 1, "patient_id"])
    # the model's validation score is its out-of-fold predictions of the validation slices
    val = held_out[held_out["split"] == "val"]
    assert record["val"]["auc"] == pytest.approx(
        roc_auc_score(val["label"] == "malignant", val["prob_malignant"])
    )
    # out of fold, against the diameter fitted without each fold's patients, on all the pooled patients
    against = record["out_of_fold_against_size_only"]
    assert against["predictions"] == where and against["slice"]["n_patients"] == pool["patient_id"].nunique()
    is_malignant = held_out["label"] == "malignant"
    assert against["slice"]["auc"]["a"] == pytest.approx(
        roc_auc_score(is_malignant, held_out["prob_malignant"])
    )
    size = cross_fitted_size_only(
        pool["diameter_mm"], pool["target"], held_out["member"] - 1, data.class_names
    )
    assert against["slice"]["auc"]["b"] == pytest.approx(roc_auc_score(is_malignant, size[:, 1]))
    assert "Out of fold, on every patient in the fold ensemble" in (tmp_path / "report.html").read_text()


def test_training_folds_keep_validation_outside_every_member_and_tune_on_it(tmp_path, tiny_phantom_config):
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from lungnet.inference import predict_proba
    from lungnet.runs.artifacts import load_run_model
    from lungnet.studies.classification import run_classification_study

    config, data = fold_ensemble(tiny_phantom_config, "training-folds")
    training = data.split("train")
    run_classification_study(config, tmp_path, progress=False)
    record = json.loads((tmp_path / "metrics.json").read_text())["models"]["custom_cnn"]
    assert record["training"]["stopped_on"] == "out-of-fold (2 patient folds of training)"
    members = record["training"]["members"]
    assert sum(m["fold_patients"] for m in members) == training["patient_id"].nunique()
    # validation is the averaged model's, as test is: it chooses the threshold and fits the calibration
    assert record["calibration"]["fitted_on"] == "validation"
    assert record["threshold_from_val"]["chosen_on"] == "validation"
    model, _ = load_run_model(tmp_path, "custom_cnn")
    val_probs = predict_proba(model, data.val)
    y_val = data.split("val")["target"].to_numpy()
    assert record["val"]["auc"] == pytest.approx(roc_auc_score(y_val, val_probs[:, 1]), abs=1e-6)
    held_out = pd.read_csv(tmp_path / "out_of_fold_custom_cnn.csv")
    assert set(held_out["split"]) == {"train"} and len(held_out) == len(training)
    against = record["out_of_fold_against_size_only"]
    assert against["slice"]["n_patients"] == training["patient_id"].nunique()


def test_the_mean_with_a_fold_ensemble_is_calibrated_on_both_models_held_out_rows():
    import pandas as pd

    from lungnet.studies.classification import HeldOut, mean_calibration_data

    # pooled rows in manifest order; the measured classifier's come as training rows, then validation's
    frame = pd.DataFrame({"split": ["train", "val", "train", "val"], "target": [0, 1, 1, 0]})
    network = HeldOut(
        frame, np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]]), np.array([0, 1, 1, 0])
    )
    measured = (np.array([[0.5, 0.5], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]]), np.array([0, 1, 1, 0]), "cf")
    probs, y, description = mean_calibration_data(measured, network)
    # rows: train 1, train 2, val 1, val 2
    np.testing.assert_allclose(probs, [[0.7, 0.3], [0.25, 0.75], [0.25, 0.75], [0.65, 0.35]])
    assert y.tolist() == [0, 1, 1, 0] and description == f"mean of cf and {network.description}"
    assert mean_calibration_data(None, network) is None and mean_calibration_data(measured, None) is None
    # folds of training patients only: the mean is calibrated on validation, where both are averages
    train_only = HeldOut(frame.iloc[[0, 2]], network.probs[[0, 2]], np.array([0, 1]))
    assert not train_only.covers_validation and mean_calibration_data(measured, train_only) is None


def test_image_only_rows_are_judged_against_the_diameter_on_the_fold_ensembles_patients():
    import types

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from lungnet.errors import DataError
    from lungnet.evaluation import cross_fitted_size_only
    from lungnet.studies.classification import HeldOut, held_out_against_size_only

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 2)
    target = rng.integers(0, 2, 40)[patients]
    # pooled rows in manifest order, training and validation patients interleaved
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{p}" for p in patients],
            "nodule_id": [f"P{p}/0" for p in patients],
            "split": np.where(patients % 3 == 0, "val", "train"),
            "target": target,
            "diameter_mm": 6 + 8 * target + rng.uniform(0, 8, len(patients)),
        }
    )
    folds = patients % 4
    network = HeldOut(frame, np.full((len(frame), 2), 0.5), folds)
    ordered = frame.iloc[
        np.r_[np.flatnonzero(frame["split"] == "train"), np.flatnonzero(frame["split"] == "val")]
    ]
    p = np.clip(0.3 + 0.4 * ordered["target"].to_numpy() + rng.normal(0, 0.2, len(frame)), 0, 1)
    held = (np.c_[1 - p, p], ordered["target"].to_numpy(), "cross-fitted measured classifier")
    data = types.SimpleNamespace(class_names=["benign", "malignant"])

    result = held_out_against_size_only(data, held, network)
    assert result["predictions"] == "cross-fitted measured classifier"
    assert {"slice", "nodule", "patient"} <= set(result) and result["patient"]["n"] == 40
    y = ordered["target"].to_numpy()
    assert result["slice"]["auc"]["a"] == pytest.approx(roc_auc_score(y, p))
    # the diameter is cross-fitted over the fold ensemble's folds, carried with each row
    size = cross_fitted_size_only(ordered["diameter_mm"], y, folds[ordered.index], data.class_names)
    assert result["slice"]["auc"]["b"] == pytest.approx(roc_auc_score(y, size[:, 1]))
    assert held_out_against_size_only(data, None, network) is None
    assert held_out_against_size_only(data, held, None) is None
    with pytest.raises(DataError, match="not the fold ensemble's rows"):
        held_out_against_size_only(data, (held[0], frame["target"].to_numpy()[::-1], "x"), network)
    # folds of training patients only: the held-out rows' training part, judged on those patients
    trained = (frame["split"] == "train").to_numpy()
    train_only = HeldOut(frame[trained].reset_index(drop=True), network.probs[trained], folds[trained])
    assert train_only.splits == ("train",) and "of training)" in train_only.description
    result = held_out_against_size_only(data, held, train_only)
    n_train = int(trained.sum())
    assert (
        result["slice"]["n"] == n_train and result["patient"]["n"] == frame[trained]["patient_id"].nunique()
    )
    assert result["slice"]["auc"]["a"] == pytest.approx(roc_auc_score(y[:n_train], p[:n_train]))
    assert result["predictions"] == "cross-fitted measured classifier: the training rows"


def test_a_classifier_that_segments_learns_from_masks_and_serves_probabilities(tmp_path, capsys):
    from test_physical_scale_and_neighbours import write_crops

    from lungnet.cli import main
    from lungnet.models import build_classifier
    from lungnet.models.classifiers.custom_cnn import CustomCNNConfig

    model = build_classifier(
        CustomCNNConfig(filters=(4, 4, 8, 8), dense_units=4, mask_head=True), (32, 32, 3), 2
    )
    assert set(model.output) == {"probabilities", "aux_mask"} and model.output["aux_mask"].shape[1:] == (
        16,
        16,
        1,
    )
    manifest = write_crops(tmp_path)
    run = tmp_path / "run"
    model_set = "models=[{name: cnn, model: {name: custom_cnn, filters: [4, 4, 8, 8], dense_units: 4, mask_head: true}}]"
    overrides = [
        "data.masks=true",
        "data.preprocess.pixel_spacing_mm=0.75",
        "data.preprocess.center_crop=32",
        "data.preprocess.image_size=32",
        "data.split=[0.5,0.25,0.25]",
        "training.monitor=val_probabilities_auc",
        "evaluation.explain=false",
        model_set,
    ]
    args = ["train", "binary_nodule", "--profile", "smoke", "--data", manifest, "--out", str(run)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    log = (run / "logs" / "cnn.csv").read_text().splitlines()[0]
    assert "val_aux_mask_loss" in log and "val_probabilities_auc" in log
    saved = keras.models.load_model(run / "models" / "cnn.keras")
    assert len(saved.outputs) == 1 and saved.output.shape[-1] == 1  # the run keeps probabilities only
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", manifest, "--out", str(out)]) == 0
    capsys.readouterr()
    # without data.masks the experiment says what is missing before anything trains
    assert main(args + ["--set", model_set, "--set", "evaluation.explain=false"]) == 2
    assert "set data.masks to true" in capsys.readouterr().err


def test_runs_record_their_command_and_wall_time(monkeypatch):
    from lungnet.studies.runner import command_line, format_duration

    monkeypatch.setattr("sys.argv", ["/x/.venv/bin/lungnet", "train", "binary_nodule", "--set", "a=b c"])
    assert command_line() == "lungnet train binary_nodule --set 'a=b c'"
    monkeypatch.setattr("sys.argv", ["/x/lungnet/cli.py", "evaluate", "RUN"])
    assert command_line() == "lungnet evaluate RUN"
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert command_line() is None
    assert format_duration(4229) == "70 min 29 s" and format_duration(58) == "58 s"


def test_plateau_schedule_halves_the_rate_when_the_monitor_stalls(tmp_path):
    ds = tiny_data()
    # a rate so small that val_loss moves less than ReduceLROnPlateau's min_delta: every epoch stalls
    config = TrainingConfig(
        verbose=0, lr_schedule="plateau", plateau_patience=1, plateau_factor=0.5, early_stopping_patience=10
    )
    model = tiny_model()
    train_phase(model, ds, ds, run_dir=tmp_path, phase="p", epochs=4, learning_rate=1e-7, config=config)
    log = __import__("pandas").read_csv(tmp_path / "logs" / "p.csv")
    assert log["learning_rate"].iloc[0] == pytest.approx(1e-7)
    halvings = np.log2(1e-7 / log["learning_rate"].to_numpy())
    assert halvings[-1] >= 1 and np.allclose(halvings, np.round(halvings), atol=1e-3)  # cut by 0.5 steps
    with pytest.raises(ConfigError, match="plateau_factor"):
        TrainingConfig(lr_schedule="plateau", plateau_factor=1.5)
