"""Where pretrained encoders are kept: ``<cache>/pretrained/<backbone>-<method>-<key>/``, written atomically.

An entry is finished when its folder exists: it is trained in ``<key>.partial/`` (checkpoints, logs, an
exclusive ``flock`` on ``.lock`` for as long as a process builds it) and renamed into place only after
``encoder.weights.h5`` and ``pretraining.json`` are complete. A killed build leaves only the partial
folder, whose lock the kernel has released: the next build of the same key resumes from its last finished
epoch. The cache folder is the phantom's (``--cache-dir``, ``$LUNGNET_CACHE``, else the user cache dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lungnet.errors import LungnetError

WEIGHTS_FILE = "encoder.weights.h5"
INFO_FILE = "pretraining.json"
LOCK_FILE = ".lock"


class BuildInProgressError(LungnetError):
    """Another process is building the same pretrained encoder."""


def cache_key(keyed: dict) -> str:
    """A short stable hash of everything that determines the weights (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def entry_dir(root: Path, backbone: str, method: str, key: str) -> Path:
    return Path(root) / "pretrained" / f"{backbone}-{method}-{key}"


def finished_weights(entry: Path) -> Path | None:
    """The entry's weights file if the entry is finished (both files present), else None."""
    weights = entry / WEIGHTS_FILE
    return weights if weights.is_file() and (entry / INFO_FILE).is_file() else None


def partial_dir(entry: Path) -> Path:
    return entry.with_name(entry.name + ".partial")


@contextlib.contextmanager
def building(entry: Path) -> Iterator[Path]:
    """Yield the partial folder of `entry`, locked for this process; another live builder is an error."""
    partial = partial_dir(entry)
    partial.mkdir(parents=True, exist_ok=True)
    fd = os.open(partial / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildInProgressError(
                f"{partial}: another process is pretraining this encoder now; wait for it to finish (its "
                "weights are then reused) or stop it"
            ) from None
        yield partial
    finally:
        os.close(fd)


def publish(partial: Path, entry: Path) -> Path:
    """Rename the complete partial folder into place (atomic on one file system); returns the weights."""
    (partial / LOCK_FILE).unlink(missing_ok=True)
    os.replace(partial, entry)
    return entry / WEIGHTS_FILE
