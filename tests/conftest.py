"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lidc_crops_dir() -> Path:
    """The real LIDC crops of ../shared/data/lidc-crops (see its README); tests using it skip when absent."""
    path = (REPO / ".." / "shared" / "data" / "lidc-crops").resolve()
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"real LIDC crops not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_phantom_config(tmp_path_factory):
    """A lidc-phantom of the first twelve LIDC patients, built once per test session into a temp cache."""
    from lungnet.data.sources.phantom import PhantomConfig, build_phantom

    config = PhantomConfig(max_patients=12, cache_dir=str(tmp_path_factory.mktemp("phantom-cache")))
    build_phantom(config, progress=False)
    return config
