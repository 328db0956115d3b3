"""The recommended model: the best validation F1 among the selected network and the image-only rows."""

from lungnet.evaluation.recommended import candidates, recommended_line, recommended_model, recommended_record


def summary(network_f1, measured_f1, mean_f1):
    def row(val_f1, auc):
        return {
            "auc": auc,
            "f1_macro": auc - 0.1,
            "val": {"f1": val_f1},
            "levels": {"nodule": {"auc": auc, "f1_macro": auc - 0.1}},
            "calibration": {"ece_before": 0.06, "ece_after": 0.04},
        }

    network = row(network_f1, 0.80)
    return {
        "selected_model": "cnn",
        "models": {"cnn": {"test": {k: network[k] for k in ("auc", "f1_macro")}, "val": network["val"]}},
        "levels": network["levels"],
        "against_size_only": {"slice": {}},
        "image_only": {
            "measured_nodule": row(measured_f1, 0.90),
            "mean of measured_nodule and cnn": row(mean_f1, 0.85),
        },
    }


def test_the_best_validation_f1_is_recommended_whatever_the_test_split_says():
    assert recommended_model(summary(0.70, 0.75, 0.72))["model"] == "measured_nodule"
    # the network is ahead on validation, so it is recommended though its test AUC is the lowest
    chosen = recommended_model(summary(0.80, 0.75, 0.72))
    assert chosen["model"] == "cnn"
    assert chosen["validation_f1"] == {
        "cnn": 0.80,
        "measured_nodule": 0.75,
        "mean of measured_nodule and cnn": 0.72,
    }


def test_a_tie_keeps_the_network_and_an_undefined_f1_is_never_chosen():
    assert recommended_model(summary(0.75, 0.75, 0.70))["model"] == "cnn"
    assert recommended_model(summary(None, 0.60, None))["model"] == "measured_nodule"
    assert recommended_model(summary(None, None, None))["model"] == "cnn"


def test_the_networks_record_gathers_its_levels_and_comparison_from_the_summary():
    s = summary(0.80, 0.75, 0.72)
    network = candidates(s)["cnn"]
    assert network["auc"] == 0.80 and network["levels"]["nodule"]["auc"] == 0.80
    assert network["against_size_only"] == {"slice": {}}
    s["recommended"] = {"model": "measured_nodule"}  # a recorded choice is read, not recomputed
    name, record = recommended_record(s)
    assert name == "measured_nodule" and record["auc"] == 0.90
    line = recommended_line(s)
    assert line.startswith("recommended model measured_nodule") and "nodule 0.900 / 0.800" in line
    assert "ECE 0.060 -> 0.040" in line
