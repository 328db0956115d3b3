"""Label groupings, patient-level splits and oversampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungnet.data.balancing import class_weights, oversample
from lungnet.data.labels import assign_labels, class_names
from lungnet.data.splits import split_manifest
from lungnet.errors import DataError


def _manifest(ratings, patients=None):
    n = len(ratings)
    return pd.DataFrame(
        {
            "image": [f"img{i}.png" for i in range(n)],
            "patient_id": patients if patients is not None else [f"P{i // 3:03d}" for i in range(n)],
            "malignancy": ratings,
        }
    )


def test_paper_grouping_is_ratings_1_to_3_vs_4_to_5():
    df = assign_labels(_manifest([1, 2, 3, 3.5, 4, 5]), "paper")
    assert df["class_name"].tolist() == ["benign"] * 3 + ["malignant"] * 3
    assert df["target"].tolist() == [0, 0, 0, 1, 1, 1]


def test_exclude_indeterminate_drops_rating_3():
    df = assign_labels(_manifest([1, 2.5, 3, 3.5, 5]), "exclude-indeterminate")
    assert df["malignancy"].tolist() == [1, 2.5, 3.5, 5]
    assert df["target"].tolist() == [0, 0, 1, 1]


def test_five_class_rounds_half_up():
    df = assign_labels(_manifest([1, 1.5, 2.4, 3, 4.5, 5]), "5class")
    assert df["class_name"].tolist() == ["1", "2", "2", "3", "5", "5"]
    assert df["target"].tolist() == [0, 1, 1, 2, 4, 4]


def test_label_names_without_ratings():
    df = pd.DataFrame(
        {
            "image": ["a", "b", "c"],
            "patient_id": ["1", "2", "3"],
            "label": ["benign", "Indeterminate", "malignant"],
        }
    )
    assert assign_labels(df, "paper")["target"].tolist() == [0, 0, 1]
    assert assign_labels(df, "exclude-indeterminate")["target"].tolist() == [0, 1]
    assert class_names("labels", df) == ("Indeterminate", "benign", "malignant")
    bad = df.assign(label=["benign", "cat", "malignant"])
    with pytest.raises(DataError, match="row 1 has label 'cat'"):
        assign_labels(bad, "paper")


def test_unknown_grouping_and_nothing_to_classify():
    with pytest.raises(DataError, match="unknown label grouping 'binary'"):
        assign_labels(_manifest([1, 5]), "binary")
    with pytest.raises(DataError, match="no 'malignancy' or 'label' column"):
        assign_labels(pd.DataFrame({"image": ["a"], "patient_id": ["p"]}), "paper")


def test_patient_level_split_never_shares_a_patient_and_keeps_fractions():
    rng = np.random.default_rng(1)
    patients = [f"P{i:03d}" for i in rng.integers(0, 120, size=900)]
    df = assign_labels(_manifest(rng.integers(1, 6, size=900).astype(float), patients), "paper")
    split = split_manifest(df, seed=3)
    per_patient = split.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    shares = split["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.05)
    assert shares["val"] == pytest.approx(0.15, abs=0.05) and shares["test"] == pytest.approx(0.15, abs=0.05)
    malignant_share = split.groupby("split")["target"].mean()
    assert malignant_share.max() - malignant_share.min() < 0.12  # stratified
    assert split_manifest(df, seed=3)["split"].tolist() == split["split"].tolist()  # seeded
    assert split_manifest(df, seed=4)["split"].tolist() != split["split"].tolist()


def test_row_level_split_warns_about_leakage():
    df = assign_labels(_manifest([1.0, 5.0] * 30), "paper")
    with pytest.warns(UserWarning, match="row-level split"):
        split = split_manifest(df, level="row")
    assert split.groupby("patient_id")["split"].nunique().max() > 1


def test_split_that_leaves_a_class_empty_is_an_error():
    df = assign_labels(_manifest([1, 1, 1, 1, 1, 1, 5, 5, 5], [f"P{i}" for i in range(9)]), "paper")
    df.loc[df["target"] == 1, "patient_id"] = "P_malignant"  # one patient has every malignant sample
    with pytest.raises(DataError, match="split has no samples of class 'malignant'"):
        split_manifest(df, class_names=("benign", "malignant"))
    with pytest.raises(DataError, match="fractions"):
        split_manifest(df, fractions=(0.5, 0.5, 0.5))


def test_oversample_to_largest_class_plus_200():
    df = pd.DataFrame({"image": [f"i{i}" for i in range(700)], "target": [0] * 500 + [1] * 150 + [2] * 50})
    out = oversample(df, extra=200, seed=0)
    assert out["target"].value_counts().to_dict() == {0: 700, 1: 700, 2: 700}
    assert (~out["augment_copy"]).sum() == 700  # every original kept once
    copies = out[out["augment_copy"] & (out["target"] == 2)]["image"].value_counts()
    assert copies.max() - copies.min() <= 1  # copies spread evenly over the originals


def test_class_weights_balance_the_loss():
    weights = class_weights([0] * 75 + [1] * 25, 2)
    assert weights == pytest.approx({0: 100 / 150, 1: 100 / 50})
    assert 75 * weights[0] == pytest.approx(25 * weights[1])


def test_manifest_validation_names_row_and_column():
    from lungnet.data.manifest import validate_manifest

    with pytest.raises(DataError, match=r"row 1 \(image 'b'\) has malignancy 6; ratings must be"):
        validate_manifest(pd.DataFrame({"image": ["a", "b"], "patient_id": ["p", "q"], "malignancy": [2, 6]}))
    with pytest.raises(DataError, match=r"missing required column\(s\) \['patient_id'\]"):
        validate_manifest(pd.DataFrame({"image": ["a"]}))
    with pytest.raises(DataError, match="row 0 has an empty 'patient_id'"):
        validate_manifest(pd.DataFrame({"image": ["a"], "patient_id": [""]}))


def test_weighted_sampler_draws_every_class_equally_often():
    from lungnet.data.balancing import weighted_resample

    df = pd.DataFrame({"image": [f"i{i}" for i in range(1000)], "target": [0] * 900 + [1] * 100})
    out = weighted_resample(df, seed=0, size=20000)
    share = out["target"].mean()
    assert abs(share - 0.5) < 0.02  # inverse frequency: each class drawn half the time
    assert out["augment_copy"].sum() == 20000 - out["image"].nunique()
    assert len(weighted_resample(df, seed=0)) == len(df)


def test_a_split_the_manifest_gives_is_kept_and_checked():
    from lungnet.data.splits import split_manifest
    from lungnet.errors import DataError

    df = pd.DataFrame(
        {
            "image": list("abcdef"),
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5"],
            "target": [0, 0, 1, 0, 1, 1],
            "paper_split": ["train", "train", "train", "val", "test", "test"],
        }
    )
    out = split_manifest(df, level="manifest", require_every_class=False)
    assert list(out["split"]) == list(df["paper_split"])
    with pytest.raises(DataError, match="in more than one split"):
        split_manifest(
            df.assign(paper_split=["train", "val", "train", "val", "test", "test"]), level="manifest"
        )
    with pytest.raises(DataError, match="'holdout' is not one of"):
        split_manifest(df.assign(paper_split=["holdout"] * 6), level="manifest")
    with pytest.raises(DataError, match="split_level 'manifest' needs"):
        split_manifest(df.drop(columns="paper_split"), level="manifest")
