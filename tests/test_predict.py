"""`lungnet predict`'s choice of model and its errors (the end-to-end prediction on a trained run is checked
in tests/test_measured_nodule.py, which trains the run it needs)."""

import pytest

from lungnet.errors import ConfigError, LungnetError
from lungnet.experiment import load_experiment, resolve_experiment_path
from lungnet.runs import save_config
from lungnet.studies.predict import chosen_row, predict_classification_run


def recorded(image_only: bool) -> dict:
    row = {"val": {"f1": 0.9}, "calibration": None}
    out = {
        "selected_model": "cnn",
        "selection": "best validation F1",
        "models": {"cnn": {"val": {"f1": 0.8}, "test": {}}},
    }
    if image_only:
        out["image_only"] = {"measured_nodule": row, "mean of measured_nodule and cnn": {"val": {"f1": 0.7}}}
    return out


def test_the_default_is_the_recommended_model_or_else_the_selected_network():
    assert chosen_row(recorded(True), None)[0] == "measured_nodule"
    assert chosen_row(recorded(False), None) == ("cnn", "best validation F1")
    assert chosen_row(recorded(True), "mean of measured_nodule and cnn")[1] == "named with --model"
    with pytest.raises(LungnetError, match=r"--model 'effnet'.*\['cnn', 'mean of measured_nodule and cnn'"):
        chosen_row(recorded(True), "effnet")


def test_a_segmentation_run_is_refused_with_what_to_use_instead(tmp_path):
    save_config(tmp_path, load_experiment(resolve_experiment_path("attention_unet")))
    with pytest.raises(ConfigError, match="takes a classification run; this is a segmentation run"):
        predict_classification_run(tmp_path, "unused.csv")
