"""The learning-curve figure of a run, shared by the study reports."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from lungnet.evaluation.figures import learning_curve_figure, save_figure
from lungnet.machine import cpu_line
from lungnet.training.fit import unconverged_phases


def learning_curves(run_dir: Path, steps_per_epoch: int | None, monitor: str = "val_loss") -> Path | None:
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
    figure = learning_curve_figure(logs, {p: steps_per_epoch for p in logs}, monitor=monitor)
    return save_figure(figure, run_dir / "figures" / "learning_curves.png")


def convergence_notes(report, run_dir: Path) -> None:
    """A note under the learning curves for each phase its time budget stopped while still improving."""
    for line in unconverged_phases(run_dir):
        report.note(f"Not converged. {line[0].upper()}{line[1:]}.")


def run_note(run_dir: Path) -> str:
    """How this run was made: its command (when started from the CLI), its wall time so far and the machine
    (wall times differ twofold between machines of the same core count)."""
    from lungnet.runs.folder import run_status

    status = run_status(run_dir)
    parts = [f"command: {status['command']}"] if status.get("command") else []
    started = status.get("running_at")
    if started:
        elapsed = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(started)).total_seconds()
        parts.append(f"wall clock from its start to this report: {elapsed / 60:.1f} min")
    machine = status.get("machine")
    if machine:
        parts.append("on " + cpu_line(machine["cpu"], machine["cpus"], machine.get("vector_extensions", [])))
    return "Run " + "; ".join(parts) + "." if parts else ""


CAPTION = (
    "Learning curves: training and validation loss and metric per phase (an ensemble: per member); the "
    "circle marks the epoch whose weights were kept (the best value of training.monitor). A validation "
    "curve still improving at its end means the budget, not convergence, ended training."
)
