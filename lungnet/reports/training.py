"""The learning-curve figure of a run, shared by the study reports."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lungnet.evaluation.figures import learning_curve_figure, save_figure


def learning_curves(run_dir: Path, steps_per_epoch: int | None) -> Path | None:
    """``figures/learning_curves.png`` of every finished phase (``phases.json`` order), or None without logs."""
    phases_file = run_dir / "phases.json"
    phases = list(json.loads(phases_file.read_text())) if phases_file.is_file() else []
    logs = {
        p: pd.read_csv(run_dir / "logs" / f"{p}.csv")
        for p in phases
        if (run_dir / "logs" / f"{p}.csv").is_file()
    }
    logs = {p: log for p, log in logs.items() if len(log)}
    if not logs:
        return None
    figure = learning_curve_figure(logs, {p: steps_per_epoch for p in logs})
    return save_figure(figure, run_dir / "figures" / "learning_curves.png")


CAPTION = (
    "Learning curves: training and validation loss and metric per phase; the circle marks the epoch whose "
    "weights were kept (lowest validation loss). A curve still falling at its end means the budget, not "
    "convergence, ended training."
)
