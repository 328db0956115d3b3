"""Figures for segmentation reports: mask overlays, attention-gate maps, metrics, intensity test, Dice spread.

Like `lungnet.evaluation.figures`, every function returns a `matplotlib.figure.Figure` on the Agg canvas
(no pyplot, no global state); write one with `lungnet.evaluation.figures.save_figure` or embed it with
`figure_to_base64_png`. Inputs that cannot be drawn (mismatched lengths, wrong dimensions, masks that are not
0/1) raise `DataError` naming the argument, model or row; missing numbers (None / NaN) are skipped and said so
on the figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.figure import Figure

from lungnet.errors import DataError
from lungnet.evaluation.figures import _figure

_COLORS = [f"C{i}" for i in range(10)]
# Mask colours that stay visible on a grey CT slice; the reference (ground truth) is always green.
REFERENCE_COLOR = "#22dd22"
_MASK_COLORS = ["#ff3b3b", "#3fa7ff", "#ffb000", "#d05cff", "#00e0e0", "#ff7ac8", "#f0f060", "#ffffff"]
_REFERENCE_NAMES = ("ground truth", "ground_truth", "ground-truth", "gt", "truth", "reference", "label")
DEFAULT_METRICS = ("dice", "iou", "small_tumour_recall", "precision", "sensitivity", "f_score")


# -------------------------------------------------------------------------------------------------- checks
def _as_image(array, name: str) -> np.ndarray:
    """A 2-D float image ([H, W] or [H, W, 1])."""
    try:
        a = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a numeric array ({exc})") from None
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise DataError(f"{name}: expected a 2-D [H, W] array, got shape {a.shape}")
    return a


def _as_mask(array, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A 2-D boolean mask from 0/1 (or boolean) values, optionally of a given shape."""
    a = _as_image(array, name)
    if shape is not None and a.shape != tuple(shape):
        raise DataError(f"{name}: mask shape {a.shape} does not match its image shape {tuple(shape)}")
    if not np.isin(a, (0.0, 1.0)).all():
        bad = a[~np.isin(a, (0.0, 1.0))].ravel()[:3].tolist()
        raise DataError(f"{name}: mask values must be 0/1, found {bad}")
    return a > 0.5


def _number(value) -> float | None:
    """A finite float, or None for a missing value (None, NaN, inf, or something that is not a number)."""
    if value is None or isinstance(value, bool | str | Mapping) or np.ndim(value) != 0:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _check_number(value, name: str) -> None:
    """Refuse a value that is neither missing (None / NaN) nor a number."""
    if value is None:
        return
    if isinstance(value, bool | str | bytes | Mapping) or np.ndim(value) != 0:
        raise DataError(f"{name} = {value!r} is not a number")
    try:
        float(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} = {value!r} is not a number") from None


def _show_image(ax, image: np.ndarray) -> None:
    finite = image[np.isfinite(image)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ax.imshow(np.nan_to_num(image, nan=lo), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_mask(ax, mask: np.ndarray, color, *, fill: bool = True, linewidth: float = 1.6, linestyle="-"):
    if not mask.any():
        return
    if fill:
        rgba = np.zeros((*mask.shape, 4))
        rgba[mask] = (*mcolors.to_rgb(color), 0.28)
        ax.imshow(rgba, interpolation="nearest")
    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=linewidth, linestyles=linestyle)


# ------------------------------------------------------------------------------------------------ overlays
def _reference_key(names: Sequence[str]) -> str:
    for name in names:
        if str(name).strip().lower() in _REFERENCE_NAMES:
            return name
    return names[0]


def overlay_comparison_figure(
    images: Sequence[np.ndarray],
    masks: Mapping[str, Sequence[np.ndarray]],
    titles: Sequence[str] | None = None,
    max_rows: int = 6,
) -> Figure:
    """One row per image, one column per entry of ``masks``: the grey image with that mask outlined and filled.

    The reference mask (the entry named "ground truth", "gt", "truth", ... or else the first entry) is drawn
    in green in its own column and as a thin dashed green outline on every other panel, so each model's
    outline can be compared with it. ``titles`` (one per image, e.g. the image id and each model's Dice)
    label the rows. At most ``max_rows`` images are drawn (the first ones).
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise DataError("images: expected a sequence of 2-D images, got one 2-D array (wrap it in a list)")
    images = [_as_image(im, f"images[{i}]") for i, im in enumerate(images)]
    if not images:
        raise DataError("images: nothing to draw (no images given)")
    if not isinstance(masks, Mapping) or not masks:
        raise DataError("masks: expected a non-empty mapping {name: one mask per image}")
    if int(max_rows) < 1:
        raise DataError(f"max_rows {max_rows}: must be at least 1")
    for name, seq in masks.items():
        if len(seq) != len(images):
            raise DataError(f"masks[{name!r}] has {len(seq)} masks for {len(images)} images")
    if titles is not None and len(titles) != len(images):
        raise DataError(f"titles: {len(titles)} titles for {len(images)} images")
    names = list(masks)
    reference = _reference_key(names)
    colors, others = {}, iter(_MASK_COLORS * 4)
    for name in names:
        colors[name] = REFERENCE_COLOR if name == reference else next(others)
    n_rows, n_cols = min(len(images), int(max_rows)), len(names)
    checked = {
        name: [_as_mask(masks[name][i], f"masks[{name!r}][{i}]", images[i].shape) for i in range(n_rows)]
        for name in names
    }
    row_height = 2.35 + (0.25 if titles is not None else 0.0)
    fig = _figure(0.4 + 2.3 * n_cols, 0.5 + row_height * n_rows)
    if titles is None:
        axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    else:  # one sub-figure per row, so that the row's title spans it
        rows = np.atleast_1d(fig.subfigures(n_rows, 1))
        axes = np.asarray([row.subplots(1, n_cols, squeeze=False)[0] for row in rows])
        for row, text in zip(rows, titles, strict=False):
            row.suptitle(str(text), fontsize=8, x=0.01, ha="left")
    for i in range(n_rows):
        ref = checked[reference][i]
        for j, name in enumerate(names):
            ax = axes[i, j]
            _show_image(ax, images[i])
            mask = checked[name][i]
            _draw_mask(ax, mask, colors[name])
            if name != reference:
                _draw_mask(ax, ref, REFERENCE_COLOR, fill=False, linewidth=0.8, linestyle="--")
            if not mask.any():
                ax.text(0.03, 0.03, "empty", transform=ax.transAxes, color=colors[name], fontsize=7)
            if i == 0:
                ax.set_title(str(name), fontsize=10, color="black")
    shown = f"first {n_rows} of {len(images)} images" if n_rows < len(images) else f"{n_rows} images"
    fig.suptitle(f"Masks on test images ({shown}); dashed green: {reference}", fontsize=10)
    return fig


def mask_gallery_figure(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    titles: Sequence[str],
    title: str,
    columns: int = 3,
) -> Figure:
    """Images in a grid of `columns`, each with its (predicted) mask outlined and filled, and its title."""
    if not images or len(masks) != len(images) or len(titles) != len(images):
        raise DataError(f"mask gallery: {len(images)} images, {len(masks)} masks, {len(titles)} titles")
    n_cols = min(columns, len(images))
    n_rows = math.ceil(len(images) / n_cols)
    fig = _figure(0.4 + 2.6 * n_cols, 0.7 + 2.7 * n_rows)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        image = _as_image(images[i], f"images[{i}]")
        _show_image(ax, image)
        _draw_mask(ax, _as_mask(masks[i], f"masks[{i}]", image.shape), REFERENCE_COLOR)
        ax.set_title(str(titles[i]), fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------- attention maps
def attention_maps_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    level_names: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    what: str = "attention coefficient α",
) -> Figure:
    """The image, then each attention-coefficient map (up-sampled to the image size) as a 0-1 heat map on it.
    `what` names the maps' values (colour bar and title): other 0-1 maps, such as probabilities, fit too.

    ``maps`` are the gates' coefficients α in [0, 1], any resolution ([h, w] or [h, w, 1]); each is resized
    bilinearly to the image. ``mask`` (the ground truth, 0/1, image size) is outlined on every panel. The
    figure has one panel per map plus the image panel and one shared colour bar.
    """
    img = _as_image(image, "image")
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = [maps]
    maps = [_as_image(m, f"maps[{k}]") for k, m in enumerate(maps)]
    if not maps:
        raise DataError("maps: no attention maps given")
    for k, m in enumerate(maps):
        if not np.isfinite(m).all():
            raise DataError(f"maps[{k}]: attention coefficients must be finite, found NaN or inf")
    if level_names is not None and len(level_names) != len(maps):
        raise DataError(f"level_names: {len(level_names)} names for {len(maps)} maps")
    names = list(level_names) if level_names is not None else [f"level {k + 1}" for k in range(len(maps))]
    outline = None if mask is None else _as_mask(mask, "mask", img.shape)
    n_panels = 1 + len(maps)
    n_cols = min(n_panels, 5)
    n_rows = -(-n_panels // n_cols)
    fig = _figure(0.9 + 2.6 * n_cols, 0.5 + 2.6 * n_rows)
    axes = list(np.asarray(fig.subplots(n_rows, n_cols, squeeze=False)).ravel())
    for ax in axes[n_panels:]:
        ax.remove()
    axes = axes[:n_panels]
    _show_image(axes[0], img)
    axes[0].set_title("image", fontsize=10)
    heat = None
    for ax, name, m in zip(axes[1:], names, maps, strict=True):
        up = cv2.resize(m.astype(np.float32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        _show_image(ax, img)
        heat = ax.imshow(up, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name} ({m.shape[0]}×{m.shape[1]})", fontsize=10)
    for ax in axes:
        if outline is not None:
            _draw_mask(ax, outline, REFERENCE_COLOR, fill=False, linewidth=1.0)
    fig.colorbar(heat, ax=axes[1:], shrink=0.8, label=what)
    fig.suptitle(
        what[:1].upper() + what[1:] + (" (green: ground-truth outline)" if outline is not None else ""),
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------------------------- metric bars
def segmentation_metrics_figure(
    ours: Mapping[str, Mapping[str, float]],
    published: Mapping[str, Mapping[str, float]] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    title: str | None = None,
) -> Figure:
    """Grouped bars, one group per metric, one bar per model: ours solid, published hatched and lighter.

    A published model with the same name as one of ours shares its colour. Missing values (absent keys, None,
    NaN, non-numbers) get no bar; a metric no model has is left out and named under the axis.
    """
    ours = dict(ours or {})
    published = dict(published or {})
    if not ours and not published:
        raise DataError("nothing to plot: no model metrics (ours) and no published numbers")
    metrics = [str(m) for m in metrics]
    if not metrics:
        raise DataError("metrics: no metric names given")
    for label, group in (("ours", ours), ("published", published)):
        for model, values in group.items():
            if not isinstance(values, Mapping):
                raise DataError(f"{label}[{model!r}]: expected a mapping of metric -> value")
    entries = [(name, values, False) for name, values in ours.items()]
    entries += [(name, values, True) for name, values in published.items()]
    present = [m for m in metrics if any(_number(v.get(m)) is not None for _, v, _ in entries)]
    if not present:
        raise DataError(f"none of the metrics {metrics} has a value for any model")
    missing = [m for m in metrics if m not in present]
    colors = {name: _COLORS[i % 10] for i, name in enumerate(ours)}
    for name in published:
        colors.setdefault(name, _COLORS[len(colors) % 10])
    n = len(entries)
    fig = _figure(max(6.0, 2.2 + len(present) * (0.42 * n + 0.5)), 4.8)
    ax = fig.subplots()
    width = 0.84 / n
    values_all = []
    for i, (name, values, is_published) in enumerate(entries):
        xs = np.arange(len(present)) - 0.42 + width * (i + 0.5)
        label = f"{name} (published)" if is_published else name
        labelled = False
        for x, metric in zip(xs, present, strict=True):
            v = _number(values.get(metric))
            if v is None:
                continue
            values_all.append(v)
            ax.bar(
                x,
                v,
                width=width * 0.92,
                color=colors[name],
                alpha=0.45 if is_published else 0.9,
                hatch="//" if is_published else None,
                edgecolor=colors[name] if is_published else "white",
                linewidth=0.8,
                label=None if labelled else label,
            )
            labelled = True
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(present)), present)
    top = max(values_all) if values_all else 1.0
    ax.set_ylim(min(0.0, min(values_all, default=0.0)), 1.12 if top <= 1.0 else top * 1.15)
    ax.set_ylabel("score (test set)")
    if missing:
        ax.set_xlabel(f"no values for: {', '.join(missing)}", fontsize=8, color="0.35")
    ax.set_title(title or "Segmentation metrics: ours (solid) and published (hatched)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --------------------------------------------------------------------------------------- intensity test
def perturbation_figure(
    dice_by_condition: Mapping[str, Mapping[str, float]], *, title: str | None = None
) -> Figure:
    """Mean Dice of each model under each intensity condition (grouped bars), with each model's std.

    ``dice_by_condition`` is {model: {condition: mean Dice}} (the study's ``dice_by_condition``). The std in
    the legend and title is the population std (ddof = 0) over the model's conditions, the study's
    ``intensity_std``; a missing (None / NaN) value gets no bar and is left out of the std, which says so.
    The dotted line is each model's Dice on the first condition (the unperturbed images).
    """
    if not isinstance(dice_by_condition, Mapping) or not dice_by_condition:
        raise DataError("dice_by_condition: expected a non-empty mapping {model: {condition: mean Dice}}")
    conditions: list[str] = []
    for model, values in dice_by_condition.items():
        if not isinstance(values, Mapping) or not values:
            raise DataError(f"dice_by_condition[{model!r}]: expected a non-empty mapping {{condition: Dice}}")
        for condition, v in values.items():
            _check_number(v, f"dice_by_condition[{model!r}][{condition!r}]")
            if condition not in conditions:
                conditions.append(condition)
    n = len(dice_by_condition)
    fig = _figure(max(6.5, 2.4 + len(conditions) * (0.35 * n + 0.5)), 4.6)
    ax = fig.subplots()
    width = 0.84 / n
    stds, values_all = [], []
    for i, (model, values) in enumerate(dice_by_condition.items()):
        finite = {c: _number(values.get(c)) for c in conditions}
        kept = [v for v in finite.values() if v is not None]
        skipped = len(conditions) - len(kept)
        std = float(np.std(kept, ddof=0)) if kept else float("nan")
        note = f", {skipped} missing" if skipped else ""
        std_text = f"std {std:.4f}{note}" if kept else "std n/a"
        stds.append(f"{model} {std:.4f}" if kept else f"{model} n/a")
        xs = np.arange(len(conditions)) - 0.42 + width * (i + 0.5)
        first = True
        for x, c in zip(xs, conditions, strict=True):
            v = finite[c]
            if v is None:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="0.4")
                continue
            values_all.append(v)
            ax.bar(
                x,
                v,
                width=width * 0.92,
                color=_COLORS[i % 10],
                label=f"{model} ({std_text})" if first else None,
            )
            first = False
            ax.text(x, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=6.5, rotation=90)
        baseline = finite[conditions[0]]
        if baseline is not None:
            ax.axhline(baseline, color=_COLORS[i % 10], linestyle=":", linewidth=1)
    ax.set_xticks(range(len(conditions)), conditions, rotation=20 if len(conditions) > 4 else 0, ha="right")
    ax.set_ylim(0, 1.12 if max(values_all, default=1.0) <= 1.0 else max(values_all) * 1.15)
    ax.set_ylabel("mean test Dice")
    ax.set_title(
        title or "Intensity test: mean Dice per condition (std over conditions: " + "; ".join(stds) + ")",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ----------------------------------------------------------------------------------------- Dice spread
def _dice_values(values, name: str) -> tuple[np.ndarray, int]:
    """(finite Dice values, how many were NaN) of one distribution; values outside [0, 1] are an error."""
    try:
        a = np.asarray(list(values), dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: Dice values must be numbers ({exc})") from None
    finite = a[np.isfinite(a)]
    if ((finite < 0) | (finite > 1)).any():
        bad = finite[(finite < 0) | (finite > 1)][:3].tolist()
        raise DataError(f"{name}: Dice values must lie in [0, 1], found {bad}")
    return finite, int((~np.isfinite(a)).sum())


def dice_distribution_figure(
    per_image_dice: Mapping[str, Sequence[float]],
    reader_dice: Sequence[float] | None = None,
    *,
    reader_label: str = "radiologists\n(vs the others)",
    title: str | None = None,
) -> Figure:
    """Per-image Dice of each model (box plots left, histograms right), beside the reader-to-reader Dice.

    ``reader_dice`` are the radiologists' Dice values against the other readers (e.g. the ``dice`` column of
    `lungnet.evaluation.reader_agreement.reader_agreement`), drawn in grey. NaN values are dropped and counted
    in the labels; a distribution with no values is named but not drawn.
    """
    if not isinstance(per_image_dice, Mapping):
        raise DataError("per_image_dice: expected a mapping {model: per-image Dice values}")
    groups = [
        (str(m), *_dice_values(v, f"per_image_dice[{m!r}]"), _COLORS[i % 10])
        for i, (m, v) in enumerate(per_image_dice.items())
    ]
    if reader_dice is not None:
        groups.append((reader_label, *_dice_values(reader_dice, "reader_dice"), "0.55"))
    if not any(len(values) for _, values, _, _ in groups):
        raise DataError("nothing to plot: no finite Dice values in per_image_dice or reader_dice")
    fig = _figure(max(8.0, 4.5 + 1.1 * len(groups)), 4.4)
    box_ax, hist_ax = fig.subplots(1, 2, width_ratios=[max(1.0, 0.6 * len(groups)), 1.4])
    labels = []
    drawn = [(k, g) for k, g in enumerate(groups) if len(g[1])]
    for name, values, n_nan, _color in groups:
        extra = f", {n_nan} NaN" if n_nan else ""
        labels.append(
            f"{name}\nn={len(values)}{extra}" + (f"\nmean {values.mean():.3f}" if len(values) else "")
        )
    if drawn:
        parts = box_ax.boxplot(
            [g[1] for _, g in drawn],
            positions=[k for k, _ in drawn],
            widths=0.6,
            patch_artist=True,
            showmeans=True,
            meanprops={
                "marker": "D",
                "markerfacecolor": "black",
                "markeredgecolor": "black",
                "markersize": 4,
            },
            medianprops={"color": "black"},
            flierprops={"markersize": 2.5},
        )
        for box, (_, g) in zip(parts["boxes"], drawn, strict=True):
            box.set_facecolor(g[3])
            box.set_alpha(0.7)
    box_ax.set_xticks(range(len(groups)), labels, fontsize=7.5)
    box_ax.set_xlim(-0.6, len(groups) - 0.4)
    box_ax.set_ylim(-0.02, 1.02)
    box_ax.set_ylabel("Dice")
    box_ax.set_title("per image (◆ mean)", fontsize=10)
    box_ax.grid(axis="y", alpha=0.3)
    bins = np.linspace(0, 1, 21)
    for _, (name, values, _, color) in drawn:
        hist_ax.hist(
            values,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.8,
            color=color,
            label=name.replace("\n", " "),
        )
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("Dice")
    hist_ax.set_ylabel("density")
    hist_ax.set_title("distribution", fontsize=10)
    hist_ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        title or "Per-image Dice" + (" and reader-to-reader Dice" if reader_dice is not None else "")
    )
    return fig
