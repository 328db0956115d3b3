"""Lung-PET-CT-Dx (TCIA): CT and PET/CT of lung cancer patients with tumour boxes, as ``lung-pet-ct-dx:ROOT``.

Layout (the TCIA downloads)::

    ROOT/Lung_Dx-A0001/<study>/<series>/*.dcm         images: CT and PET series
    ROOT/Annotation/A0001/<SOPInstanceUID>.xml         one PASCAL VOC file per annotated CT slice

The letter of the patient id is the biopsy diagnosis: A adenocarcinoma, B small cell carcinoma, E large cell
carcinoma, G squamous cell carcinoma (every patient's label is ``malignant``). The annotation root can be
given elsewhere (``list_volumes(root, annotations=PATH)``); it is searched recursively for ``*.xml``, and each
XML is matched to its slice by the SOPInstanceUID in its file name, so its folder name is not relied on.

Only CT series are volumes (PET series are ignored), and only those with at least one annotated slice. Each
annotated slice gives one sample whose mask is the union of its boxes (``mask_kind="box"``: a box covers the
tumour and some of its surroundings, not its outline). Box coordinates are read as 0-based pixel indices,
inclusive at both ends, and clipped to the image.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from lungnet.data.sources.dicom_headers import (
    SliceHeader,
    patient_folders,
    patient_mismatch,
    read_slice_hu,
    series_problem,
    walk_series,
)
from lungnet.data.sources.volumes import (
    Collection,
    Skipped,
    SliceSample,
    VolumeTask,
    register_collection,
)
from lungnet.errors import DataError

NAME = "lung-pet-ct-dx"
LABEL = "malignant"
HISTOLOGY = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}
ANNOTATION_FOLDER = "Annotation"
_PATIENT_ID = re.compile(r"^Lung_Dx-([A-Za-z])(\d+)$")
_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def histology_letter(patient_id: str) -> str | None:
    """The diagnosis letter of a patient id (``Lung_Dx-G0012`` -> ``G``), or None when it has no known one."""
    match = _PATIENT_ID.match(patient_id)
    letter = match.group(1).upper() if match else None
    return letter if letter in HISTOLOGY else None


def parse_voc(
    path: str | os.PathLike,
) -> tuple[tuple[int, int] | None, list[tuple[int, int, int, int]], list[str]]:
    """``((width, height) or None, boxes as (xmin, ymin, xmax, ymax), object names)`` of a PASCAL VOC file.

    A problem is a DataError naming the file: malformed XML, an object without complete numeric ``bndbox``
    coordinates (a partial set of boxes would give an incomplete mask), an inverted box, or no box at all.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: not a PASCAL VOC annotation (root element <{root.tag}>, not <annotation>)")
    size = None
    size_element = root.find("size")
    if size_element is not None:
        try:
            size = (_whole(size_element, "width"), _whole(size_element, "height"))
        except ValueError as exc:
            raise DataError(f"{path}: <size> {exc}") from None
    boxes, names = [], []
    for number, obj in enumerate(root.findall("object"), start=1):
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: <object> {number} has no <bndbox> coordinates")
        try:
            xmin, ymin, xmax, ymax = (_pixel(box, tag) for tag in _BOX_TAGS)
        except ValueError as exc:
            raise DataError(f"{path}: <object> {number} <bndbox> {exc}") from None
        if xmin > xmax or ymin > ymax:
            raise DataError(
                f"{path}: <object> {number} box is inverted (xmin {xmin}, xmax {xmax}, ymin {ymin}, ymax {ymax})"
            )
        boxes.append((xmin, ymin, xmax, ymax))
        names.append((obj.findtext("name") or "").strip())
    if not boxes:
        raise DataError(f"{path}: no <object> with <bndbox> coordinates")
    return size, boxes, names


def _number(element: ET.Element, tag: str) -> float:
    text = (element.findtext(tag) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"has no numeric <{tag}> (found {text!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"has no numeric <{tag}> (found {text!r})")
    return value


def _pixel(element: ET.Element, tag: str) -> int:
    return math.floor(_number(element, tag) + 0.5)  # some tools write "123.0"; round half up to a pixel


def _whole(element: ET.Element, tag: str) -> int:
    value = _number(element, tag)
    if value != int(value):
        raise ValueError(f"<{tag}> {value} is not a whole number of pixels")
    return int(value)


def clip_box(box: tuple[int, int, int, int], rows: int, columns: int) -> tuple[int, int, int, int] | None:
    """An inclusive (xmin, ymin, xmax, ymax) box clipped to a rows x columns image; None when nothing is left."""
    xmin, ymin, xmax, ymax = max(box[0], 0), max(box[1], 0), min(box[2], columns - 1), min(box[3], rows - 1)
    if xmin > xmax or ymin > ymax:
        return None
    return xmin, ymin, xmax, ymax


def box_mask(boxes, rows: int, columns: int) -> np.ndarray:
    """The uint8 0/1 union of inclusive (xmin, ymin, xmax, ymax) boxes (already clipped to the image)."""
    mask = np.zeros((rows, columns), np.uint8)
    for xmin, ymin, xmax, ymax in boxes:
        mask[ymin : ymax + 1, xmin : xmax + 1] = 1
    return mask


def list_volumes(
    root: Path, annotations: str | os.PathLike | None = None
) -> tuple[list[VolumeTask], list[Skipped]]:
    """One task per CT series with at least one annotated slice; every XML problem is a Skipped entry.

    Reads the DICOM headers only (no pixels) to learn each slice's SOPInstanceUID, series, size and z order.
    """
    root = Path(root)
    annotation_root = Path(annotations) if annotations is not None else root / ANNOTATION_FOLDER
    if not annotation_root.is_dir():
        raise DataError(
            f"{annotation_root}: annotation folder not found (the VOC XMLs, one per annotated slice; "
            f"give it with annotations=PATH)"
        )
    xml_files = sorted(annotation_root.rglob("*.xml"))
    if not xml_files:
        raise DataError(f"{annotation_root}: no annotation files (*.xml) in it or its sub-folders")
    skipped: list[Skipped] = []

    # Headers: every CT slice by SOPInstanceUID, and the series it belongs to.
    series: dict[tuple[str, str], dict] = {}  # (folder, uid) -> patient, letter, headers, z order
    ct_slices: dict[str, tuple[tuple[str, str], SliceHeader]] = {}
    other_slices: dict[str, str] = {}  # SOPInstanceUID -> modality, to say why a PET slice is no match
    for patient in patient_folders(root, exclude=(annotation_root,)):
        letter = histology_letter(patient.name)
        if letter is None:
            skipped.append(
                Skipped(
                    NAME,
                    patient.name,
                    f"{patient}: not a Lung_Dx-<letter><number> patient folder with a known histology letter "
                    f"({', '.join(f'{k} {v}' for k, v in HISTOLOGY.items())})",
                )
            )
            continue
        for folder, uid, headers in walk_series(patient):
            for header in headers:
                if header.modality != "CT":
                    other_slices[header.sop_uid] = header.modality or "no Modality"
            ct = [h for h in headers if h.modality == "CT"]
            if not ct:
                continue
            key = (folder, uid)
            # The z order list_dicom_series gives: distinct z of the series' placed slices.
            z_order = sorted({h.z for h in headers if h.z is not None})
            series[key] = {"patient": patient.name, "letter": letter, "headers": ct, "z_order": z_order}
            for header in ct:
                ct_slices.setdefault(header.sop_uid, (key, header))

    # Annotations: one XML per slice, matched by the SOPInstanceUID of its file name.
    annotated: dict[tuple[str, str], list[dict]] = {}
    xml_of: dict[str, Path] = {}
    for xml in xml_files:
        sop = xml.stem
        if sop in xml_of:
            skipped.append(Skipped(NAME, str(xml), f"slice {sop} is already annotated by {xml_of[sop]}"))
            continue
        if sop not in ct_slices:
            if sop in other_slices:
                reason = f"names slice {sop}, a {other_slices[sop]} slice, not a CT one"
            else:
                reason = f"names slice {sop}, which is in no CT series under {root}"
            skipped.append(Skipped(NAME, str(xml), reason))
            continue
        try:
            size, boxes, names = parse_voc(xml)
        except DataError as exc:
            skipped.append(Skipped(NAME, str(xml), str(exc)))
            continue
        key, header = ct_slices[sop]
        if header.rows is None or header.columns is None or not header.has_pixels or header.z is None:
            skipped.append(Skipped(NAME, str(xml), f"its slice {header.path} has no readable image"))
            continue
        rows, columns = header.rows, header.columns
        if size is not None and size != (columns, rows):
            skipped.append(
                Skipped(
                    NAME,
                    str(xml),
                    f"<size> {size[0]}x{size[1]} (width x height) differs from its slice's {columns}x{rows} "
                    f"({header.path}); the boxes would land in the wrong place",
                )
            )
            continue
        clipped = [clip_box(box, rows, columns) for box in boxes]
        outside = [box for box, kept in zip(boxes, clipped, strict=True) if kept is None]
        if outside:
            skipped.append(
                Skipped(
                    NAME,
                    str(xml),
                    f"box (xmin, ymin, xmax, ymax) {outside[0]} lies outside the {columns}x{rows} image",
                )
            )
            continue
        xml_of[sop] = xml
        letter = series[key]["letter"]
        entry = {
            "path": header.path,
            "sop_uid": sop,
            "slice_index": series[key]["z_order"].index(header.z),
            "rows": rows,
            "columns": columns,
            "pixel_spacing_mm": header.pixel_spacing_mm,
            "boxes": [list(box) for box in clipped],
            "xml": str(xml),
        }
        disagreeing = sorted({n for n in names if n and n.upper() != letter})
        if disagreeing:  # the patient id is the collection's own record of the diagnosis: keep it, note this
            entry["object_name"] = ",".join(sorted(set(names)))
        annotated.setdefault(key, []).append(entry)

    tasks: list[VolumeTask] = []
    for key in sorted(annotated):
        folder, uid = key
        patient, headers = series[key]["patient"], series[key]["headers"]
        entries = sorted(annotated[key], key=lambda e: (e["slice_index"], e["sop_uid"]))
        reason = patient_mismatch(patient, headers) or series_problem(folder, uid, headers)
        if reason:
            skipped.append(
                Skipped(NAME, uid or folder, f"{reason} ({len(entries)} annotated slices left out)")
            )
            continue
        tasks.append(
            VolumeTask(
                dataset=NAME,
                volume_id=uid,
                patient_id=patient,
                paths=tuple(e["path"] for e in entries),
                info={
                    "folder": folder,
                    "series_uid": uid,
                    "histology": HISTOLOGY[series[key]["letter"]],
                    "slices": entries,
                },
            )
        )
    return tasks, skipped


def read_volume(task: VolumeTask) -> list[SliceSample]:
    """The annotated slices of one CT series in HU, each with the union of its boxes as its mask."""
    samples = []
    for entry in task.info["slices"]:
        path = entry["path"]
        hu = read_slice_hu(path)
        shape = (entry["rows"], entry["columns"])
        if hu.shape != shape:
            raise DataError(f"{path}: pixel data of shape {hu.shape} does not match its header's {shape}")
        extra = {
            "histology": task.info["histology"],
            "sop_instance_uid": entry["sop_uid"],
            "series_uid": task.info["series_uid"],
            "n_boxes": len(entry["boxes"]),
        }
        if "object_name" in entry:
            extra["object_name"] = entry["object_name"]
        samples.append(
            SliceSample(
                hu=hu,
                mask=box_mask(entry["boxes"], *shape),
                slice_index=entry["slice_index"],
                label=LABEL,
                mask_kind="box",
                pixel_spacing_mm=entry["pixel_spacing_mm"],
                extra=extra,
            )
        )
    return samples


register_collection(
    Collection(
        name=NAME,
        description="Lung-PET-CT-Dx (TCIA): CT slices of lung cancer patients with tumour boxes "
        "(adenocarcinoma, small cell, large cell and squamous cell carcinoma)",
        list_volumes=list_volumes,
        read_volume=read_volume,
    )
)
