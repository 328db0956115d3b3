"""One entry point from a data source name or path to a validated manifest.

======================================  ==========================================================
SOURCE                                  what it loads
======================================  ==========================================================
``lidc-phantom``                        the embedded default: a phantom rendered from real LIDC-IDRI
                                        annotations (built once, then cached)
``lidc-idri`` / ``lidc-idri:PATH``      LIDC-IDRI DICOM via pylidc (path from ~/.pylidcrc or given)
``luna16:ROOT``, ``msd-lung:ROOT``,      a CT collection in its published layout, harmonised once into
``lndb:ROOT``, ``lungct-diagnosis:ROOT``, the cache (`lungnet.data.harmonize`; `lungnet data harmonize`
``lung-pet-ct-dx:ROOT``                 writes the same into a folder of your choice)
``path/to/manifest.csv``                a manifest CSV (image, mask, patient_id, malignancy/label, ...)
``path/to/folder``                      ``folder/manifest.csv`` if present, else one sub-folder per class
======================================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lungnet.data.manifest import validate_manifest
from lungnet.data.sources.phantom import DESCRIPTION as PHANTOM_DESCRIPTION
from lungnet.data.sources.phantom import PhantomConfig, load_phantom
from lungnet.data.sources.volumes import get_collection, parse_collection_spec
from lungnet.errors import DataError

PHANTOM = "lidc-phantom"
LIDC_IDRI = "lidc-idri"


@dataclass(frozen=True)
class Source:
    """A loaded data source: its manifest and the words reports must use for it."""

    spec: str
    manifest: pd.DataFrame
    description: str

    @property
    def is_phantom(self) -> bool:
        return self.spec == PHANTOM


def load_source(spec: str, phantom: PhantomConfig | None = None, progress: bool = True) -> Source:
    """Load SOURCE (see the module table). `phantom` configures the phantom (seed, exclusions, cache)."""
    spec = str(spec)
    if spec == PHANTOM:
        manifest = load_phantom(phantom or PhantomConfig(), progress=progress)
        return Source(spec, validate_manifest(manifest, PHANTOM), PHANTOM_DESCRIPTION)
    if spec == LIDC_IDRI or spec.startswith(LIDC_IDRI + ":"):
        from lungnet.data.sources.lidc_dicom import load_lidc_dicom

        root = spec.partition(":")[2] or None
        cache = (phantom or PhantomConfig()).cache_root() / LIDC_IDRI
        manifest = load_lidc_dicom(root, cache_dir=cache)
        return Source(spec, manifest, "LIDC-IDRI DICOM (real CT) read through pylidc, one slice per nodule")
    collection = parse_collection_spec(spec)
    if collection is not None:
        return _harmonized_source(spec, *collection, (phantom or PhantomConfig()).cache_root(), progress)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "manifest.csv").is_file():
        path = path / "manifest.csv"
    if path.suffix.lower() == ".csv" and not path.exists():
        raise DataError(f"{path}: manifest CSV not found")
    if path.is_file() and path.suffix.lower() == ".csv":
        from lungnet.data.sources.manifest_csv import load_manifest_csv

        return Source(spec, load_manifest_csv(path), f"manifest {path}")
    if path.is_dir():
        from lungnet.data.sources.class_folders import load_class_folders

        return Source(spec, load_class_folders(path), f"class-per-folder images under {path}")
    raise DataError(
        f"{spec}: not a data source. Give 'lidc-phantom', 'lidc-idri[:DICOM_ROOT]', a CT collection as "
        "NAME:ROOT (luna16, msd-lung, lndb, lungct-diagnosis, lung-pet-ct-dx), a manifest .csv file, "
        "or a folder (with a manifest.csv, or one sub-folder of images per class)"
    )


def _harmonized_source(spec: str, name: str, root: Path, cache_root: Path, progress: bool) -> Source:
    """A collection harmonised into the cache (resumable: finished volumes are reused), as a manifest."""
    import hashlib

    from lungnet.data.harmonize import MANIFEST, harmonize
    from lungnet.data.sources.manifest_csv import load_manifest_csv

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    out = cache_root / "harmonized" / f"{name}-{key}"
    result = harmonize([spec], out, progress=progress)
    if len(result.skipped):
        print(
            f"note: {len(result.skipped)} volumes or annotations of {spec} skipped; see {out / 'skipped.csv'}"
        )
    collection = get_collection(name)
    return Source(spec, load_manifest_csv(out / MANIFEST), f"{collection.description} (harmonised in {out})")
