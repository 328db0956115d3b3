"""Finished classification runs of one recipe and split that differ only in their seeds, side by side: what
`lungnet compare-runs` prints (each candidate's test scores at slice, nodule and patient level, their mean and
sample standard deviation over the runs), and, per run, each candidate's difference from the diameter with
the patient-bootstrap interval its run recorded.

Usage: .venv/bin/python docs/real-ct/analysis/seed_spread.py RUN [RUN ...]

Reads each run's ``metrics.json`` and ``config.yaml`` only (nothing is predicted again). The recommendation
is chosen on held-out data by each run itself, never here.
"""

from __future__ import annotations

import sys

from lungnet.evaluation.paired import describe_levels
from lungnet.evaluation.recommended import candidates
from lungnet.reports.run_spread import DIAMETER, RunSet, describe_spread, spread_summary


def main(run_dirs: list[str]) -> None:
    runs = RunSet(run_dirs)
    for run, metrics, chosen in zip(runs.runs, runs.metrics, runs.recommended(), strict=True):
        print(f"\n{run}: recommends {chosen}")
        for name, record in candidates(metrics).items():
            for line in describe_levels(record.get("against_size_only") or {}):
                print(f"  {name} against the diameter, {line}")
    print(f"\nthe runs differ in: {runs.differences()}")
    print(f"mean ± sample sd over {len(runs.runs)} runs [runs ahead of the diameter / runs]")
    print(describe_spread(spread_summary(runs.table(), DIAMETER)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
