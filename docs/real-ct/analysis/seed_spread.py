"""Finished classification runs of one recipe and split that differ only in their seeds, side by side: each
candidate model's test scores at slice, nodule and patient level, its difference from the diameter (with the
patient-bootstrap interval), and the mean and sample standard deviation over the runs.

Usage: .venv/bin/python docs/real-ct/analysis/seed_spread.py RUN [RUN ...]

Reads each run's ``metrics.json`` and ``config.yaml`` only (nothing is predicted again). The rows are the
run's image-only candidates (the selected network, the measured-nodule classifier, their mean) and the
model it recommends; the recommendation is chosen on held-out data by the run itself, never here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lungnet.evaluation.paired import describe_levels
from lungnet.evaluation.recommended import candidates, recommended_name
from lungnet.runs import load_run_config

LEVELS = ("slice", "nodule", "patient")


def scores(record: dict) -> dict[str, float]:
    """``{"slice AUC": .., "slice macro F1": .., ...}`` of one candidate's test record."""
    out = {"slice AUC": record["auc"], "slice macro F1": record["f1_macro"]}
    for level in LEVELS[1:]:
        found = record.get("levels", {}).get(level, {})
        out[f"{level} AUC"] = found.get("auc", np.nan)
        out[f"{level} macro F1"] = found.get("f1_macro", np.nan)
    calibration = record.get("calibration") or {}
    out["ECE after"] = calibration.get("ece_after", np.nan)
    return out


def main(run_dirs: list[str]) -> None:
    table: dict[str, list[dict]] = {}
    for run in map(Path, run_dirs):
        summary = json.loads((run / "metrics.json").read_text())
        config = load_run_config(run)
        chosen = recommended_name(summary) or summary["selected_model"]
        print(
            f"\n{run}: data.seed {config.data.seed}, training.seed {config.training.seed}, "
            f"split seed {config.data.split_seed}; recommends {chosen}"
        )
        for name, record in candidates(summary).items():
            row = scores(record)
            table.setdefault(name, []).append(row)
            if name == chosen:
                table.setdefault("recommended", []).append(row)
            print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
            for line in describe_levels(record.get("against_size_only") or {}):
                print(f"      against the diameter, {line}")
    print(f"\nmean ± sample sd over {len(run_dirs)} runs")
    for name, rows in table.items():
        keys = rows[0].keys()
        cells = []
        for key in keys:
            values = np.array([r[key] for r in rows], dtype=float)
            spread = np.nanstd(values, ddof=1) if len(values) > 1 else np.nan
            cells.append(f"{key} {np.nanmean(values):.3f} ± {spread:.3f}")
        print(f"  {name} ({len(rows)} runs): " + ", ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
