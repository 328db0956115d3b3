"""Inf-Net runs at several label budgets side by side: a table and the label-budget curve (test Dice
against the share of labelled training patients, per model, on all slices and on the readers' slices:
`lungnet.evaluation.segmentation.READERS_SLICES`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from lungnet.errors import LungnetError
from lungnet.evaluation.figures import save_figure
from lungnet.fileio import write_csv
from lungnet.runs.artifacts import run_metrics
from lungnet.runs.folder import require_finished


def budget_rows(run_dirs) -> pd.DataFrame:
    """One row per (run, model): the label budget, test Dice on all slices and on the readers' slices, the
    readers' own Dice on those slices, and the run's minutes."""
    rows = []
    for run_dir in map(Path, run_dirs):
        require_finished(run_dir)
        metrics = run_metrics(run_dir)
        budget = metrics.get("label_budget")
        if metrics.get("task") != "inf_net" or budget is None:
            raise LungnetError(f"{run_dir}: not an Inf-Net study run (no label budget in metrics.json)")
        readers = (metrics.get("reader_agreement") or {}).get("mean_dice")
        for name, model in metrics["models"].items():
            raw = model["raw"]
            rows.append(
                {
                    "run": run_dir.name,
                    "labelled_fraction": budget["fraction"],
                    "labelled_patients": budget["labelled_patients"],
                    "model": name,
                    "dice_all_slices": raw["dice"],
                    "dice_readers_slices": (raw.get("levels", {}).get("readers_slices") or {}).get("dice"),
                    "readers_dice": readers,
                    "s_measure": model["inf_net"]["s_measure"],
                    "minutes": round((model["training"].get("wall_seconds") or 0.0) / 60, 1),
                }
            )
    if not rows:
        raise LungnetError("no runs given")
    return pd.DataFrame(rows).sort_values(["model", "labelled_fraction"]).reset_index(drop=True)


def budget_figure(table: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, column, title in (
        (axes[0], "dice_all_slices", "all test slices"),
        (axes[1], "dice_readers_slices", "the readers' slices"),
    ):
        for name, part in table.groupby("model", sort=False):
            ax.plot(part["labelled_fraction"] * 100, part[column], marker="o", label=name)
        readers = table["readers_dice"].dropna()
        if column == "dice_readers_slices" and len(readers):
            ax.axhline(readers.iloc[0], color="grey", ls="--", label="radiologists vs each other")
        ax.set(xlabel="labelled training patients (%)", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_budgets(run_dirs, out) -> tuple[Path, Path]:
    """``label_budget.csv`` and ``label_budget.png`` under `out`."""
    table = budget_rows(run_dirs)
    out = Path(out)
    csv = write_csv(out / "label_budget.csv", table)
    png = save_figure(budget_figure(table), out / "label_budget.png")
    return csv, png
