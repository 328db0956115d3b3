"""The phantom's cache on disk: folder checks, atomic entries that say who is writing them, integrity records.

- **The cache folder** (``PhantomConfig.cache_dir``, ``--cache-dir``, ``$LUNGNET_CACHE``) is checked before a
  build: a file where a folder is expected, or a folder that cannot be written, is a
  :class:`~lungnet.errors.ConfigError` naming that path. Any other :class:`OSError` of a build is turned into
  a :class:`~lungnet.errors.DataError` naming the path, and a full disk (ENOSPC, or EDQUOT) into one that
  names the cache folder and says so, with the size the build needs and the space that is free.
- **Atomic entries.** An entry is built in ``<cache>/lidc-phantom/.<key>.pid<PID>.<random>.partial/`` and
  renamed into place only once it is complete. The builder holds an exclusive ``flock`` on the partial's
  ``.lock`` file for the whole build; the kernel drops that lock when the builder dies, however it dies
  (SIGKILL included). :func:`remove_stale_partials`, run before every build and load, deletes the partial
  folders whose lock is free (their builder is gone), those whose lock file does not exist yet and whose
  builder PID (in the name) is not alive, and those of older lungnet versions (no PID in the name) that have
  not changed for an hour. A partial that a live process is writing is left alone.
- **Integrity record.** ``files.json``, written last into the entry, records the byte size of every file and
  the shape and dtype of every array. :func:`entry_problem` checks it on every load (a few ``stat`` calls and
  header reads, not a checksum), so a truncated or missing file is found before training reads it. Entries
  built before the record existed are checked against each ``.npy`` file's own header instead (its shape and
  dtype give the size the file must have) and against the sample and slice counts of ``params.json``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lungnet.errors import ConfigError, DataError
from lungnet.fileio import write_json

LOCK_FILE = ".lock"
RECORD_FILE = "files.json"
RECORD_FORMAT = 1
ARRAY_FILES = ("slices.npy", "full_masks.bits.npy", "crops.npy", "crop_masks.npy")
OTHER_FILES = ("manifest.csv", "params.json")
LEGACY_PARTIAL_AGE_S = 3600.0  # partials of lungnet versions that did not name their builder
_PID_IN_NAME = re.compile(r"\.pid(\d+)\.[^.]*\.partial$")
_DISK_FULL = {errno.ENOSPC: "ENOSPC", errno.EDQUOT: "EDQUOT"}
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_HOW_TO_FIX = "give a writable folder with --cache-dir (phantom.cache_dir) or $LUNGNET_CACHE"


# --- the cache folder ----------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return path


def _not_a_folder(path: Path, root: Path) -> ConfigError:
    what = "the lidc-phantom cache folder" if path == root else f"a folder of the lidc-phantom cache {root}"
    return ConfigError(f"{path}: a file where a folder is expected ({what}); {_HOW_TO_FIX}")


def _not_writable(path: Path, detail: str) -> ConfigError:
    return ConfigError(f"{path}: the lidc-phantom cache folder is not writable ({detail}); {_HOW_TO_FIX}")


def check_cache_folder(root: Path, source_dir: Path) -> None:
    """Make `source_dir` (``<root>/lidc-phantom``) or say, naming the path, why the cache cannot hold it."""
    for path in (source_dir, *source_dir.parents):
        if os.path.lexists(path):
            if not path.is_dir():
                raise _not_a_folder(path, root)
            break
    try:
        source_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, root) from exc


def os_error(exc: OSError, root: Path, need_bytes: int | None = None) -> Exception:
    """The error a user sees for an OSError met while building into the cache folder `root`."""
    path = Path(exc.filename) if exc.filename else root
    if exc.errno in _DISK_FULL:
        return disk_full(root, f"{_DISK_FULL[exc.errno]}: {exc.strerror}, writing {path}", need_bytes)
    if exc.errno in _NOT_WRITABLE and (path == root or root in path.parents):
        return _not_writable(_nearest_existing(path.parent if exc.filename else path), exc.strerror)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        for candidate in (path, *path.parents):
            if os.path.lexists(candidate) and not candidate.is_dir():
                return _not_a_folder(candidate, root)
    return DataError(
        f"{path}: {exc.strerror or exc} (errno {exc.errno}) while building the lidc-phantom cache"
    )


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def disk_full(root: Path, how: str, need_bytes: int | None = None, probably: bool = False) -> DataError:
    """The DataError for a full disk under the cache folder `root` (`how`: the errno and the file)."""
    try:
        free = f", {_size(shutil.disk_usage(_nearest_existing(root)).free)} free"
    except OSError:
        free = ""
    need = f"; the build needs about {_size(need_bytes)}{free}" if need_bytes else ""
    return DataError(
        f"{root}: the disk holding the lidc-phantom cache is {'probably ' if probably else ''}full "
        f"({how}){need}. "
        "The partial build was deleted; free some space or give another folder with --cache-dir "
        "(phantom.cache_dir) or $LUNGNET_CACHE"
    )


def reserve(path: Path, nbytes: int) -> None:
    """Allocate the disk blocks of `path` (`nbytes` long) now, so a full disk is an ENOSPC error here.

    Without it the arrays are sparse files and the disk fills while workers write into their memory maps,
    which the kernel reports as SIGBUS (the worker dies) rather than as an error. File systems that cannot
    preallocate are left sparse.
    """
    if not hasattr(os, "posix_fallocate") or nbytes <= 0:
        return
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        # EOPNOTSUPP / EINVAL and the like: this file system cannot preallocate; stay sparse.
    finally:
        os.close(fd)


# --- atomic entries with an owner ----------------------------------------------------------------------


@contextlib.contextmanager
def building(entry: Path) -> Iterator[tuple[Path, int]]:
    """Yield (partial folder, lock fd); the partial replaces `entry` only if the block finishes.

    Like :func:`lungnet.fileio.atomic_directory`, and the partial also names its builder (PID in the folder
    name, an exclusive flock on ``.lock`` inside) so that :func:`remove_stale_partials` can tell a dead
    build's leftovers from a live one. On any exception (KeyboardInterrupt and SystemExit included) the
    partial is deleted.
    """
    before = _identity(entry)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{entry.name}.pid{os.getpid()}.", suffix=".partial", dir=entry.parent)
    )
    fd = -1
    try:
        # Lock a file under another name first, then rename it: a `.lock` that exists is always locked
        # by a live builder or free because its builder died, never unlocked-but-live.
        pending = tmp / f"{LOCK_FILE}.new"
        fd = os.open(pending, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.replace(pending, tmp / LOCK_FILE)
        yield tmp, fd
        # Another process building the same key (the workers of a multi-worker run) may have published
        # its entry while we built and be reading it now: that entry stays, ours is dropped (same key,
        # same content). An entry that was there before we started is the damaged one we replace.
        if _rival_published(entry, before):
            return
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif os.path.lexists(entry):
            entry.unlink()
        try:
            os.replace(tmp, entry)
        except OSError:
            if not _rival_published(entry, before):  # a real failure, not a rival's finished entry
                raise
            return
        (entry / LOCK_FILE).unlink(missing_ok=True)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _identity(entry: Path) -> tuple[int, int] | None:
    try:
        found = entry.lstat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns


def _rival_published(entry: Path, before: tuple[int, int] | None) -> bool:
    """Whether another builder put a whole `entry` in place since `before` (its identity then)."""
    now = _identity(entry)
    return now is not None and now != before and entry.is_dir() and entry_problem(entry) is None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:  # a zombie is dead for our purpose (its files are closed)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def partial_is_stale(partial: Path) -> bool:
    """True when no live process is building `partial` (see the module docstring for the rules)."""
    try:
        fd = os.open(partial / LOCK_FILE, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        match = _PID_IN_NAME.search(partial.name)
        if match:
            return not _pid_alive(int(match.group(1)))
        try:
            return time.time() - partial.stat().st_mtime > LEGACY_PARTIAL_AGE_S
        except OSError:
            return False
    except OSError:
        return False  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: its builder is alive
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def remove_stale_partials(source_dir: Path) -> list[Path]:
    """Delete the partial builds in `source_dir` that no live process is writing; return them.

    Best effort: a cache folder that cannot be listed or written (a read-only shared cache) is left as it is.
    """
    removed = []
    try:
        candidates = [p for p in source_dir.iterdir() if p.name.endswith(".partial") and p.is_dir()]
    except OSError:
        return removed
    for partial in candidates:
        if partial_is_stale(partial):
            shutil.rmtree(partial, ignore_errors=True)
            if not partial.exists():
                removed.append(partial)
    return removed


# --- the integrity record ------------------------------------------------------------------------------


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of a .npy file, from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            shape, _, dtype = np.lib.format._read_array_header(f, version)
        return tuple(int(n) for n in shape), np.dtype(dtype), f.tell()


def array_length(path: Path) -> int:
    """The first dimension of the .npy array at `path`, from its header."""
    return _npy_header(path)[0][0]


def _npy_bytes(shape, dtype: np.dtype, header: int) -> int:
    return header + math.prod(shape) * dtype.itemsize


def write_record(folder: Path) -> None:
    """Write ``files.json``: every file's size, and every array's shape and dtype (call it last)."""
    files = {}
    for name in (*ARRAY_FILES, *OTHER_FILES):
        files[name] = {"bytes": (folder / name).stat().st_size}
        if name in ARRAY_FILES:
            shape, dtype, header = _npy_header(folder / name)
            files[name].update(shape=list(shape), dtype=dtype.str, header_bytes=header)
    write_json(folder / RECORD_FILE, {"format": RECORD_FORMAT, "files": files})


def entry_problem(entry: Path) -> str | None:
    """What is wrong with the built entry `entry`, as 'PATH: what', or None when every file is whole."""
    record_path = entry / RECORD_FILE
    record = None
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())["files"]
            if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
                raise ValueError("not a table of files")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{record_path}: unreadable integrity record ({exc})"
    for name in (*ARRAY_FILES, *OTHER_FILES):
        path = entry / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path}: missing"
        except OSError as exc:
            return f"{path}: unreadable ({exc.strerror})"
        expected = record.get(name) if record else None
        if record and expected is None:
            return f"{path}: not in the integrity record {record_path}"
        if expected is not None and size != expected["bytes"]:
            return f"{path}: {size} bytes where {expected['bytes']} were written (truncated or overwritten)"
        if name in ARRAY_FILES:
            try:
                shape, dtype, header = _npy_header(path)
            except (OSError, ValueError, SyntaxError) as exc:
                return f"{path}: unreadable array header ({exc})"
            if expected is not None and (list(shape) != expected["shape"] or dtype.str != expected["dtype"]):
                return (
                    f"{path}: header says {shape} {dtype.str}, the integrity record "
                    f"{tuple(expected['shape'])} {expected['dtype']}"
                )
            want = _npy_bytes(shape, dtype, header)
            if size != want:
                return f"{path}: {size} bytes where its header ({shape} {dtype.str}) needs {want} (truncated)"
    if record is None:  # an entry from before the record: the counts of params.json must match the arrays
        try:
            params = json.loads((entry / "params.json").read_text())
        except (OSError, ValueError) as exc:
            return f"{entry / 'params.json'}: unreadable ({exc})"
        for name, key in (("slices.npy", "n_slices"), ("crops.npy", "n_samples")):
            if key in params and _npy_header(entry / name)[0][:1] != (params[key],):
                return f"{entry / name}: does not hold the {params[key]} {key[2:]} of {entry / 'params.json'}"
    return None
