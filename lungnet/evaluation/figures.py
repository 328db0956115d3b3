"""Evaluation figures for reports: confusion matrix, ROC, reliability, confidence, model comparison.

Every function builds and returns a `matplotlib.figure.Figure` drawn with the Agg canvas. No function uses
pyplot, so nothing is shown, no global figure state accumulates, and the interactive backend of a notebook
is left alone (a returned figure still displays inline in Jupyter). Embed a figure in a self-contained HTML
report with `figure_to_base64_png`, or write it with `save_figure` (atomic).
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from lungnet.errors import DataError
from lungnet.evaluation.calibration import reliability_curve
from lungnet.evaluation.metrics import _check, as_probs

_COLORS = [f"C{i}" for i in range(10)]


def _figure(width: float, height: float, layout: str = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------------------------- output helpers
def figure_to_base64_png(fig: Figure, dpi: int = 100) -> str:
    """PNG bytes of ``fig`` as base64 text, for ``<img src="data:image/png;base64,{text}">``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` atomically (temp file + rename); the format follows the suffix (.png, .svg, .pdf)."""
    from lungnet.fileio import atomic_path

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf", "jpg", "jpeg"):
        raise DataError(f"cannot tell the figure format from {path.name!r}: use .png, .svg or .pdf")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


# ------------------------------------------------------------------------------------------ confusion matrix
def confusion_matrix_figure(confusion, class_names: Sequence[str], *, title: str | None = None) -> Figure:
    """Confusion matrix as counts (left) and row-normalised, i.e. recall per true class (right).

    ``confusion`` is K x K with rows = true class, columns = predicted class, e.g.
    ``classification_metrics(...)["confusion_matrix"]``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise DataError(f"confusion matrix has shape {cm.shape} but there are {k} class names")
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = cm / cm.sum(axis=1, keepdims=True)
    side = 2.2 + 0.75 * k
    fig = _figure(2 * side + 1.0, side + 0.5)
    axes = fig.subplots(1, 2)
    panels = [
        (cm, "counts", "{:.0f}", cm.max() or 1.0),
        (normalised, "row-normalised (recall)", "{:.0%}", 1.0),
    ]
    for ax, (values, label, fmt, vmax) in zip(axes, panels, strict=True):
        im = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0, vmax=vmax)
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                text = "–" if np.isnan(v) else fmt.format(v)
                color = "white" if not np.isnan(v) and v > 0.55 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
        long_names = max(len(str(c)) for c in class_names) > 6
        ax.set_xticks(range(k), [str(c) for c in class_names], rotation=30 if long_names and k > 2 else 0)
        ax.set_yticks(range(k), [str(c) for c in class_names])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(label)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title or f"Confusion matrix (n = {int(cm.sum())})")
    return fig


# ------------------------------------------------------------------------------------------------------- ROC
def _models(probs) -> dict[str, np.ndarray]:
    if isinstance(probs, Mapping):
        if not probs:
            raise DataError("no models given (empty mapping of model name -> probabilities)")
        return dict(probs)
    return {"model": probs}


def roc_figure(y_true, probs, class_names: Sequence[str], *, title: str | None = None) -> Figure:
    """ROC curves with AUC in the legend.

    ``probs`` is one [N, K] array or a mapping {model name: [N, K] array} (e.g. the model and the size-only
    baseline, all on the same ``y_true``). Binary: one panel, one malignant-vs-benign curve per model.
    K > 2: one panel per model with one-vs-rest curves for each class present in ``y_true``.
    """
    models = _models(probs)
    checked = {name: _check(y_true, p, class_names) for name, p in models.items()}
    names = tuple(str(c) for c in class_names)
    k = len(names)
    if k == 2:
        fig = _figure(5.0, 4.6)
        axes = [fig.subplots()]
        panels = [(None, list(checked.items()))]
    else:
        n = len(checked)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig = _figure(4.6 * cols, 4.3 * rows)
        axes = list(np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel())
        for ax in axes[n:]:
            ax.set_visible(False)
        panels = [(name, [(name, checked[name])]) for name in checked]
    for ax, (panel_model, entries) in zip(axes, panels, strict=False):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
        if k == 2:
            for i, (model, (y, p, _)) in enumerate(entries):
                if y.min() == y.max():
                    continue
                fpr, tpr, _t = roc_curve(y == 1, p[:, 1])
                auc = roc_auc_score(y == 1, p[:, 1])
                ax.plot(fpr, tpr, color=_COLORS[i % 10], linewidth=2, label=f"{model} (AUC {auc:.3f})")
            ax.set_title(title or f"ROC: {names[1]} vs {names[0]}")
        else:
            (model, (y, p, _)) = entries[0]
            aucs = []
            for c in range(k):
                pos = y == c
                if pos.all() or not pos.any():
                    continue
                fpr, tpr, _t = roc_curve(pos, p[:, c])
                aucs.append(roc_auc_score(pos, p[:, c]))
                ax.plot(
                    fpr, tpr, color=_COLORS[c % 10], linewidth=1.8, label=f"{names[c]} (AUC {aucs[-1]:.3f})"
                )
            macro = f"macro AUC {np.mean(aucs):.3f}" if aucs else "AUC undefined"
            prefix = f"{panel_model}: " if isinstance(probs, Mapping) else ""
            ax.set_title(f"{prefix}one-vs-rest ROC, {macro}", fontsize=10)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.legend(loc="lower right", fontsize=8)
    if k > 2 and title:
        fig.suptitle(title)  # K > 2: panel titles carry the macro AUC
    return fig


# ----------------------------------------------------------------------------------------------- calibration
def reliability_figure(
    y_true,
    probs,
    calibrated_probs=None,
    *,
    n_bins: int = 10,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """Reliability diagram before (and, if given, after) calibration, ECE in the legend; `label` says
    which calibration (e.g. ``Calibration.describe()``).

    Top: accuracy against mean confidence of each non-empty bin (the diagonal is perfect calibration).
    Bottom: how many samples fall in each confidence bin.
    """
    curves = [("uncalibrated", probs, "C3")]
    if calibrated_probs is not None:
        curves.append(("calibrated" + (f" ({label})" if label else ""), calibrated_probs, "C0"))
    fig = _figure(5.2, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    width = 1.0 / n_bins
    for i, (label, p, color) in enumerate(curves):
        rc = reliability_curve(y_true, p, n_bins)
        filled = rc["counts"] > 0
        top.plot(
            rc["confidence"][filled],
            rc["accuracy"][filled],
            marker="o",
            color=color,
            linewidth=2,
            label=f"{label}: ECE {rc['ece']:.3f}",
        )
        centres = rc["bin_edges"][:-1] + width / 2
        shift = (i - (len(curves) - 1) / 2) * width / len(curves)
        bottom.bar(centres + shift, rc["counts"], width=width / len(curves), color=color, alpha=0.7)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy in bin")
    top.set_title(title or "Reliability diagram (predicted-label confidence)")
    top.legend(loc="upper left", fontsize=8)
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("samples")
    return fig


def confidence_histogram_figure(
    y_true, probs, class_names: Sequence[str] | None = None, *, bins: int = 20, title: str | None = None
) -> Figure:
    """Histogram of predicted-label confidence, split into correct and wrong predictions."""
    p = as_probs(probs, None if class_names is None else len(class_names))
    y, p, _ = _check(y_true, p, class_names or [str(i) for i in range(p.shape[1])])
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(1.0 / p.shape[1], 1.0, bins + 1)
    fig = _figure(5.6, 3.8)
    ax = fig.subplots()
    for mask, label, color in ((correct, "correct", "C2"), (~correct, "wrong", "C3")):
        ax.hist(conf[mask], bins=edges, color=color, alpha=0.6, label=f"{label} (n = {int(mask.sum())})")
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("samples")
    ax.set_xlim(edges[0], 1.0)
    ax.set_title(title or "Confidence of correct and wrong predictions")
    ax.legend(fontsize=8)
    return fig


def class_probability_figure(
    y_true, probs, class_names: Sequence[str], *, title: str | None = None
) -> Figure:
    """Predicted probability of each class, grouped by true class (box plots).

    Group t on the x axis holds the samples of true class t; within it, box j shows the predicted probability
    of class j. A well-separated model puts the box of the true class (drawn with a thick edge) near 1 and the
    others near 0; overlapping boxes show which classes are confused.
    """
    y, p, names = _check(y_true, probs, class_names)
    k = len(names)
    fig = _figure(max(5.0, 1.2 + 1.1 * k + 0.25 * k * k), 4.2)
    ax = fig.subplots()
    group_width = 0.8
    box_width = group_width / k
    ticks, labels = [], []
    for t in range(k):
        members = p[y == t]
        ticks.append(t)
        labels.append(f"{names[t]}\n(n = {len(members)})")
        if not len(members):
            continue
        positions = [t - group_width / 2 + box_width * (j + 0.5) for j in range(k)]
        parts = ax.boxplot(
            [members[:, j] for j in range(k)],
            positions=positions,
            widths=box_width * 0.85,
            patch_artist=True,
            showfliers=len(members) > 1,
            flierprops={"markersize": 3},
            medianprops={"color": "black"},
        )
        for j, box in enumerate(parts["boxes"]):
            box.set_facecolor(_COLORS[j % 10])
            box.set_alpha(0.75)
            box.set_linewidth(2.2 if j == t else 0.8)
    for j in range(k):
        ax.bar([0], [0], color=_COLORS[j % 10], alpha=0.75, label=f"p({names[j]})")
    ax.set_xticks(ticks, labels)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted probability")
    ax.set_title(title or "Predicted probability of each class, by true class")
    ax.legend(fontsize=8, ncol=min(k, 5), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


# ---------------------------------------------------------------------------------------- model comparison
def metric_comparison_figure(
    results: Mapping[str, Mapping],
    published: Mapping[str, float] | None = None,
    *,
    metrics: Sequence[str] = ("f1", "auc", "accuracy"),
    baselines: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """Grouped bars of several models' metrics, with published F1 values as markers.

    Args:
        results: {model name: metrics dict} (`classification_metrics` output; a ``"ci"`` entry
            {metric: [low, high]} such as `bootstrap_ci` returns draws error bars).
        published: optional {model name: published F1}; drawn as a black diamond over that model's F1 bar
            (a published model without results gets a marker and no bar).
        metrics: which metrics to show, one group each.
        baselines: model names drawn hatched (e.g. the size-only and majority baselines).
    """
    published = dict(published or {})
    names = list(results) + [m for m in published if m not in results]
    if not names:
        raise DataError("nothing to plot: no model results and no published numbers")
    n = len(names)
    fig = _figure(max(5.5, 1.6 + len(metrics) * (0.45 * n + 0.6)), 4.6)
    ax = fig.subplots()
    width = 0.8 / n
    for i, model in enumerate(names):
        m = results.get(model, {})
        ci = m.get("ci") or {}
        xs = np.arange(len(metrics)) - 0.4 + width * (i + 0.5)
        for x, metric in zip(xs, metrics, strict=True):
            value = m.get(metric)
            if value is None:
                if model in results:
                    ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="0.4")
                continue
            interval = ci.get(metric)
            yerr = None
            if interval is not None:
                yerr = [[max(value - interval[0], 0.0)], [max(interval[1] - value, 0.0)]]
            ax.bar(
                x,
                value,
                width=width * 0.92,
                color=_COLORS[i % 10],
                hatch="//" if model in baselines else None,
                edgecolor="white" if model in baselines else None,
                yerr=yerr,
                capsize=2,
                label=model if metric == next((k for k in metrics if m.get(k) is not None), None) else None,
            )
            ax.text(x, value / 2, f"{value:.2f}", ha="center", va="center", fontsize=7, rotation=90)
        if model in published and "f1" in metrics:
            x = xs[list(metrics).index("f1")]
            ax.plot(x, published[model], marker="D", color="black", markersize=6, linestyle="none")
            if model not in results:
                ax.text(x, published[model] + 0.03, model, ha="center", fontsize=7, rotation=90)
    if published and "f1" in metrics:
        ax.plot([], [], marker="D", color="black", linestyle="none", label="published F1")
    ax.set_xticks(range(len(metrics)), list(metrics))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (test set)")
    ax.set_title(title or "Models and baselines")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ------------------------------------------------------------------------------------------- learning curves
def _final_output_metrics(log: pd.DataFrame) -> pd.DataFrame:
    """A log of a model with side outputs, its final output's metrics also under their plain names
    (``val_probabilities_iou`` -> ``val_iou``), as `lungnet.training.checkpoints.monitored_value` reads them."""
    prefix = "probabilities_"
    aliases = {}
    for column in log.columns:
        split = "val_" if column.startswith("val_") else ""
        rest = column[len(split) :]
        if rest.startswith(prefix) and not rest.endswith("loss"):
            alias = split + rest[len(prefix) :]
            if alias not in log.columns:
                aliases[alias] = log[column]
    return log.assign(**aliases) if aliases else log


# a model's phases: Semi-Inf-Net's rounds, fine-tuning, and the fusion study's masks (readers', then predicted)
PHASE_SUFFIX = re.compile(r"_(labelled|readers|finetuned|predicted|round(\d+)|final)$")


def _phase_model(phase: str) -> str:
    """The model a training phase belongs to: ``semi_round002`` -> ``semi``, ``cnn_finetuned`` -> ``cnn``."""
    return PHASE_SUFFIX.sub("", phase)


def _phase_rank(phase: str) -> int:
    """A phase's place in its model's training: first phase, fine-tuning, rounds in order, final."""
    match = PHASE_SUFFIX.search(phase)
    if match is None or match.group(1) in ("labelled", "readers"):
        return 0
    if match.group(1) in ("finetuned", "predicted"):
        return 1
    return int(match.group(2)) + 1 if match.group(2) else 10**6


def training_order(phases) -> list[str]:
    """`phases` grouped by model (in the order models first appear) and in training order within each (run
    folders list phases by name, where ``final`` sorts before ``round001``)."""
    models = list(dict.fromkeys(_phase_model(p) for p in phases))
    return sorted(phases, key=lambda p: (models.index(_phase_model(p)), _phase_rank(p)))


def learning_curve_figure(
    logs: Mapping[str, pd.DataFrame],
    steps_per_epoch: Mapping[str, int | None] | None = None,
    monitor: str = "val_loss",
) -> Figure:
    """Training and validation curves per phase, from the phases' CSV logs (``logs/<phase>.csv``).

    Left: loss and validation loss; right: the validation metric the log has (`monitor` when it is a metric,
    else ``val_auc``, ``val_f1_macro``, ``val_iou`` or ``val_accuracy``). The x axis is training steps when a
    phase's steps per epoch are known, else epochs. The epoch whose weights were kept (best `monitor`) is
    circled, so whether training had converged, or stopped while still improving, can be seen at a glance.
    The phases of one model follow one another on the x axis (`training_order`), in one colour under one
    legend entry, each boundary a thin vertical line: ``<name>_finetuned`` after ``<name>`` (transfer, then
    fine-tune), ``<model>_labelled``, ``<model>_round001``.., ``<model>_final`` (Semi-Inf-Net's rounds).
    Every other phase (another model, an ensemble member) starts at zero.
    """
    if not logs:
        raise DataError("no training logs to plot")
    steps_per_epoch = steps_per_epoch or {}
    fig = _figure(11, 4)
    loss_ax, metric_ax = fig.subplots(1, 2)
    in_steps = all(steps_per_epoch.get(name) for name in logs)
    candidates = ("val_auc", "val_f1_macro", "val_iou", "val_accuracy")
    if monitor != "val_loss":
        candidates = (monitor, *candidates)
    offset, previous, models = 0, None, []
    for name in training_order(logs):
        log = _final_output_metrics(logs[name])
        model = _phase_model(name)
        continues = previous is not None and model == _phase_model(previous)
        if not continues:
            models.append(model)
        first = not continues  # one legend entry per model
        color = _COLORS[(len(models) - 1) % len(_COLORS)]
        per = steps_per_epoch.get(name) or 1
        start = offset if continues else 0
        if continues:
            for ax in (loss_ax, metric_ax):
                ax.axvline(start, color=color, lw=0.5, alpha=0.4, gid="phase boundary")
        previous = name
        x = start + (np.arange(len(log)) + 1) * (per if in_steps else 1)
        loss_ax.plot(
            x, log["loss"], ".-", color=color, alpha=0.5, label=f"{model}: training" if first else None
        )
        if "val_loss" in log:
            loss_ax.plot(
                x, log["val_loss"], ".-", color=color, label=f"{model}: validation" if first else None
            )
        metric = next((m for m in candidates if m in log), None)
        if metric is not None:
            metric_label = f"{model}: validation {metric[4:]}" if first else None
            metric_ax.plot(x, log[metric], ".-", color=color, label=metric_label)
            train = metric[4:]
            if train in log:
                metric_ax.plot(x, log[train], color=color, alpha=0.5, ls="--")
        if monitor in log and log[monitor].notna().any():
            values = log[monitor].to_numpy()
            lower = monitor.endswith("loss")
            best = int(np.nanargmin(values) if lower else np.nanargmax(values))
            ax = loss_ax if monitor == "val_loss" else metric_ax
            ax.plot(x[best], values[best], "o", color=color, mfc="none", ms=9)
        offset = x[-1] if len(x) else offset
    unit = "training steps" if in_steps else "epochs"
    kept = f"circle: best {monitor}, kept"
    loss_ax.set(xlabel=unit, ylabel="loss", title=f"loss\n({kept})" if monitor == "val_loss" else "loss")
    metric_ax.set(
        xlabel=unit,
        ylabel="metric",
        title="validation metric, dashed: training" + ("" if monitor == "val_loss" else f"\n({kept})"),
    )
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a log with no metric (a restoration loss) leaves one empty
            ax.legend(fontsize=7)
    return fig
