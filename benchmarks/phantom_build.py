"""Benchmark: build the whole lidc-phantom from scratch (annotation database read + rendering + writing).

Target: under 120 s on a 2-core CPU. Writes benchmarks/results/phantom_build.json.
Usage: python benchmarks/phantom_build.py [--per-nodule] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lungnet.data.sources.phantom import PhantomConfig, build_phantom
from lungnet.data.sources.phantom.annotations import load_scans
from lungnet.fileio import write_json
from lungnet.machine import cpu_description

TARGET_SECONDS = 120.0
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-nodule", action="store_true", help="build the one-sample-per-nodule variant")
    parser.add_argument("--keep", help="build into this cache dir and keep it (default: a temp dir, deleted)")
    args = parser.parse_args()
    cache = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lungnet-phantom-bench-"))
    config = PhantomConfig(one_per_nodule=args.per_nodule, cache_dir=str(cache))
    try:
        start = time.perf_counter()
        load_scans.cache_clear()
        load_scans()
        read_db = time.perf_counter() - start
        entry = build_phantom(config, progress=sys.stderr.isatty())
        total = time.perf_counter() - start
        size = sum(f.stat().st_size for f in entry.iterdir())
        n_samples = len((entry / "manifest.csv").read_text().splitlines()) - 1
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    result = {
        "benchmark": "phantom_build",
        "variant": "per-nodule" if args.per_nodule else "per-annotation",
        "n_samples": n_samples,
        "seconds_total": round(total, 1),
        "seconds_reading_annotation_db": round(read_db, 1),
        "samples_per_second": round(n_samples / total, 1),
        "cache_megabytes": round(size / 2**20),
        "target_seconds": TARGET_SECONDS,
        "meets_target": total < TARGET_SECONDS,
        "cpu_count": os.cpu_count(),
        "machine": cpu_description(),
    }
    name = "phantom_build_per_nodule.json" if args.per_nodule else "phantom_build.json"
    write_json(RESULTS / name, result)
    print(
        f"lidc-phantom ({result['variant']}): {n_samples} samples in {total:.1f} s "
        f"(target < {TARGET_SECONDS:.0f} s: {'met' if result['meets_target'] else 'MISSED'}), "
        f"{result['cache_megabytes']} MB -> {RESULTS / name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
