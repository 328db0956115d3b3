"""Explain the selected classifier: Grad-CAM / Grad-CAM++, LIME, embedding retrieval, latent-space outliers.

Figures go to ``<run>/figures/``; flagged outliers and retrieval neighbours to CSV files beside them.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lungnet.data.dataset import classification_pipeline, image_column
from lungnet.evaluation.figures import save_figure
from lungnet.explain import (
    fit_autoencoder,
    grad_cam,
    grad_cam_plus_plus,
    latent_outliers,
    lime_explanation,
    make_predict_fn,
    plot_cam_overlays,
    plot_lime,
    plot_outliers,
    plot_retrieval,
    similar_cases,
)
from lungnet.fileio import write_csv
from lungnet.models.ensemble import first_member


def split_images(data, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Preprocessed images of one split (no augmentation, manifest order) and its manifest rows."""
    frame = data.split(split)
    ds = classification_pipeline(frame, data.config, len(data.class_names), batch_size=64)
    return np.concatenate([x.numpy() for x, _ in ds]), frame


def _pick_cases(probs: np.ndarray, y_true: np.ndarray, n: int) -> np.ndarray:
    """A spread of cases: the most confident correct one per class, then the most confident mistakes."""
    pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    picks: list[int] = []
    for k in range(probs.shape[1]):
        correct = np.flatnonzero((pred == k) & (y_true == k))
        if len(correct):
            picks.append(int(correct[np.argmax(confidence[correct])]))
    wrong = np.flatnonzero(pred != y_true)
    picks += [int(i) for i in wrong[np.argsort(-confidence[wrong])]]
    picks += [i for i in range(len(y_true)) if i not in picks]
    return np.array(list(dict.fromkeys(picks))[:n])


def explain_selected(config, data, selected, run_dir: Path) -> dict[str, tuple[Path, str]]:
    """Write the explanation figures of the selected model; returns {name: (png path, caption)}."""
    cfg = config.evaluation
    figures_dir = run_dir / "figures"
    model = keras.models.load_model(selected.path)
    explained = first_member(model)  # an ensemble is explained through its first member's layers
    member_note = " (first member of the ensemble)" if explained is not model else ""
    names = data.class_names
    test_images, test_frame = split_images(data, "test")
    y_test = test_frame["target"].to_numpy()
    cases = _pick_cases(selected.test_probs, y_test, cfg.explain_samples)
    images = test_images[cases]
    out: dict[str, tuple[Path, str]] = {}

    layer = selected.explanation_layer  # declared by the model's registry entry
    cams = {
        "Grad-CAM": grad_cam(explained, images, layer_name=layer),
        "Grad-CAM++": grad_cam_plus_plus(explained, images, layer_name=layer),
    }
    fig = plot_cam_overlays(
        images, cams, y_true=y_test[cases], probs=selected.test_probs[cases], class_names=names
    )
    out["gradcam"] = (
        save_figure(fig, figures_dir / "gradcam.png"),
        f"Grad-CAM and Grad-CAM++ of {selected.name}{member_note} (predicted class) on test cases",
    )

    predict = make_predict_fn(model)
    image = images[0]
    _, explanation = lime_explanation(predict, image, num_samples=cfg.lime_samples, seed=config.training.seed)
    fig = plot_lime(image, explanation, class_names=names)
    out["lime"] = (
        save_figure(fig, figures_dir / "lime.png"),
        f"LIME superpixels for one test case ({cfg.lime_samples} perturbed samples)",
    )

    train_images, train_frame = split_images(data, "train")
    table = similar_cases(
        explained,
        images,
        train_images,
        train_frame["class_name"].tolist(),
        k=cfg.retrieval_k,
        gallery_ids=train_frame[image_column(train_frame, data.config.view)].tolist(),
        query_labels=[names[i] for i in y_test[cases]],
    )
    write_csv(figures_dir / "retrieval.csv", table)
    fig = plot_retrieval(images, train_images, table, class_names=names)
    out["retrieval"] = (
        save_figure(fig, figures_dir / "retrieval.png"),
        f"Top-{cfg.retrieval_k} training images nearest to each test case (cosine, 'embedding' layer"
        f"{member_note})",
    )

    if cfg.outliers:  # the autoencoder learns the training images; test images far from them are flagged
        _, encoder, _ = fit_autoencoder(
            train_images, epochs=cfg.autoencoder_epochs, seed=config.training.seed
        )
        flagged = latent_outliers(encoder, test_images, seed=config.training.seed)
        flagged.insert(0, "image", test_frame[image_column(test_frame, data.config.view)].to_numpy())
        flagged.insert(1, "patient_id", test_frame["patient_id"].to_numpy())
        write_csv(figures_dir / "outliers.csv", flagged)
        fig = plot_outliers(flagged, test_images, labels=test_frame["class_name"].tolist())
        out["outliers"] = (
            save_figure(fig, figures_dir / "outliers.png"),
            f"Latent-space outliers of the test split (autoencoder trained on the training split, "
            f"PCA of its latent vectors, IsolationForest) "
            f"({int(flagged['is_outlier'].sum())} flagged; list in figures/outliers.csv)",
        )
    return out
