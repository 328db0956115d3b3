"""Finished runs of one recipe on one test split, side by side: how much of a result is the seed.

`lungnet compare-runs RUN RUN ... --out DIR` reads each run's ``config.yaml`` and ``metrics.json`` (nothing is
predicted again) and writes, under DIR:

- ``spread_runs.csv``: one row per (run, model, metric) with the test score;
- ``spread.csv``: per (model, metric) the number of runs, mean, sample standard deviation, min and max, and,
  where the study has a simple reference on the same rows, in how many runs the model was ahead of it;
- ``spread.json``: the same summary, the settings the runs differ in, and the model each run recommends;
- ``spread.png``: each run's score as a dot per model and metric, the mean and ± 1 sd as a bar, the
  reference as a dashed line;
- with ``--pair A B`` (repeatable), ``spread_pairs.csv``: per metric the difference A − B within each run
  (both models scored on the same rows by the same run), its mean, sample sd, min and max, and in how many
  runs A was ahead: the study's own question (attention against plain U-Net, say) over seeds.

The runs must score the same test rows: the same task, experiment, data source, grouping, view, split and
split seed, and the same number of test rows; anything else may differ, and
whatever does (usually ``data.seed`` and ``training.seed``) is listed. The references are the ones each study
already scores on its test rows: the diameter fitted on the training split (classification, nodule fusion) and the
radiologists' agreement on their own slices (segmentation, Inf-Net).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.lines import Line2D

from lungnet.errors import LungnetError
from lungnet.evaluation.figures import _figure, save_figure
from lungnet.evaluation.recommended import candidates, recommended_name
from lungnet.fileio import write_csv, write_json
from lungnet.runs.artifacts import run_metrics
from lungnet.runs.folder import CONFIG_FILE, require_finished

# Settings that decide which rows are the test split: runs that differ in one are not comparable.
SAME_TEST_ROWS = (
    "task",
    "name",
    "data.source",
    "data.grouping",
    "data.view",
    "data.split",
    "data.split_level",
    "data.split_seed",
)
DIAMETER = "diameter (size only)"
RADIOLOGISTS = "radiologists (each against the others)"
RECOMMENDED = "recommended"
LEVELS = ("slice", "nodule", "patient")
SEGMENTATION_LEVELS = {"readers_slices": "readers' slices", "nodule": "per nodule", "patient": "per patient"}


def flat_config(run_dir: Path) -> dict[str, object]:
    """A run's saved config as ``{"data.seed": 0, "models[0].model.name": ..., ...}``."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise LungnetError(f"{run_dir}: not a lungnet run folder (no {CONFIG_FILE})")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise LungnetError(f"{path}: not a mapping of settings")
    out: dict[str, object] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            out[key] = value

    walk(raw, "")
    return out


def _classification_cells(record: dict, levels: dict | None, calibration: dict | None) -> dict[str, float]:
    cells = {
        "slice AUC": record.get("auc"),
        "slice macro F1": record.get("f1_macro"),
        "slice F1": record.get("f1"),
    }
    for level in LEVELS[1:]:
        found = (levels or {}).get(level) or {}
        cells[f"{level} AUC"] = found.get("auc")
        cells[f"{level} macro F1"] = found.get("f1_macro")
    cells["ECE after calibration"] = (calibration or {}).get("ece_after")
    return cells


def classification_scores(metrics: dict) -> dict[str, dict[str, float]]:
    """``{model: {metric: test score}}`` of a classification run: every trained model (the selected one at
    every level, the others at slice level, as the run records them), the image-only rows, the model the run
    recommends, and the diameter."""
    rows = candidates(metrics)
    out = {}
    for name, model in metrics["models"].items():
        record = rows.get(name, {**model["test"], "calibration": model.get("calibration")})
        out[name] = _classification_cells(record, record.get("levels"), record.get("calibration"))
    for name, record in rows.items():
        out.setdefault(name, _classification_cells(record, record.get("levels"), record.get("calibration")))
    chosen = recommended_name(metrics)
    if chosen is not None:
        out[RECOMMENDED] = dict(out[chosen])
    size = (metrics.get("baselines") or {}).get("size_only")
    if size:
        out[DIAMETER] = _classification_cells(size, size.get("levels"), None)  # no ECE: None, left out
    return out


def segmentation_scores(metrics: dict) -> dict[str, dict[str, float]]:
    """``{model: {metric: test score}}`` of a segmentation or Inf-Net run (thresholded maps, no CRF), the
    model it selected on validation (as ``recommended``), Inf-Net's malignancy baselines (``malignancy: ...``)
    and the radiologists' agreement on their slices."""
    out = {}
    for name, model in metrics["models"].items():
        raw = model["raw"]
        cells = {"Dice, all slices": raw.get("dice"), "IoU, all slices": raw.get("iou")}
        for level, label in SEGMENTATION_LEVELS.items():
            cells[f"Dice, {label}"] = ((raw.get("levels") or {}).get(level) or {}).get("dice")
        out[name] = cells
    if metrics.get("selected_model") in out:  # the model the run selected on validation and exported
        out[RECOMMENDED] = dict(out[metrics["selected_model"]])
    # Inf-Net's radiomics SVMs (and their diameter row) classify malignancy: their AUC and macro F1 per level
    for name, record in ((metrics.get("radiomics") or {}).get("models") or {}).items():
        out[f"malignancy: {name}"] = _classification_cells(
            record, record.get("levels"), None
        )  # no ECE: left out
    readers = (metrics.get("reader_agreement") or {}).get("mean_dice")
    if readers is not None:
        out[RADIOLOGISTS] = {"Dice, readers' slices": readers}
    return out


def fusion_scores(metrics: dict) -> dict[str, dict[str, float]]:
    """``{model: {metric: test score}}`` of a nodule-fusion run: each model on the segmenter's masks (image-only),
    the same model on the readers' masks (``... (readers' masks)``, a reference), the selected model (as
    ``recommended``) and the diameter."""
    out = {}
    for name, record in metrics["models"].items():
        out[name] = _classification_cells(record, record.get("levels"), record.get("calibration"))
        readers = record.get("with_readers_masks") or {}
        out[f"{name} (readers' masks)"] = _classification_cells(readers, readers.get("levels"), None)
    if metrics.get("selected_model") in out:
        out[RECOMMENDED] = dict(out[metrics["selected_model"]])
    size = (metrics.get("baselines") or {}).get("size_only")
    if size:
        out[DIAMETER] = _classification_cells(size, size.get("levels"), None)
    return out


SCORES = {"classification": classification_scores, "nodule_fusion": fusion_scores}


def _reference(task: str) -> str:
    return DIAMETER if task in SCORES else RADIOLOGISTS


class RunSet:
    """The runs' configs and scores, checked to score the same test rows."""

    def __init__(self, run_dirs) -> None:
        self.runs = [Path(r) for r in run_dirs]
        if len(self.runs) < 2:
            raise LungnetError("compare-runs needs at least two finished runs")
        if len({r.resolve() for r in self.runs}) < len(self.runs):
            raise LungnetError("compare-runs: a run folder is given twice")
        for run in self.runs:
            if not run.is_dir():
                raise LungnetError(f"{run}: run folder not found")
            require_finished(run)
        self.configs = [flat_config(r) for r in self.runs]
        self.metrics = [run_metrics(r) for r in self.runs]
        self.task = str(self.configs[0].get("task", "classification"))
        self._check_same_test_rows()
        score = SCORES.get(self.task, segmentation_scores)
        self.scores = [score(m) for m in self.metrics]

    def _check_same_test_rows(self) -> None:
        for key in SAME_TEST_ROWS:
            values = [c.get(key) for c in self.configs]
            if any(v != values[0] for v in values):
                shown = ", ".join(f"{r}: {v!r}" for r, v in zip(self.runs, values, strict=True))
                raise LungnetError(
                    f"compare-runs: the runs differ in {key} ({shown}), so they do not score the same test "
                    "rows; compare runs of one split"
                )
        sizes = [m.get("n_test") for m in self.metrics]
        if any(s != sizes[0] for s in sizes):
            shown = ", ".join(f"{r}: {s}" for r, s in zip(self.runs, sizes, strict=True))
            raise LungnetError(f"compare-runs: the runs' test splits differ in size ({shown})")

    def differences(self) -> dict[str, list]:
        """``{setting: [value in each run]}`` for every setting that is not the same in all runs."""
        keys = sorted(set().union(*self.configs))
        return {
            key: [c.get(key) for c in self.configs]
            for key in keys
            if any(c.get(key) != self.configs[0].get(key) for c in self.configs)
        }

    def recommended(self) -> list[str | None]:
        """The model each run recommends (classification runs with image-only rows), else its selected one."""
        if self.task == "classification":
            return [recommended_name(m) or m.get("selected_model") for m in self.metrics]
        return [m.get("selected_model") for m in self.metrics]

    def table(self) -> pd.DataFrame:
        """One row per (run, model, metric) with a score."""
        rows = [
            {"run": str(run), "model": model, "metric": metric, "value": float(value)}
            for run, scores in zip(self.runs, self.scores, strict=True)
            for model, cells in scores.items()
            for metric, value in cells.items()
            if value is not None and np.isfinite(value)
        ]
        return pd.DataFrame(rows, columns=["run", "model", "metric", "value"])


def _stats(values: np.ndarray) -> dict[str, float]:
    """Runs, mean, sample sd (NaN for one run), min and max of one score over the runs."""
    return {
        "runs": len(values),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def spread_summary(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per (model, metric): runs, mean, sample sd, min, max, and ``ahead_of_reference`` (runs where the
    model scored above the reference on the same metric in the same run; empty where there is none). Every
    metric a reference has (AUC, F1, Dice) is better higher."""
    rows = []
    for (model, metric), part in table.groupby(["model", "metric"], sort=False):
        values = part["value"].to_numpy()
        ref = table[(table["model"] == reference) & (table["metric"] == metric)].set_index("run")["value"]
        paired = part.set_index("run")["value"].reindex(ref.index).dropna()
        ahead = (
            f"{int((paired > ref[paired.index]).sum())} of {len(paired)}"
            if model != reference and len(paired)
            else ""
        )
        rows.append({"model": model, "metric": metric, **_stats(values), "ahead_of_reference": ahead})
    return pd.DataFrame(rows)


def spread_figure(table: pd.DataFrame, reference: str):
    """One panel per metric: each run a dot per model, the mean ± 1 sd as a bar, the reference dashed."""
    metrics = list(dict.fromkeys(table["metric"]))
    models = [m for m in dict.fromkeys(table["model"]) if m != reference]
    runs = list(dict.fromkeys(table["run"]))
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    fig = _figure(4.2 * columns, 0.9 + 0.32 * len(models) * rows + 0.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        part = table[table["metric"] == metric]
        for y, model in enumerate(models):
            values = part[part["model"] == model]
            if values.empty:
                continue
            for run in values["run"]:
                ax.plot(
                    values.loc[values["run"] == run, "value"],
                    [y],
                    "o",
                    ms=4,
                    color=f"C{runs.index(run) % 10}",
                )
            mean, sd = values["value"].mean(), values["value"].std(ddof=1)
            ax.errorbar(
                [mean], [y], xerr=[[sd if np.isfinite(sd) else 0.0]] * 2, fmt="|", ms=14, color="black"
            )
        ref = part[part["model"] == reference]["value"]
        if len(ref):
            ax.axvline(ref.mean(), color="grey", ls="--", lw=1)
        ax.set_yticks(range(len(models)), models if ax in axes[::columns] else [""] * len(models), fontsize=7)
        ax.set_ylim(len(models) - 0.5, -0.5)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], ls="", marker="o", ms=4, color=f"C{i % 10}", label=Path(run).name)
        for i, run in enumerate(runs)
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(runs), 6), fontsize=7, frameon=False
    )
    fig.suptitle(f"{len(runs)} runs (dots), mean ± 1 sd (bar); dashed: {reference}", fontsize=9)
    return fig


def pair_differences(table: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per metric both models have in a run: the difference ``first − second`` within each run, its mean,
    sample sd, min and max over the runs, and ``first_ahead`` ("k of n" runs where it was above zero)."""
    known = list(dict.fromkeys(table["model"]))
    for name in (first, second):
        if name not in known:
            raise LungnetError(
                f"compare-runs --pair: no model {name!r} in the runs (they have: {', '.join(known)})"
            )
    if first == second:
        raise LungnetError(f"compare-runs --pair: {first!r} given twice; name two models")
    scores = table.pivot_table(index=["metric", "run"], columns="model", values="value", sort=False)
    rows = []
    for metric, part in scores.groupby(level="metric", sort=False):
        diff = (part[first] - part[second]).dropna().to_numpy()
        if not len(diff):
            continue
        ahead = f"{int((diff > 0).sum())} of {len(diff)}"
        rows.append(
            {"first": first, "second": second, "metric": metric, **_stats(diff), "first_ahead": ahead}
        )
    if not rows:
        raise LungnetError(f"compare-runs --pair: {first!r} and {second!r} share no scored metric in any run")
    return pd.DataFrame(rows)


def describe_pairs(pairs: pd.DataFrame) -> str:
    """A terminal line per pair and metric: ``A − B: mean ± sd (min .. max), A ahead in k/n runs``."""
    lines = []
    for row in pairs.to_dict(orient="records"):
        sd = f" ± {row['sd']:.3f}" if np.isfinite(row["sd"]) else ""
        ahead = "/".join(row["first_ahead"].split(" of "))
        lines.append(
            f"  {row['first']} − {row['second']}, {row['metric']}: {row['mean']:+.3f}{sd} "
            f"({row['min']:+.3f} .. {row['max']:+.3f}), {row['first']} ahead in {ahead} runs"
        )
    return "\n".join(lines)


def describe_spread(summary: pd.DataFrame) -> str:
    """A terminal table, a row per metric and a column per model: ``mean ± sd [k/n]``, where k of the n runs
    had the model ahead of the reference (the min and max are in ``spread.csv``)."""

    def cell(row) -> str:
        text = f"{row['mean']:.3f}"
        if row["runs"] > 1 and np.isfinite(row["sd"]):
            text += f" ± {row['sd']:.3f}"
        if row["ahead_of_reference"]:
            text += " [{}/{}]".format(*row["ahead_of_reference"].split(" of "))
        return text

    cells = summary.assign(cell=summary.apply(cell, axis=1))
    table = cells.pivot(index="metric", columns="model", values="cell")
    table = table.reindex(
        index=list(dict.fromkeys(summary["metric"])), columns=list(dict.fromkeys(summary["model"]))
    )
    return table.fillna("").to_string()


def compare_runs(run_dirs, out, pairs=()) -> dict:
    """Write ``spread_runs.csv``, ``spread.csv``, ``spread.json`` and ``spread.png`` under `out` (and
    ``spread_pairs.csv`` for `pairs`, ``(first, second)`` model names); returns the JSON record (with the
    written paths under ``files``)."""
    runs = RunSet(run_dirs)
    reference = _reference(runs.task)
    table = runs.table()
    if table.empty:
        raise LungnetError("compare-runs: the runs' metrics.json hold no test scores")
    summary = spread_summary(table, reference)
    differences = [pair_differences(table, first, second) for first, second in pairs]
    out = Path(out)
    record = {
        "task": runs.task,
        "runs": [str(r) for r in runs.runs],
        "reference": reference,
        "differences": runs.differences(),
        "recommended": runs.recommended(),
        "summary": summary.to_dict(orient="records"),
        "pairs": [row for pair in differences for row in pair.to_dict(orient="records")],
    }
    files = [
        write_csv(out / "spread_runs.csv", table),
        write_csv(out / "spread.csv", summary),
        write_json(out / "spread.json", record),
        save_figure(spread_figure(table, reference), out / "spread.png"),
    ]
    if differences:
        files.append(write_csv(out / "spread_pairs.csv", pd.concat(differences, ignore_index=True)))
    return {**record, "files": [str(f) for f in files]}
