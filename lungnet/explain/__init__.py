"""Explanations for trained classifiers: Grad-CAM/Grad-CAM++, LIME, embedding retrieval, latent outliers.

All tools take flat Keras 3 functional models: input ``[B, H, W, C]`` float32 in ``[0, 1]``, an output layer
named ``probabilities`` (one sigmoid unit or a softmax), a layer named ``embedding`` (penultimate features)
and a 4-D feature map before global pooling. `figures` turns the results into matplotlib figures.
"""

from lungnet.explain.figures import (
    cam_figure,
    plot_cam_overlays,
    plot_lime,
    plot_outliers,
    plot_retrieval,
    save_figure,
)
from lungnet.explain.gradcam import (
    class_score_kind,
    feature_map_layers,
    find_last_conv_layer,
    grad_cam,
    grad_cam_plus_plus,
)
from lungnet.explain.lime_explain import (
    lime_explanation,
    lime_heatmap,
    lime_mask,
    make_predict_fn,
    make_segmentation_fn,
    top_superpixels,
)
from lungnet.explain.outliers import (
    build_autoencoder,
    fit_autoencoder,
    latent_outliers,
    outliers_from_features,
)
from lungnet.explain.retrieval import (
    embed,
    embedding_model,
    nearest_neighbours,
    precision_at_k,
    similar_cases,
)

__all__ = [
    "build_autoencoder",
    "cam_figure",
    "class_score_kind",
    "embed",
    "embedding_model",
    "feature_map_layers",
    "find_last_conv_layer",
    "fit_autoencoder",
    "grad_cam",
    "grad_cam_plus_plus",
    "latent_outliers",
    "lime_explanation",
    "lime_heatmap",
    "lime_mask",
    "make_predict_fn",
    "make_segmentation_fn",
    "nearest_neighbours",
    "outliers_from_features",
    "plot_cam_overlays",
    "plot_lime",
    "plot_outliers",
    "plot_retrieval",
    "precision_at_k",
    "save_figure",
    "similar_cases",
    "top_superpixels",
]
