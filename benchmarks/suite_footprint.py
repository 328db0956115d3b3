"""Disk the test suite needs and leaves behind: `make bench-test-suite` (about as long as `make test`).

Runs a command (by default `make test`, as CI does) with ``TMPDIR`` pointing to a fresh folder, so that every
temporary file of the run (pytest's ``tmp_path``, the notebooks' run folders, their kernels' files) lands there
and nothing else does. Every `--interval` seconds it records the bytes in that folder and the used bytes of its
file system (which also sees the rest of the machine). Afterwards it lists what the run left there.

CI once failed with its disk full: each run of notebook 05 had left 1.6 GB of checkpoints in /tmp. JSON:
``benchmarks/results/suite_footprint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMMAND = ["make", "test"]  # what CI runs
# TensorFlow's autograph writes a small module per converted function into the temporary folder and never
# removes it: expected, counted apart
AUTOGRAPH_PREFIX = "__autograph_generated"


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder`; files that vanish while it walks are skipped."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                continue
    return total


def _sample(folder: Path, interval: float, samples: list, stop: threading.Event, started: float) -> None:
    while not stop.is_set():
        usage = shutil.disk_usage(folder)
        samples.append((round(time.monotonic() - started, 1), folder_bytes(folder), usage.used))
        stop.wait(interval)


def left_behind(folder: Path) -> dict:
    """What a run left in its temporary folder: autograph's modules counted, everything else named."""
    entries = sorted(folder.iterdir())
    autograph = [p for p in entries if p.name.startswith(AUTOGRAPH_PREFIX)]
    others = {
        p.name: folder_bytes(p) if p.is_dir() else p.stat().st_size for p in entries if p not in autograph
    }
    return {
        "autograph_modules": len(autograph),
        "autograph_bytes": sum(p.stat().st_size for p in autograph),
        "other_entries": others,
        "other_bytes": sum(others.values()),
    }


def measure(command: list[str], interval: float = 2.0, keep: bool = False) -> dict:
    """Run `command` in the repository root with a fresh TMPDIR, sampling its size; the measurements."""
    folder = Path(tempfile.mkdtemp(prefix="lungnet-suite-tmp-"))
    environment = {**os.environ, "TMPDIR": str(folder)}
    samples: list = []
    stop = threading.Event()
    started = time.monotonic()
    sampler = threading.Thread(target=_sample, args=(folder, interval, samples, stop, started), daemon=True)
    used_before = shutil.disk_usage(folder).used
    sampler.start()
    try:
        returncode = subprocess.call(command, cwd=ROOT, env=environment)
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - started
    samples.append((round(wall, 1), folder_bytes(folder), shutil.disk_usage(folder).used))
    peak_at, peak_bytes, _ = max(samples, key=lambda s: s[1])
    result = {
        "command": command,
        "returncode": returncode,
        "wall_seconds": round(wall, 1),
        "interval_seconds": interval,
        "tmp_peak_bytes": peak_bytes,
        "tmp_peak_at_seconds": peak_at,
        "filesystem_used_peak_above_start_bytes": max(s[2] for s in samples) - used_before,
        "left_behind": left_behind(folder),
        "samples": [{"seconds": s, "tmp_bytes": b} for s, b, _ in samples],
    }
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite_footprint.json")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder, to look at what is left"
    )
    parser.add_argument("command", nargs="*", help="the command to measure (default: make test)")
    args = parser.parse_args(argv)
    result = measure(args.command or DEFAULT_COMMAND, args.interval, args.keep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    left = result["left_behind"]
    print(
        f"rc {result['returncode']}, {result['wall_seconds'] / 60:.1f} min; temporary files at their peak "
        f"{result['tmp_peak_bytes'] / 2**20:.0f} MB (at {result['tmp_peak_at_seconds']:.0f} s); left behind "
        f"{left['other_bytes'] / 2**20:.1f} MB in {len(left['other_entries'])} entries, and "
        f"{left['autograph_modules']} autograph modules; {args.out}"
    )
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
