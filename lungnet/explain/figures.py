"""Figures for explanations: CAM overlays, LIME superpixels, retrieval grids, latent outliers.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global state, no window), so
they are safe in tests, servers and threads; `save_figure` writes one atomically. Images are shown in grey
when their channels are equal (the crops are grey replicated to 3 channels) and scaled from ``[0, 255]``
when they look like 8-bit images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from skimage.segmentation import find_boundaries, mark_boundaries

from lungnet.errors import DataError
from lungnet.evaluation.figures import save_figure  # noqa: F401  (re-exported: one figure writer)

PANEL_INCHES = 2.3


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image ready for imshow with vmin=0, vmax=1, and the colormap to use."""
    image = np.asarray(image, dtype=np.float32)
    if image.max(initial=0.0) > 1.0:
        image = image / 255.0
    image = np.clip(image, 0.0, 1.0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and np.allclose(image, image[..., :1], atol=1e-3):
        image = image[..., 0]
    return image, ("gray" if image.ndim == 2 else None)


def _grey(image: np.ndarray) -> np.ndarray:
    shown, _ = _display(image)
    return shown if shown.ndim == 2 else shown.mean(axis=-1)


def _show(ax, image: np.ndarray, title: str | None = None, **title_kw) -> None:
    shown, cmap = _display(image)
    ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, **title_kw)


def _name(label, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _prediction(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, probability shown) from sigmoid ``[N]``/``[N, 1]`` or softmax ``[N, K]`` outputs."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1 or probs.shape[1] == 1:
        p = probs.reshape(-1)
        return (p >= 0.5).astype(int), p  # probability of class 1, whatever is predicted
    return probs.argmax(axis=1), probs.max(axis=1)


def _case_title(i: int, y_true, pred, prob, class_names, binary: bool) -> str:
    parts = []
    if y_true is not None:
        parts.append(f"true: {_name(y_true[i], class_names)}")
    if pred is not None:
        what = f"p({_name(1, class_names)})" if binary else "p"
        parts.append(f"pred: {_name(pred[i], class_names)} ({what}={prob[i]:.2f})")
    return "\n".join(parts) or f"image {i}"


def plot_cam_overlays(
    images: np.ndarray,
    cams: Mapping[str, np.ndarray] | np.ndarray,
    y_true: Sequence | None = None,
    probs: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    max_images: int = 8,
    cmap: str = "jet",
    max_alpha: float = 0.6,
    explained: Sequence | None = None,
) -> Figure:
    """One row per image: the input (true/predicted label and probability in the title), then each heatmap.

    ``cams``: ``{"Grad-CAM": [N, H, W], "Grad-CAM++": [N, H, W]}`` (or one array) of maps in ``[0, 1]``,
    drawn with opacity growing with the map value so that the anatomy stays visible where it is low.
    ``probs``: the model's outputs (one sigmoid column or softmax ``[N, K]``). ``explained``: the class each
    image's maps explain, shown above every map.
    """
    if not isinstance(cams, Mapping):
        cams = {"Grad-CAM": cams}
    images = np.asarray(images)
    n = min(len(images), max_images)
    pred, prob = _prediction(probs) if probs is not None else (None, None)
    binary = probs is not None and (np.ndim(probs) == 1 or np.shape(probs)[1] == 1)
    cols = 1 + len(cams)
    fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * n + 0.4), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    mappable = None
    for i in range(n):
        _show(axes[i, 0], images[i], _case_title(i, y_true, pred, prob, class_names, binary))
        for j, (method, maps) in enumerate(cams.items(), start=1):
            cam = np.clip(np.asarray(maps[i], dtype=np.float32), 0.0, 1.0)
            if cam.shape != images[i].shape[:2]:
                raise DataError(f"{method} map {i} has shape {cam.shape}; image is {images[i].shape[:2]}")
            title = method if i == 0 else None
            if explained is not None:
                title = f"{method} for '{_name(explained[i], class_names)}'"
            _show(axes[i, j], images[i], title)
            mappable = axes[i, j].imshow(cam, cmap=cmap, vmin=0.0, vmax=1.0, alpha=max_alpha * cam)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes[:, 1:], shrink=0.6, label="relevance", aspect=30)
    return fig


def cam_figure(
    model,
    images: np.ndarray,
    y_true: Sequence | None = None,
    class_names: Sequence[str] | None = None,
    class_index=None,
    layer_name: str | None = None,
    max_images: int = 8,
) -> Figure:
    """Grad-CAM and Grad-CAM++ overlays for the first ``max_images`` images, explaining ``class_index``
    (default: each image's predicted class)."""
    from lungnet.explain.gradcam import grad_cam, grad_cam_plus_plus

    images = np.asarray(images, dtype=np.float32)[:max_images]
    if class_index is not None and np.ndim(class_index) > 0:
        class_index = np.asarray(class_index)[:max_images]
    probs = model.predict(images, verbose=0)
    if class_index is None:
        explained = _prediction(probs)[0]
    else:
        explained = np.broadcast_to(np.asarray(class_index), (len(images),))
    cams = {
        "Grad-CAM": grad_cam(model, images, class_index, layer_name),
        "Grad-CAM++": grad_cam_plus_plus(model, images, class_index, layer_name),
    }
    y_true = None if y_true is None else list(y_true)[:max_images]
    return plot_cam_overlays(images, cams, y_true, probs, class_names, max_images, explained=explained)


def plot_lime(
    image: np.ndarray,
    explanation,
    label: int | None = None,
    num_features: int | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Input, superpixel boundaries, the strongest positive superpixels, and every superpixel's signed weight."""
    from lungnet.explain.lime_explain import _label, lime_heatmap, lime_mask

    label = _label(explanation, label)
    num_features = num_features or getattr(explanation, "num_features", 5)
    grey = _grey(image)
    rgb = np.stack([grey] * 3, axis=-1)
    segments = explanation.segments
    mask = lime_mask(explanation, label, num_features, positive_only=True)
    weights = lime_heatmap(explanation, label)

    fig = Figure(figsize=(PANEL_INCHES * 4 + 0.6, PANEL_INCHES + 0.7), layout="constrained")
    axes = fig.subplots(1, 4)
    _show(axes[0], image, "input")
    _show(axes[1], mark_boundaries(rgb, segments, color=(1.0, 1.0, 0.0)), f"{segments.max() + 1} superpixels")
    highlighted = rgb * 0.45
    highlighted[mask] = rgb[mask] * 0.6 + np.array([0.0, 0.4, 0.0])
    highlighted = mark_boundaries(np.clip(highlighted, 0, 1), mask.astype(int), color=(0.2, 1.0, 0.2))
    _show(axes[2], highlighted, f"top {num_features} for '{_name(label, class_names)}'")
    _show(axes[3], image, "weights (red: for, blue: against)")
    limit = float(np.abs(weights).max()) or 1.0
    im = axes[3].imshow(
        weights, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), alpha=0.55, interpolation="nearest"
    )
    axes[3].contour(find_boundaries(segments, mode="inner"), levels=[0.5], colors="k", linewidths=0.3)
    fig.colorbar(im, ax=axes[3], shrink=0.8, label="LIME weight")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_retrieval(
    query_images: np.ndarray,
    gallery_images: np.ndarray,
    table: pd.DataFrame,
    class_names: Sequence[str] | None = None,
    max_queries: int = 4,
) -> Figure:
    """One row per query: the query image, then its neighbours with label and cosine similarity.

    ``table``: `lungnet.explain.retrieval.similar_cases` output. A neighbour's title is green when its label
    matches the query's (needs ``query_label`` in the table), red when it does not.
    """
    required = {"query", "rank", "gallery_index", "label", "similarity"}
    if missing := required - set(table.columns):
        raise DataError(f"retrieval table lacks columns {sorted(missing)}")
    queries = sorted(table["query"].unique())[:max_queries]
    k = int(table["rank"].max())
    fig = Figure(figsize=(PANEL_INCHES * (k + 1), PANEL_INCHES * len(queries) + 0.3), layout="constrained")
    axes = fig.subplots(len(queries), k + 1, squeeze=False)
    for row, q in enumerate(queries):
        hits = table[table["query"] == q].sort_values("rank")
        query_title = f"query {q}"
        if "query_label" in hits:
            query_title += f"\nlabel: {_name(hits['query_label'].iloc[0], class_names)}"
        _show(axes[row, 0], query_images[q], query_title, fontweight="bold")
        for ax in axes[row, 1:]:
            ax.axis("off")
        for _, hit in hits.iterrows():
            ax = axes[row, int(hit["rank"])]
            ax.axis("on")
            colour = "black"
            if "same_label" in hit:
                colour = "tab:green" if hit["same_label"] else "tab:red"
            title = f"#{int(hit['gallery_index'])} {_name(hit['label'], class_names)}\ncos {hit['similarity']:.3f}"
            _show(ax, gallery_images[int(hit["gallery_index"])], title, color=colour)
    return fig


def plot_outliers(
    table: pd.DataFrame,
    images: np.ndarray | None = None,
    max_thumbnails: int = 8,
    labels: Sequence | None = None,
) -> Figure:
    """Scatter of the first two principal components coloured by anomaly score, flagged samples ringed in
    red and numbered; below, thumbnails of the most anomalous flagged samples (with ``images``).

    ``table``: `lungnet.explain.outliers.latent_outliers` output.
    """
    if not {"anomaly_score", "is_outlier", "pc1"} <= set(table.columns):
        raise DataError("outlier table needs anomaly_score, is_outlier and pc1 columns")
    flagged = table[table["is_outlier"]].sort_values("anomaly_score", ascending=False)
    thumbs = flagged.index[:max_thumbnails] if images is not None else []
    n_thumbs = max(len(thumbs), 1) if images is not None else 0
    width = max(7.0, PANEL_INCHES * 0.8 * min(n_thumbs, 8))
    fig = Figure(figsize=(width, 5.2 + (1.9 if n_thumbs else 0)), layout="constrained")
    grid = GridSpec(
        2 if n_thumbs else 1, max(n_thumbs, 1), figure=fig, height_ratios=[3, 1] if n_thumbs else [1]
    )
    ax = fig.add_subplot(grid[0, :])
    x = table["pc1"].to_numpy()
    y = table["pc2"].to_numpy() if "pc2" in table else np.arange(len(table))
    sc = ax.scatter(x, y, c=table["anomaly_score"], cmap="viridis", s=18, edgecolors="none")
    ax.scatter(
        x[table["is_outlier"]],
        y[table["is_outlier"]],
        s=90,
        facecolors="none",
        edgecolors="red",
        linewidths=1.2,
        label=f"flagged ({len(flagged)} of {len(table)})",
    )
    for idx in flagged.index[:max_thumbnails]:
        pos = table.index.get_loc(idx)
        ax.annotate(
            str(idx), (x[pos], y[pos]), textcoords="offset points", xytext=(5, 5), fontsize=7, color="red"
        )
    ratios = table.attrs.get("explained_variance_ratio")
    ax.set_xlabel("PC1" + (f" ({ratios[0]:.0%} of variance)" if ratios else ""))
    ax.set_ylabel(
        ("PC2" + (f" ({ratios[1]:.0%})" if ratios and len(ratios) > 1 else "")) if "pc2" in table else "index"
    )
    ax.set_title("Latent space (PCA) with isolation-forest outliers", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.colorbar(sc, ax=ax, label="anomaly score")
    if images is not None:
        if len(thumbs) == 0:
            empty = fig.add_subplot(grid[1, 0])
            empty.axis("off")
            empty.text(0.0, 0.5, "no flagged samples", fontsize=9)
        for j, idx in enumerate(thumbs):
            title = f"#{idx}  score {table.loc[idx, 'anomaly_score']:.2f}"
            if labels is not None:
                title += f"\n{labels[table.index.get_loc(idx)]}"
            _show(fig.add_subplot(grid[1, j]), images[table.index.get_loc(idx)], title)
    return fig
