"""The lidc-phantom cache under failure: full disks, dying workers, bad cache folders, kills, damaged entries.

Nothing lost, nothing half-written, every bad input named (issue 9). Builds here are of one or two patients
(a fraction of a second each); the rendering pool is used whenever a build has two scans and workers=2. Tests
that could hang if a bug came back run the build in a thread or a subprocess with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lungnet.data.io import read_image
from lungnet.data.sources.phantom import PhantomConfig, build_phantom, cache, load_phantom
from lungnet.data.sources.phantom import build as phantom_build
from lungnet.data.sources.phantom.workers import RemoteTraceback
from lungnet.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60  # a build of two patients takes well under a second; more means it hangs


def _partials(cache_dir: Path) -> list[Path]:
    source = cache_dir / "lidc-phantom"
    return sorted(source.glob("*.partial")) if source.is_dir() else []


def _build_with_deadline(config: PhantomConfig, **kwargs):
    """build_phantom in a thread: the exception it raised (None when it worked), or a failure if it hangs."""
    outcome = {}

    def target():
        try:
            build_phantom(config, progress=False, **kwargs)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        pytest.fail(f"build_phantom still running after {DEADLINE_S} s: a failure was lost and it hangs")
    return outcome["error"], time.monotonic() - start


@pytest.fixture(scope="module")
def built_entry(tmp_path_factory) -> PhantomConfig:
    """A one-patient phantom, built once; tests damage copies of it."""
    config = PhantomConfig(max_patients=1, cache_dir=str(tmp_path_factory.mktemp("phantom-one")))
    build_phantom(config, progress=False)
    return config


@pytest.fixture
def entry_copy(built_entry, tmp_path) -> PhantomConfig:
    config = PhantomConfig(max_patients=1, cache_dir=str(tmp_path / "cache"))
    shutil.copytree(built_entry.entry_dir(), config.entry_dir())
    return config


# --- 1. a full disk, and any other worker failure, stops the build at once ------------------------------


class _FullDisk:
    """An array whose every write fails as a write on a full disk does."""

    def __init__(self, path):
        self.path = path

    def __setitem__(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device", self.path)


def _open_full_arrays(entry):
    return {n: _FullDisk(f"{entry}/{n}.npy") for n in ("slices", "full_masks.bits", "crops", "crop_masks")}


def test_full_disk_in_a_worker_is_one_clear_error(tmp_path, monkeypatch):
    config = PhantomConfig(max_patients=2, cache_dir=str(tmp_path))
    # Patched at module level before the pool forks, so the workers (not the parent) hit the full disk.
    monkeypatch.setattr(phantom_build, "_open_arrays", _open_full_arrays)
    error, seconds = _build_with_deadline(config, workers=2)
    assert isinstance(error, DataError), error
    message = str(error)
    assert message.startswith(f"{tmp_path}: ") and "disk" in message and "full" in message
    assert "ENOSPC" in message and "--cache-dir" in message
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    assert isinstance(error.__cause__.__cause__, RemoteTraceback)  # it came from a worker process
    assert seconds < 30
    assert _partials(tmp_path) == []


def test_full_disk_while_allocating_the_arrays(tmp_path, monkeypatch):
    config = PhantomConfig(max_patients=2, cache_dir=str(tmp_path))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    monkeypatch.setattr(phantom_build, "_render_scan", lambda task: pytest.fail("rendered on a full disk"))
    with pytest.raises(DataError, match="ENOSPC") as caught:
        build_phantom(config, progress=False, workers=2)
    assert str(caught.value).startswith(f"{tmp_path}: ") and "the build needs about" in str(caught.value)
    assert _partials(tmp_path) == []


# Module-level (not lambdas), so that a pool that pickles its function by name could run them too.
def _exit_without_a_word(task):
    os._exit(3)


def _killed_as_by_the_oom_killer(task):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize(
    ("death", "said"),
    [(_exit_without_a_word, "exited with status 3"), (_killed_as_by_the_oom_killer, "killed by SIGKILL")],
    ids=["exit", "sigkill"],
)
def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path, monkeypatch, death, said):
    config = PhantomConfig(max_patients=2, cache_dir=str(tmp_path))
    monkeypatch.setattr(phantom_build, "_render_scan", death)
    error, _ = _build_with_deadline(config, workers=2)
    assert isinstance(error, DataError), error
    assert str(error).startswith(f"{config.entry_dir()}: rendering worker lidc-phantom-render-")
    assert said in str(error) and "the partial build was deleted" in str(error)
    assert _partials(tmp_path) == []


def _bug(task):
    raise ValueError("a rendering bug")


def test_an_exception_in_a_worker_is_raised_in_the_parent(tmp_path, monkeypatch):
    config = PhantomConfig(max_patients=2, cache_dir=str(tmp_path))

    monkeypatch.setattr(phantom_build, "_render_scan", _bug)
    error, _ = _build_with_deadline(config, workers=2)
    assert isinstance(error, ValueError) and str(error) == "a rendering bug"
    assert isinstance(error.__cause__, RemoteTraceback) and "in _bug" in str(error.__cause__)
    assert _partials(tmp_path) == []


# --- 2. a cache folder that is a file, or not writable ----------------------------------------------------


@pytest.mark.parametrize("where", ["cache", "below", "source"])
def test_cache_folder_that_is_a_file(tmp_path, where):
    file = tmp_path / "not-a-folder"
    file.write_text("")
    cache_dir = {"cache": file, "below": file / "deeper", "source": tmp_path}[where]
    if where == "source":
        file = tmp_path / "lidc-phantom"
        file.write_text("")
    config = PhantomConfig(max_patients=1, cache_dir=str(cache_dir))
    with pytest.raises(ConfigError, match="a file where a folder is expected") as caught:
        load_phantom(config, progress=False)
    assert str(caught.value).startswith(f"{file}: ")


def test_read_only_cache_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("chmod 0o555 does not stop this user's writes (root); see the injected-error test")
        with pytest.raises(ConfigError, match="not writable") as caught:
            load_phantom(PhantomConfig(max_patients=1, cache_dir=str(folder)), progress=False)
        assert str(caught.value).startswith(f"{folder}: ")
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_cache_folder_injected(tmp_path, monkeypatch, code):
    def refuse(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), os.path.join(dir, ".x.partial"))

    (tmp_path / "lidc-phantom").mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(ConfigError, match="not writable") as caught:
        load_phantom(PhantomConfig(max_patients=1, cache_dir=str(tmp_path)), progress=False)
    assert str(caught.value).startswith(f"{tmp_path / 'lidc-phantom'}: ")
    assert os.strerror(code) in str(caught.value)


def test_a_complete_entry_in_a_read_only_cache_still_loads(entry_copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(shutil, "rmtree", refuse)
    assert len(load_phantom(entry_copy, progress=False)) > 0


# --- 3. killed builds leave no partial folders behind -----------------------------------------------------

_SLOW_BUILD = textwrap.dedent(
    """
    import os, sys, time
    from lungnet.data.sources.phantom import build as b

    cache_dir, marks = sys.argv[1], sys.argv[2]
    render = b._render_scan

    def slow(task):  # runs in the pool's workers: say who we are, then take our time
        open(os.path.join(marks, str(os.getpid())), "w").close()
        time.sleep(120)
        return render(task)

    b._render_scan = slow
    b.build_phantom(b.PhantomConfig(max_patients=2, cache_dir=cache_dir), progress=False, workers=2)
    """
)


def _start_slow_build(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """A build in a subprocess, stopped inside its workers; returns (process, cache dir, worker pids)."""
    cache_dir, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BUILD, str(cache_dir), str(marks)], cwd=REPO, start_new_session=True
    )
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"the build subprocess exited early with status {child.returncode}")
        workers = [int(p.name) for p in marks.iterdir()]
        if len(workers) == 2 and any((p / cache.LOCK_FILE).is_file() for p in _partials(cache_dir)):
            return child, cache_dir, workers
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    pytest.fail("the build subprocess never reached its workers")


def _kill_group(child: subprocess.Popen) -> None:
    """Whatever happened in the test, leave no process of the subprocess's session behind."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(cache._pid_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def test_sigkill_leftovers_are_removed_by_the_next_build(tmp_path):
    child, cache_dir, workers = _start_slow_build(tmp_path)
    try:
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert len(_partials(cache_dir)) == 1  # what SIGKILL leaves: nothing can clean up
        assert _gone(workers), "the workers outlived their killed parent"
    finally:
        _kill_group(child)
    config = PhantomConfig(max_patients=2, cache_dir=str(cache_dir))
    manifest = load_phantom(config, progress=False)
    assert _partials(cache_dir) == []
    assert cache.entry_problem(config.entry_dir()) is None and len(manifest) > 0
    assert sorted(p.name for p in (cache_dir / "lidc-phantom").iterdir()) == [config.cache_key()]


def test_sigterm_deletes_the_partial_on_the_way_out(tmp_path):
    child, cache_dir, workers = _start_slow_build(tmp_path)
    try:
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
        assert _partials(cache_dir) == []
        assert _gone(workers)
    finally:
        _kill_group(child)
    assert not PhantomConfig(max_patients=2, cache_dir=str(cache_dir)).entry_dir().exists()


def test_only_partials_no_live_process_holds_are_removed(tmp_path):
    source = tmp_path / "lidc-phantom"
    source.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    dead_pid = source / f".key.pid{finished.pid}.abc.partial"  # killed before it took its lock
    live_pid = source / f".key.pid{os.getpid()}.abd.partial"  # between mkdtemp and its lock
    unlocked = source / ".key.pid1.abe.partial"
    legacy_new, legacy_old = source / ".key.abf.partial", source / ".key.abg.partial"
    for folder in (dead_pid, live_pid, unlocked, legacy_new, legacy_old):
        folder.mkdir()
    (unlocked / cache.LOCK_FILE).write_text("1\n")  # a lock file nobody holds: its builder died
    old = time.time() - 2 * cache.LEGACY_PARTIAL_AGE_S
    os.utime(legacy_old, (old, old))
    entry = source / "key"
    with cache.building(entry) as (live, _):
        assert sorted(cache.remove_stale_partials(source)) == sorted([dead_pid, unlocked, legacy_old])
        assert live.is_dir() and live_pid.is_dir() and legacy_new.is_dir()
        (live / "data").write_text("complete")
    assert (entry / "data").read_text() == "complete" and not (entry / cache.LOCK_FILE).exists()


# --- 4. damaged entries are found, and rebuilt ------------------------------------------------------------


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1000)


@pytest.mark.parametrize("legacy", [False, True], ids=["recorded", "legacy"])
@pytest.mark.parametrize(
    ("name", "damage"),
    [("crops.npy", _truncate), ("slices.npy", Path.unlink), ("manifest.csv", _truncate)],
)
def test_a_damaged_entry_is_rebuilt_with_a_warning(entry_copy, legacy, name, damage):
    entry = entry_copy.entry_dir()
    if legacy:
        (entry / cache.RECORD_FILE).unlink()  # as built before the integrity record existed
    expected = (entry / name).read_bytes()
    damage(entry / name)
    problem = cache.entry_problem(entry)
    # Without the record a cut manifest is found when it is read (row count, last line), not by entry_problem.
    assert (legacy and name == "manifest.csv" and problem is None) or name in problem
    with pytest.warns(UserWarning, match=f"{entry / name}: .*rebuilding the damaged lidc-phantom"):
        manifest = load_phantom(entry_copy, progress=False)
    assert (entry / name).read_bytes() == expected
    assert cache.entry_problem(entry) is None and (entry / cache.RECORD_FILE).is_file()
    assert read_image(manifest["crop_image"].iloc[-1]).shape == (128, 128)
    assert _partials(Path(entry_copy.cache_dir)) == []


def test_an_intact_entry_without_a_record_loads_as_it_is(entry_copy, monkeypatch):
    (entry_copy.entry_dir() / cache.RECORD_FILE).unlink()
    monkeypatch.setattr(
        phantom_build, "build_phantom", lambda *a, **k: pytest.fail("rebuilt an intact entry")
    )
    assert len(load_phantom(entry_copy, progress=False)) > 0


def test_a_damaged_entry_that_cannot_be_rebuilt_says_how(entry_copy, monkeypatch):
    entry = entry_copy.entry_dir()
    _truncate(entry / "crops.npy")

    def read_only(*args, **kwargs):
        raise ConfigError(f"{entry.parent}: the lidc-phantom cache folder is not writable")

    monkeypatch.setattr(phantom_build, "build_phantom", read_only)
    with pytest.warns(UserWarning), pytest.raises(DataError) as caught:
        load_phantom(entry_copy, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{entry / 'crops.npy'}: ") and "truncated" in message
    assert f"Delete the folder {entry}" in message and "lungnet data build lidc-phantom" in message


def test_the_record_lists_every_file(entry_copy):
    record = json.loads((entry_copy.entry_dir() / cache.RECORD_FILE).read_text())
    assert set(record["files"]) == set(cache.ARRAY_FILES) | set(cache.OTHER_FILES)
    assert record["files"]["crops.npy"]["shape"][1:] == [128, 128]


def test_an_entry_another_builder_published_meanwhile_is_kept(tmp_path, monkeypatch):
    # Two processes building one key (the workers of a multi-worker run): the first to finish publishes,
    # the other may already be reading that entry, so the second drops its own instead of replacing it.
    from lungnet.data.sources.phantom import cache

    monkeypatch.setattr(cache, "entry_problem", lambda entry: None)  # these toy entries count as whole
    entry = tmp_path / "key"
    with cache.building(entry) as (ours, _):
        (ours / "who").write_text("ours")
        with cache.building(entry) as (rival, _):
            (rival / "who").write_text("rival")
        assert (entry / "who").read_text() == "rival"
    assert (entry / "who").read_text() == "rival"
    assert not list(tmp_path.glob("*.partial"))
    # an entry that was there before the build began (a damaged one, being rebuilt) is replaced
    with cache.building(entry) as (again, _):
        (again / "who").write_text("rebuilt")
    assert (entry / "who").read_text() == "rebuilt"
