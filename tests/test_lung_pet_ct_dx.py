"""Lung-PET-CT-Dx loader: TCIA layout, VOC box annotations matched by SOPInstanceUID, bad inputs."""

from __future__ import annotations

import pickle
import re
import zlib

import numpy as np
import pytest
from dicom_files import write_ct_slice

from lungnet.data.sources import lung_pet_ct_dx as dx
from lungnet.data.sources.volumes import get_collection
from lungnet.errors import DataError

N_SLICES = 6
SIZE = 32


def slice_pixels(k: int) -> np.ndarray:
    """Stored values of the slice k-th in z: HU -1000 at (0, 0), 400 at (-1, -1), -1000 + 10k elsewhere."""
    stored = np.full((SIZE, SIZE), 24 + 10 * k, np.uint16)
    stored[0, 0], stored[-1, -1] = 24, 1424
    return stored


def sop(patient: str, series: str, k: int) -> str:
    return f"1.2.{zlib.crc32(f'{patient}/{series}'.encode())}.{k + 1}"


def write_series(root, patient, series="ct", *, n=N_SLICES, modality="CT", patient_id=None):
    """`n` slices of `patient` written in reverse z order; returns their SOPInstanceUIDs in z order."""
    folder = root / patient / "01-01-2009-NA-Chest" / series
    folder.mkdir(parents=True, exist_ok=True)
    uids = [sop(patient, series, k) for k in range(n)]
    for k in range(n):
        write_ct_slice(
            folder / f"1-{n - k:02d}.dcm",
            slice_pixels(k),
            z=50.0 - 3.0 * (n - k),
            series_uid=f"{sop(patient, series, 99)}.0",
            patient_id=patient_id or patient,
            instance=n - k,
            sop_uid=uids[k],
            modality=modality,
        )
    return uids


def write_voc(folder, uid, boxes, *, name="A", size=(SIZE, SIZE), text=None):
    """A PASCAL VOC file `<uid>.xml`; each box is (xmin, ymin, xmax, ymax), or a dict of the tags to write."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uid}.xml"
    if text is None:
        objects = []
        for box in boxes:
            tags = (
                box
                if isinstance(box, dict)
                else dict(zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
            )
            coords = "".join(f"<{k}>{v}</{k}>" for k, v in tags.items())
            objects.append(f"<object><name>{name}</name><bndbox>{coords}</bndbox></object>")
        size_xml = (
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
        )
        text = f"<annotation><filename>{uid}.jpg</filename>{size_xml}{''.join(objects)}</annotation>"
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path):
    """Patient A0001: a CT series with two annotated slices (one box; two boxes), a second CT series with no
    annotation, and a PET series."""
    ct = write_series(tmp_path, "Lung_Dx-A0001")
    write_series(tmp_path, "Lung_Dx-A0001", "ct-other")
    write_series(tmp_path, "Lung_Dx-A0001", "pet", n=3, modality="PT")
    ann = tmp_path / "Annotation" / "A0001"
    write_voc(ann, ct[2], [(4, 5, 10, 12)])
    write_voc(ann, ct[4], [(2, 2, 8, 8), (6, 6, 12, 14)])
    return tmp_path


def test_registered():
    assert get_collection("lung-pet-ct-dx").list_volumes is dx.list_volumes


def test_annotated_ct_series_boxes_and_labels(root):
    tasks, skipped = dx.list_volumes(root)
    assert skipped == []
    assert len(tasks) == 1  # the unannotated CT series and the PET series are no task
    task = tasks[0]
    assert (task.dataset, task.patient_id) == ("lung-pet-ct-dx", "Lung_Dx-A0001")
    assert task.volume_id == f"{sop('Lung_Dx-A0001', 'ct', 99)}.0"
    assert pickle.loads(pickle.dumps(task)) == task

    one, two = dx.read_volume(task)
    assert [one.slice_index, two.slice_index] == [2, 4]  # z order, not file order
    for s in (one, two):
        assert s.hu.dtype == np.float32 and s.hu.shape == (SIZE, SIZE)
        assert s.hu.min() == -1000.0 and s.hu.max() == 400.0
        assert s.hu[20, 20] == -1000.0 + 10 * s.slice_index
        assert s.mask.dtype == np.uint8 and s.mask_kind == "box" and s.label == "malignant"
        assert s.extra["histology"] == "adenocarcinoma" and "object_name" not in s.extra
        assert s.extra["series_uid"] == task.volume_id
        assert s.pixel_spacing_mm == pytest.approx(0.7)
    assert one.extra["sop_instance_uid"] == sop("Lung_Dx-A0001", "ct", 2) and one.extra["n_boxes"] == 1
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[5:13, 4:11] = 1  # rows ymin..ymax, columns xmin..xmax, both inclusive
    np.testing.assert_array_equal(one.mask, expected)
    union = np.zeros((SIZE, SIZE), np.uint8)
    union[2:9, 2:9] = 1
    union[6:15, 6:13] = 1
    np.testing.assert_array_equal(two.mask, union)
    assert two.extra["n_boxes"] == 2 and two.mask.sum() == 7 * 7 + 9 * 7 - 3 * 3


def test_histology_letters_and_object_name_disagreement(tmp_path):
    ann = tmp_path / "Annotation"
    for patient, name in (("Lung_Dx-B0002", "B"), ("Lung_Dx-E0003", "E"), ("Lung_Dx-G0004", "A")):
        uids = write_series(tmp_path, patient)
        write_voc(ann / patient.split("-")[1], uids[0], [(1, 1, 3, 3)], name=name)
    tasks, skipped = dx.list_volumes(tmp_path)
    assert skipped == []
    samples = {t.patient_id: dx.read_volume(t)[0] for t in tasks}
    assert {p: s.extra["histology"] for p, s in samples.items()} == {
        "Lung_Dx-B0002": "small cell carcinoma",
        "Lung_Dx-E0003": "large cell carcinoma",
        "Lung_Dx-G0004": "squamous cell carcinoma",  # the patient letter wins over the XML's "A"
    }
    assert samples["Lung_Dx-G0004"].extra["object_name"] == "A"
    assert "object_name" not in samples["Lung_Dx-B0002"].extra


def test_annotations_option(root, tmp_path):
    elsewhere = tmp_path / "voc-elsewhere"
    (root / "Annotation").rename(elsewhere)
    with pytest.raises(DataError, match="Annotation: annotation folder not found"):
        dx.list_volumes(root)
    tasks, skipped = dx.list_volumes(root, annotations=elsewhere)
    assert len(tasks) == 1 and skipped == []
    with pytest.raises(DataError, match="missing: annotation folder not found"):
        dx.list_volumes(root, annotations=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no annotation files \(\*\.xml\)"):
        dx.list_volumes(root, annotations=empty)


def test_bad_annotations_are_skipped(root):
    ann = root / "Annotation" / "A0001"
    ct = [sop("Lung_Dx-A0001", "ct", k) for k in range(N_SLICES)]
    pet = sop("Lung_Dx-A0001", "pet", 0)
    bad = {
        "unknown": (write_voc(ann, "9.9.9.9", [(1, 1, 2, 2)]), "in no CT series"),
        "pet": (write_voc(ann, pet, [(1, 1, 2, 2)]), "a PT slice, not a CT one"),
        "malformed": (write_voc(ann, ct[0], [], text="<annotation><object>"), "malformed XML"),
        "no box": (
            write_voc(ann, ct[1], [], text="<annotation><object><name>A</name></object></annotation>"),
            "<object> 1 has no <bndbox>",
        ),
        "no xmax": (
            write_voc(ann, ct[3], [(1, 1, 4, 4), {"xmin": 1, "ymin": 1, "ymax": 4}]),
            "<object> 2 <bndbox> has no numeric <xmax>",
        ),
        "size": (
            write_voc(ann, ct[5], [(1, 1, 4, 4)], size=(512, 512)),
            "<size> 512x512 .* differs .* 32x32",
        ),
    }
    bad["duplicate"] = (
        write_voc(root / "Annotation" / "copy", ct[2], [(1, 1, 2, 2)]),
        "already annotated by",
    )
    other = sop("Lung_Dx-A0001", "ct-other", 0)
    bad["outside"] = (write_voc(ann, other, [(40, 40, 50, 50)]), r"box .* \(40, 40, 50, 50\) lies outside")
    tasks, skipped = dx.list_volumes(root)
    assert len(tasks) == 1 and [e["slice_index"] for e in tasks[0].info["slices"]] == [2, 4]  # still good
    reasons = {s.item: s.reason for s in skipped}
    assert len(skipped) == len(bad)
    for path, pattern in bad.values():
        assert re.search(pattern, reasons[str(path)]), reasons[str(path)]


def test_series_of_another_patient_is_skipped(root):
    uids = write_series(root, "Lung_Dx-A0008", patient_id="Lung_Dx-A0009")
    write_voc(root / "Annotation" / "A0008", uids[0], [(1, 1, 2, 2)])
    tasks, skipped = dx.list_volumes(root)
    assert [t.patient_id for t in tasks] == ["Lung_Dx-A0001"]
    assert [s.item for s in skipped] == [f"{sop('Lung_Dx-A0008', 'ct', 99)}.0"]
    assert re.search(
        "PatientID Lung_Dx-A0009 does not match .* Lung_Dx-A0008 .*1 annotated", skipped[0].reason
    )


def test_box_partly_outside_is_clipped(tmp_path):
    uids = write_series(tmp_path, "Lung_Dx-A0005")
    write_voc(tmp_path / "Annotation" / "A0005", uids[1], [(-5, 28, 3, 40)])
    tasks, skipped = dx.list_volumes(tmp_path)
    assert skipped == []
    (sample,) = dx.read_volume(tasks[0])
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[28:32, 0:4] = 1
    np.testing.assert_array_equal(sample.mask, expected)


def test_unknown_patient_letter_is_skipped(root):
    write_series(root, "Lung_Dx-C0007")
    (root / "notes").mkdir()
    tasks, skipped = dx.list_volumes(root)
    assert len(tasks) == 1
    assert sorted(s.item for s in skipped) == ["Lung_Dx-C0007", "notes"]
    assert all("known histology letter" in s.reason for s in skipped)


def test_bad_slice_at_read_time_names_the_file(root):
    tasks, _ = dx.list_volumes(root)
    broken = tasks[0].info["slices"][0]["path"]
    with open(broken, "r+b") as handle:  # truncate the pixel data, keep the header
        handle.truncate(handle.seek(0, 2) - 1000)
    with pytest.raises(DataError, match=broken.rsplit("/", 1)[-1]):
        dx.read_volume(tasks[0])
