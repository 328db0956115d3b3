"""Segmentation report figures: panel counts, missing values, refused inputs, files written."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from lungnet.errors import DataError
from lungnet.evaluation.figures import save_figure
from lungnet.evaluation.segmentation_figures import (
    attention_maps_figure,
    dice_distribution_figure,
    mask_gallery_figure,
    overlay_comparison_figure,
    perturbation_figure,
    segmentation_metrics_figure,
)


def _disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


@pytest.fixture
def images_and_masks():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(32, 32)) + 3 * _disc(32, 16, 16, 6) for _ in range(3)]
    masks = {
        "ground truth": [_disc(32, 16, 16, 6) for _ in range(3)],
        "U-Net": [_disc(32, 17, 16, 5), _disc(32, 16, 15, 7), np.zeros((32, 32), np.uint8)],
        "attention U-Net": [_disc(32, 16, 16, 6).astype(bool) for _ in range(3)],
    }
    return images, masks


def _visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


# ---------------------------------------------------------------------------------------------- overlays
def test_overlay_grid_has_a_panel_per_image_and_mask(images_and_masks, tmp_path):
    images, masks = images_and_masks
    fig = overlay_comparison_figure(images, masks, titles=["a · Dice 0.9 / 1.0", "b", "c"])
    assert isinstance(fig, Figure)
    assert len(_visible_axes(fig)) == 3 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == list(masks)
    assert fig.subfigs[0]._suptitle.get_text().startswith("a ·")
    path = save_figure(fig, tmp_path / "overlays.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mask_gallery_wraps_images_into_rows_and_refuses_unmatched_lists(images_and_masks, tmp_path):
    images, masks = images_and_masks
    four = [*images, images[0]]
    fig = mask_gallery_figure(four, [*masks["U-Net"], masks["U-Net"][0]], list("abcd"), "predicted")
    assert len(fig.axes) == 2 * 3 and [ax.get_title() for ax in fig.axes[:4]] == list("abcd")
    assert fig._suptitle.get_text() == "predicted"
    assert save_figure(fig, tmp_path / "gallery.png").stat().st_size > 0
    with pytest.raises(DataError, match="3 images, 2 masks"):
        mask_gallery_figure(images, masks["U-Net"][:2], list("abc"), "predicted")


def test_overlay_caps_rows_and_accepts_channel_axis(images_and_masks):
    images, masks = images_and_masks
    fig = overlay_comparison_figure([im[..., None] for im in images], masks, max_rows=2)
    assert len(fig.axes) == 2 * 3


def test_overlay_refuses_bad_input(images_and_masks):
    images, masks = images_and_masks
    with pytest.raises(DataError, match=r"masks\['U-Net'\] has 2 masks for 3 images"):
        overlay_comparison_figure(images, {**masks, "U-Net": masks["U-Net"][:2]})
    with pytest.raises(DataError, match=r"images\[1\].*2-D"):
        overlay_comparison_figure([images[0], np.zeros((2, 3, 4)), images[2]], masks)
    with pytest.raises(DataError, match=r"masks\['U-Net'\]\[0\].*\(16, 16\)"):
        overlay_comparison_figure(images, {**masks, "U-Net": [np.zeros((16, 16))] * 3})
    with pytest.raises(DataError, match="0/1"):
        overlay_comparison_figure(images, {"gt": [np.full((32, 32), np.nan)] * 3})
    with pytest.raises(DataError, match="2 titles for 3 images"):
        overlay_comparison_figure(images, masks, titles=["a", "b"])
    with pytest.raises(DataError, match="no images"):
        overlay_comparison_figure([], {})
    with pytest.raises(DataError, match="non-empty mapping"):
        overlay_comparison_figure(images, {})


# ---------------------------------------------------------------------------------------- attention maps
def test_attention_maps_upsampled_with_colorbar(tmp_path):
    image = np.random.default_rng(1).normal(size=(64, 64))
    maps = [np.random.default_rng(k).uniform(size=(64 // 2**k, 64 // 2**k)) for k in range(3)]
    fig = attention_maps_figure(image, maps, ["gate 1", "gate 2", "gate 3"], mask=_disc(64, 30, 30, 8))
    # The image, three maps and the shared colour bar.
    assert len(fig.axes) == 1 + 3 + 1
    assert fig.axes[2].get_title().startswith("gate 2 (32×32)")
    heat = fig.axes[3].images[-1]
    assert heat.get_array().shape == (64, 64) and heat.get_clim() == (0.0, 1.0)
    save_figure(fig, tmp_path / "attention.png")
    assert (tmp_path / "attention.png").stat().st_size > 0


def test_attention_maps_wrap_and_refuse_bad_input():
    image = np.zeros((16, 16))
    fig = attention_maps_figure(image, [np.full((4, 4, 1), 0.5)] * 6)
    assert len(fig.axes) == 7 + 1  # 7 panels in two rows (the spare cells removed) and the colour bar
    with pytest.raises(DataError, match="2 names for 3 maps"):
        attention_maps_figure(image, [np.zeros((4, 4))] * 3, ["a", "b"])
    with pytest.raises(DataError, match=r"maps\[1\].*NaN"):
        attention_maps_figure(image, [np.zeros((4, 4)), np.full((4, 4), np.nan)])
    with pytest.raises(DataError, match=r"maps\[0\].*2-D"):
        attention_maps_figure(image, [np.zeros((2, 4, 4))])
    with pytest.raises(DataError, match="mask shape"):
        attention_maps_figure(image, [np.zeros((4, 4))], mask=np.zeros((8, 8)))
    with pytest.raises(DataError, match="no attention maps"):
        attention_maps_figure(image, [])


# ------------------------------------------------------------------------------------------ metric bars
def test_metrics_figure_ours_and_published(tmp_path):
    ours = {
        "U-Net": {
            "dice": 0.80,
            "iou": 0.70,
            "small_tumour_recall": float("nan"),
            "precision": 0.8,
            "dice_by_condition": {"original": 0.8},
        },
        "attention U-Net": {"dice": 0.83, "iou": 0.72, "small_tumour_recall": None, "precision": 0.85},
    }
    published = {"attention U-Net": {"dice": 0.87, "iou": 0.78, "small_tumour_recall": 0.9}}
    fig = segmentation_metrics_figure(ours, published)
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["dice", "iou", "small_tumour_recall", "precision"]  # no values: sensitivity, f_score
    assert "sensitivity" in ax.get_xlabel() and "f_score" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["U-Net", "attention U-Net", "attention U-Net (published)"]
    assert len(ax.patches) == 3 + 3 + 3  # NaN and None get no bar
    assert any(p.get_hatch() == "//" for p in ax.patches)
    save_figure(fig, tmp_path / "metrics.png")


def test_metrics_figure_refuses_nothing_to_plot():
    with pytest.raises(DataError, match="nothing to plot"):
        segmentation_metrics_figure({}, None)
    with pytest.raises(DataError, match="none of the metrics"):
        segmentation_metrics_figure({"U-Net": {"dice": float("nan")}}, metrics=("dice",))
    with pytest.raises(DataError, match=r"ours\['U-Net'\]"):
        segmentation_metrics_figure({"U-Net": [0.8]})


# ---------------------------------------------------------------------------------------- intensity test
def test_perturbation_figure_titles_each_std():
    dice = {
        "U-Net": {"original": 0.80, "brightness+10%": 0.78, "noise 5%": 0.70},
        "attention U-Net": {"original": 0.83, "brightness+10%": 0.83, "noise 5%": float("nan")},
    }
    fig = perturbation_figure(dice)
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    assert f"U-Net {np.std([0.80, 0.78, 0.70]):.4f}" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[1] == "attention U-Net (std 0.0000, 1 missing)"
    assert len(ax.patches) == 5
    assert [t.get_text() for t in ax.get_xticklabels()] == ["original", "brightness+10%", "noise 5%"]


def test_perturbation_figure_refuses_bad_input():
    with pytest.raises(DataError, match="non-empty mapping"):
        perturbation_figure({})
    with pytest.raises(DataError, match=r"dice_by_condition\['U-Net'\]"):
        perturbation_figure({"U-Net": {}})
    with pytest.raises(DataError, match=r"\['U-Net'\]\['original'\] = 'high'"):
        perturbation_figure({"U-Net": {"original": "high"}})


# ------------------------------------------------------------------------------------------ Dice spread
def test_dice_distribution_with_readers(tmp_path):
    fig = dice_distribution_figure(
        {"U-Net": [0.9, 0.8, float("nan"), 0.0], "attention U-Net": [0.85, 0.95], "empty": []},
        reader_dice=[0.8, 0.85, 0.9],
    )
    assert len(fig.axes) == 2
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(ticks) == 4 and "1 NaN" in ticks[0] and ticks[3].startswith("radiologists")
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        "U-Net",
        "attention U-Net",
        "radiologists (vs the others)",
    ]
    save_figure(fig, tmp_path / "dice.png")
    assert dice_distribution_figure({"U-Net": [0.5]}).axes[0].get_title()


def test_dice_distribution_refuses_bad_input():
    with pytest.raises(DataError, match=r"per_image_dice\['U-Net'\].*\[1.5\]"):
        dice_distribution_figure({"U-Net": [0.5, 1.5]})
    with pytest.raises(DataError, match="no finite Dice"):
        dice_distribution_figure({"U-Net": [float("nan")]}, reader_dice=[])
    with pytest.raises(DataError, match="reader_dice"):
        dice_distribution_figure({"U-Net": [0.5]}, reader_dice=["x"])
