"""The patient-level genomic tables: NSCLC-Radiogenomics' clinical CSV and a generic numeric CSV, written by
the tests in those exact formats, with the encoder's statistics, missing values and bad inputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lungnet.data.genomics import PRESENT, GenomicEncoder, read_genomic_table
from lungnet.errors import ConfigError, DataError

# the real file's header, in its order (NSCLCR01Radiogenomic_DATA_LABELS_2018-05-22_1500-shifted.csv, part)
HEADER = [
    "Case ID",
    "Patient affiliation",
    "Age at Histological Diagnosis",
    "Gender",
    "Smoking status",
    "Histology ",
    "EGFR mutation status",
    "KRAS mutation status",
    "ALK translocation status",
    "Survival Status",
]
ROWS = [
    [
        "R01-001",
        "Stanford",
        "68",
        "Male",
        "Former",
        "Adenocarcinoma",
        "Wildtype",
        "Mutant",
        "Wildtype",
        "Alive",
    ],
    [
        "R01-002",
        "Stanford",
        "51",
        "Female",
        "Never",
        "Adenocarcinoma",
        "Mutant",
        "Wildtype",
        "Wildtype",
        "Dead",
    ],
    [
        "R01-003",
        "VA",
        "74",
        "Male",
        "Current",
        "Squamous cell carcinoma",
        "Unknown",
        "Unknown",
        "Unknown",
        "Alive",
    ],
    [
        "AMC-001",
        "VA",
        "63",
        "Male",
        "Former",
        "Adenocarcinoma",
        "Not collected",
        "Wildtype",
        "Translocated",
        "Alive",
    ],
]


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_nsclc_radiogenomics_statuses(tmp_path):
    table = read_genomic_table(_write(tmp_path / "clinical.csv", HEADER, ROWS))
    assert table.kind == "nsclc-radiogenomics"
    assert list(table.values.index) == ["R01-001", "R01-002", "R01-003", "AMC-001"]
    egfr, kras, alk = (table.values[c].tolist() for c in HEADER[6:9])
    assert egfr[:2] == [0.0, 1.0] and np.isnan(egfr[2]) and np.isnan(egfr[3])
    assert kras[0] == 1.0 and np.isnan(kras[2])
    assert alk[3] == 1.0  # Translocated


def test_encoder_standardises_on_training_patients_and_flags_missing(tmp_path):
    table = read_genomic_table(_write(tmp_path / "clinical.csv", HEADER, ROWS))
    encoder = GenomicEncoder.fit(table, ["R01-001", "R01-002", "R01-003"])
    assert encoder.feature_names == [
        *HEADER[6:9],
        "EGFR mutation status known",
        "KRAS mutation status known",
        "ALK translocation status known",
        PRESENT,
    ]
    x = encoder.transform(table, ["R01-002", "R01-003", "LIDC-IDRI-0001"])
    # EGFR on the training rows: 0 and 1 measured (mean 0.5, std 0.5) -> R01-002 is +1; unknown -> 0
    np.testing.assert_allclose(x[0, 0], 1.0)
    assert x[1, 0] == 0.0 and x[1, 3] == 0.0  # unknown: the mean, flagged as not known
    assert x[0, 3] == 1.0 and x[0, -1] == 1.0
    # ALK is Wildtype on every measured training row: std 0 -> no division by zero
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x[2], np.zeros(x.shape[1]))  # no row at all: zeros, has_genomics 0


def test_missing_patients_can_be_an_error_and_no_match_always_is(tmp_path):
    table = read_genomic_table(_write(tmp_path / "clinical.csv", HEADER, ROWS))
    strict = GenomicEncoder.fit(table, ["R01-001", "R01-002"], missing_patients="error")
    with pytest.raises(DataError, match=r"no genomic row for patient\(s\) \['R01-999'\]"):
        strict.transform(table, ["R01-001", "R01-999"])
    with pytest.raises(
        DataError, match="Genomic ids look like .*R01-001.* the images' like .*LIDC-IDRI-0001"
    ):
        GenomicEncoder.fit(table, ["LIDC-IDRI-0001", "LIDC-IDRI-0002"])
    with pytest.raises(ConfigError, match="genomics.missing_patients"):
        GenomicEncoder.fit(table, ["R01-001"], missing_patients="drop")


def test_numeric_table_and_pca(tmp_path):
    rng = np.random.default_rng(0)
    signal = rng.normal(size=20)
    rows = [[f"P{i:02d}", f"{s:.4f}", f"{2 * s:.4f}", f"{rng.normal():.4f}"] for i, s in enumerate(signal)]
    rows[3][3] = ""  # one missing value
    table = read_genomic_table(_write(tmp_path / "panel.csv", ["patient_id", "g1", "g2", "g3"], rows))
    assert table.kind == "numeric" and np.isnan(table.values.loc["P03", "g3"])
    encoder = GenomicEncoder.fit(table, [f"P{i:02d}" for i in range(15)], pca=1)
    assert encoder.feature_names == ["pc1", PRESENT]
    x = encoder.transform(table, [f"P{i:02d}" for i in range(20)])
    # g1 and g2 carry the same signal: the first component follows it (up to sign)
    assert abs(np.corrcoef(x[:, 0], signal)[0, 1]) > 0.9
    with pytest.raises(ConfigError, match="genomics.pca"):
        GenomicEncoder.fit(table, ["P00", "P01"], pca=5)


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (HEADER, [[*ROWS[0][:6], "Positive", *ROWS[0][7:]]], r"row 2, 'EGFR mutation status': 'Positive'"),
        (HEADER, [ROWS[0], ROWS[0]], r"\['R01-001'\] appear more than once"),
        (HEADER[:6], ROWS, r"missing column\(s\) \['EGFR mutation status'"),
        (["patient_id", "g1"], [["P1", "high"]], r"row 2, 'g1': 'high' is not a number"),
        (["patient_id", "g1"], [["", "1.0"]], "row 2 has an empty 'patient_id'"),
        (["patient_id"], [["P1"]], "no genomic columns"),
        (["id", "g1"], [["P1", "1"]], r"missing column\(s\) \['patient_id'\]"),
    ],
)
def test_bad_tables_are_named(tmp_path, header, rows, message):
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=message) as info:
        read_genomic_table(path)
    assert str(path) in str(info.value)


def test_missing_file_and_format(tmp_path):
    with pytest.raises(DataError, match="genomic table not found"):
        read_genomic_table(tmp_path / "none.csv")
    with pytest.raises(ConfigError, match="genomics.format"):
        read_genomic_table(tmp_path / "none.csv", kind="vcf")
