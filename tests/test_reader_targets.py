"""Reader targets: each nodule's share of readers on the malignant side as its training target, and the
nodules `exclude-indeterminate` leaves out (median 3) joining training, never from validation or test
patients."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from lungnet.cli import main
from lungnet.data.dataset import DataConfig, load_data_config, prepare_data
from lungnet.data.labels import excluded_rows, reader_soft_targets
from lungnet.data.pipelines import classification_dataset
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.errors import ConfigError, DataError
from lungnet.training.fit import HardLabelAUC

# per patient: the readers' ratings of its first nodule (median 1, 5 or 3 in turn); patients whose first
# nodule is rated 1 or 5 also have a second, median-3 nodule, so some of those are in validation or test
READERS = ("1;2;1", "5;4;4;5", "3;3;4;2", "2;1", "4;5", "3;4;3")
SECOND = "3;3;2"


def nodules_of(p: int) -> list[str]:
    first = READERS[p % len(READERS)]
    return [first, SECOND] if p % len(READERS) in (0, 1) else [first]


def write_rated_crops(folder, n_patients: int = 24) -> str:
    """A lidc-crops-style manifest with each reader's rating: three slices per nodule, a disc whose size
    follows the median rating."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        for n, readers in enumerate(nodules_of(p)):
            median = float(np.median([int(r) for r in readers.split(";")]))
            for s in range(3):
                image = rng.integers(0, 30, (48, 48)).astype(np.uint8)
                radius = int(2 * median) + s
                cv2.circle(image, (24, 24), radius, 200, -1)
                name = f"P{p}_n{n}_s{s}.png"
                cv2.imwrite(str(folder / name), image)
                rows.append(
                    {
                        "image": name,
                        "patient_id": f"P{p}",
                        "nodule_id": f"P{p}/n{n}",
                        "slice_index": s,
                        "malignancy_ratings": readers,
                        "malignancy_median": median,
                        "diameter_mm": 2.0 * radius * 0.7,
                        "pixel_spacing_mm": 0.7,
                    }
                )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_the_share_follows_each_groupings_rule():
    frame = pd.DataFrame({"malignancy_ratings": ["5;4;3;2", "3;3", "1", 4, None], "target": [1, 0, 0, 1, 1]})
    np.testing.assert_allclose(reader_soft_targets(frame, "paper"), [0.5, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(
        reader_soft_targets(frame, "exclude-indeterminate"), [0.625, 0.5, 0.0, 1.0, 1.0]
    )
    # without the column every row keeps its class
    np.testing.assert_allclose(reader_soft_targets(frame[["target"]], "paper"), [1, 0, 0, 1, 1])
    with pytest.raises(DataError, match=r"manifest row 1: malignancy_ratings '4;x'"):
        reader_soft_targets(pd.DataFrame({"malignancy_ratings": ["4", "4;x"], "target": [1, 1]}), "paper")
    with pytest.raises(DataError, match="'7;4' is not"):
        reader_soft_targets(pd.DataFrame({"malignancy_ratings": ["7;4"], "target": [1]}), "paper")
    with pytest.raises(DataError, match="binary grouping"):
        reader_soft_targets(frame, "5class")


def test_excluded_rows_are_the_median_threes_classed_by_their_readers():
    frame = pd.DataFrame(
        {"malignancy": [3.0, 3.0, 2.0, 3.0, 4.0], "malignancy_ratings": ["3;4;4;2", "3;2;3", "2", "", "4"]}
    )
    out = excluded_rows(frame, "exclude-indeterminate")
    assert out["malignancy_ratings"].tolist() == ["3;4;4;2", "3;2;3"]  # the unrated 3 has no target
    assert out["class_name"].tolist() == ["malignant", "benign"] and out["target"].tolist() == [1, 0]
    assert excluded_rows(frame, "paper").empty
    with pytest.raises(DataError, match="no 'malignancy_ratings' column"):
        excluded_rows(frame[["malignancy"]], "exclude-indeterminate")


def test_config_names_what_reader_targets_need():
    with pytest.raises(ConfigError, match="reader_targets: the readers' share .* binary grouping"):
        DataConfig(grouping="5class", reader_targets=True)
    with pytest.raises(ConfigError, match="train_on_excluded: .* not '5class'"):
        DataConfig(grouping="5class", train_on_excluded=True)
    with pytest.raises(ConfigError, match="reader_target"):
        load_data_config({"reader_target": True})  # a typo is named, not ignored


def test_excluded_nodules_train_but_validation_and_test_stay_as_they_were(tmp_path, capsys):
    manifest = write_rated_crops(tmp_path)
    common = dict(source=manifest, grouping="exclude-indeterminate", balance="none", augment=None)
    common["preprocess"] = PreprocessConfig(image_size=32, center_crop=None)
    plain = prepare_data(DataConfig(**common), progress=False)
    data = prepare_data(DataConfig(**common, reader_targets=True, train_on_excluded=True), progress=False)
    assert "join training" in capsys.readouterr().out
    # the split, the baselines' training rows and every val / test row are those without the options
    pd.testing.assert_frame_equal(data.manifest, plain.manifest)
    held_out = set(data.manifest.loc[data.manifest["split"] != "train", "patient_id"])
    train = data.train_manifest
    extra = train[train["malignancy"] == 3]
    assert len(extra) > 0 and not set(extra["patient_id"]) & held_out
    assert len(train) == len(plain.train_manifest) + len(extra)
    # patients with only median-3 nodules are in no split, so all of theirs join; of the others' median-3
    # nodules only the training patients' join
    only_threes = {f"P{p}" for p in range(24) if len(nodules_of(p)) == 1 and p % 6 in (2, 5)}
    with_second = {f"P{p}" for p in range(24) if len(nodules_of(p)) == 2}
    assert with_second & held_out  # so leaving held-out patients' nodules out is put to the test
    assert set(extra["patient_id"]) == only_threes | (with_second - held_out)
    assert len(extra) == 3 * len(set(extra["patient_id"]))
    labels = np.concatenate([y.numpy() for _, y in data.train])
    expected = reader_soft_targets(train, "exclude-indeterminate")
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)  # [1 - p, p], in shuffled order
    np.testing.assert_allclose(np.sort(labels[:, 1]), np.sort(expected), atol=1e-6)
    assert set(np.round(expected, 3)) == {0.0, 0.333, 0.5, 0.667, 1.0}  # "3;3;2", "3;3;4;2", "3;4;3"
    val_labels = np.concatenate([y.numpy() for _, y in data.val])
    assert set(val_labels.ravel()) == {0.0, 1.0}
    # without reader_targets the classified nodules keep their hard class; only the left-out ones are soft
    hard = prepare_data(DataConfig(**common, train_on_excluded=True), progress=False)
    pd.testing.assert_frame_equal(hard.manifest, plain.manifest)
    soft = hard.train_manifest.set_index("image")["soft_target"]
    classified = plain.train_manifest.set_index("image")["target"]
    np.testing.assert_array_equal(soft[classified.index], classified.astype(float))
    assert set(np.round(soft.drop(classified.index), 3)) == {0.333, 0.5, 0.667}


def test_a_soft_target_outside_0_1_is_named(tmp_path):
    manifest = pd.read_csv(write_rated_crops(tmp_path, 2))
    manifest["image"] = [str(tmp_path / i) for i in manifest["image"]]
    manifest["target"] = 0
    manifest["soft_target"] = 0.5
    manifest.loc[4, "soft_target"] = 1.5
    with pytest.raises(DataError, match="manifest row 4: soft_target 1.5 must be a probability"):
        classification_dataset(manifest, PreprocessConfig(image_size=32), num_classes=2, training=True)
    with pytest.raises(DataError, match="this pipeline has 3"):
        classification_dataset(
            manifest.assign(soft_target=0.5), PreprocessConfig(image_size=32), num_classes=3, training=True
        )


def test_the_training_auc_reads_soft_labels_by_their_class():
    auc = HardLabelAUC()
    y_true, y_pred = np.array([[0.25], [0.875], [0.0], [1.0]]), np.array([[0.05], [0.9], [0.1], [0.8]])
    auc.update_state(y_true, y_pred)
    assert float(auc.result()) == pytest.approx(1.0)
    plain = keras.metrics.AUC()  # Keras' own counts the 0.25 row as positive, and it ranks lowest
    plain.update_state(y_true, y_pred)
    assert float(plain.result()) == pytest.approx(2 / 3, abs=0.01)


def test_an_exclude_indeterminate_run_trains_on_reader_targets(tmp_path, capsys):
    manifest = write_rated_crops(tmp_path)
    overrides = [
        "data.grouping=exclude-indeterminate",
        "data.reader_targets=true",
        "data.train_on_excluded=true",
        "data.preprocess.image_size=32",
        "data.split=[0.5,0.25,0.25]",
        "evaluation.explain=false",
        "evaluation.outliers=false",
    ]
    run_dir = tmp_path / "run"
    args = ["train", "binary_nodule", "--profile", "smoke", "--data", manifest, "--out", str(run_dir)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    assert "join training" in capsys.readouterr().out
    predictions = pd.read_csv(next(run_dir.rglob("predictions.csv")))
    assert len(predictions) > 0 and (predictions["label"].isin(["benign", "malignant"])).all()
