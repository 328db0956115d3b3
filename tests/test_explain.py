"""Explanations: Grad-CAM/Grad-CAM++ against hand-computed maps, LIME on a model with a known region, retrieval
against a hand computation, latent outliers on synthetic images, and figures rendering to PNG.

Every model here is a tiny hand-built flat functional CNN, independent of `lungnet.models`.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lungnet.errors import ConfigError, DataError
from lungnet.explain import (
    build_autoencoder,
    cam_figure,
    class_score_kind,
    embed,
    find_last_conv_layer,
    fit_autoencoder,
    grad_cam,
    grad_cam_plus_plus,
    latent_outliers,
    lime_explanation,
    lime_heatmap,
    lime_mask,
    make_predict_fn,
    make_segmentation_fn,
    nearest_neighbours,
    outliers_from_features,
    plot_cam_overlays,
    plot_lime,
    plot_outliers,
    plot_retrieval,
    precision_at_k,
    save_figure,
    similar_cases,
    top_superpixels,
)

SIZE = 32  # input side of the hand-built models


# --------------------------------------------------------------------------------------------------------------
# Hand-built models


def colour_model(
    head: str = "sigmoid", weights=(4.0, -2.0), output_as_activation: bool = False
) -> keras.Model:
    """Feature map A [B, 16, 16, c]: channel k = 2x2 average of input colour k (stride-2 conv, ReLU).

    GAP -> identity `embedding` -> `probabilities`. The logit of class j is sum_k W[k, j] * mean(A_k), so the
    gradient of a class score w.r.t. A_k is W[k, j] / (16 * 16) everywhere: the maps are known in closed form.
    """
    n_channels = 2 if head == "sigmoid" else 3
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    kernel = np.zeros((2, 2, 3, n_channels), np.float32)
    for k in range(n_channels):
        kernel[:, :, k, k] = 0.25
    conv = keras.layers.Conv2D(n_channels, 2, strides=2, use_bias=False, activation="relu", name="features")
    x = conv(inputs)
    x = keras.layers.Dropout(0.1, name="drop")(x)  # 4-D but not a feature-map layer: must be skipped
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    embedding = keras.layers.Dense(n_channels, use_bias=False, name="embedding")
    x = embedding(x)
    if head == "sigmoid":
        w = np.asarray(weights, np.float32).reshape(n_channels, 1)
    else:
        w = np.asarray(weights, np.float32).reshape(n_channels, n_channels)
    activation = head
    if output_as_activation:
        dense = keras.layers.Dense(w.shape[1], name="logits")
        outputs = keras.layers.Activation(activation, name="probabilities")(dense(x))
    else:
        dense = keras.layers.Dense(w.shape[1], activation=activation, name="probabilities")
        outputs = dense(x)
    conv.set_weights([kernel])
    embedding.set_weights([np.eye(n_channels, dtype=np.float32)])
    dense.set_weights([w, np.zeros(w.shape[1], np.float32)])
    return keras.Model(inputs, outputs)


def tiny_cnn(n_classes: int = 1, size: int = SIZE, seed: int = 0) -> keras.Model:
    """A random-weight CNN shaped like the project's models (conv blocks, GAP, embedding, probabilities)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Activation("relu", name="relu2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(8, activation="relu", name="embedding")(x)
    activation = "sigmoid" if n_classes == 1 else "softmax"
    outputs = keras.layers.Dense(n_classes, activation=activation, name="probabilities")(x)
    return keras.Model(inputs, outputs)


def blob_image(red=(), green=(), blue=(), size: int = SIZE) -> np.ndarray:
    """Zeros with value-1 squares ``(row0, row1, col0, col1)`` in the given colour channels."""
    image = np.zeros((size, size, 3), np.float32)
    for channel, boxes in enumerate((red, green, blue)):
        for r0, r1, c0, c1 in boxes:
            image[r0:r1, c0:c1, channel] = 1.0
    return image


def expected_cam(image: np.ndarray, channel_weights) -> np.ndarray:
    """relu(sum_k w_k A_k) of the colour model, upsampled bilinearly and max-normalised, in NumPy/TF."""
    a = image.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean(axis=(1, 3))[..., : len(channel_weights)]
    cam = np.maximum((a * np.asarray(channel_weights, np.float32)).sum(-1), 0.0)
    cam = tf.image.resize(cam[None, ..., None], (SIZE, SIZE), method="bilinear").numpy()[0, ..., 0]
    return cam / cam.max() if cam.max() > 0 else cam


RED_BOX = (2, 12, 4, 14)  # rows 2-11, cols 4-13 (top left)
GREEN_BOX = (20, 30, 18, 28)  # bottom right


def box_mask(box, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[box[0] : box[1], box[2] : box[3]] = True
    return mask


# --------------------------------------------------------------------------------------------------------------
# Grad-CAM / Grad-CAM++


def test_find_last_conv_layer_skips_pooling_and_dropout():
    assert find_last_conv_layer(colour_model()) == "features"  # not the Dropout after it
    assert find_last_conv_layer(tiny_cnn()) == "relu2"  # not pool2 (a lower-resolution copy)


def test_find_last_conv_layer_without_feature_map_is_a_clear_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="probabilities")(inputs))
    with pytest.raises(ConfigError, match="4-D"):
        find_last_conv_layer(model)


def test_unknown_or_non_spatial_layer_name_lists_the_candidates():
    model = tiny_cnn()
    image = np.zeros((1, SIZE, SIZE, 3), np.float32)
    with pytest.raises(ConfigError, match=r"conv2.*relu2|relu2"):
        grad_cam(model, image, layer_name="nope")
    with pytest.raises(ConfigError, match="not 4-D"):
        grad_cam(model, image, layer_name="embedding")


def test_grad_cam_matches_the_closed_form_for_both_binary_classes():
    """z = 4 mean(A_red) - 2 mean(A_green): class 1 points at the red square, class 0 (-z) at the green one."""
    model = colour_model()
    assert class_score_kind(model) == "logit"
    image = blob_image(red=[RED_BOX], green=[GREEN_BOX])
    cam1 = grad_cam(model, image[None], class_index=1)
    cam0 = grad_cam(model, image[None], class_index=0)
    assert cam1.shape == cam0.shape == (1, SIZE, SIZE) and cam1.dtype == np.float32
    np.testing.assert_allclose(cam1[0], expected_cam(image, [4.0, -2.0]), atol=1e-5)
    np.testing.assert_allclose(cam0[0], expected_cam(image, [-4.0, 2.0]), atol=1e-5)
    assert cam1.max() == pytest.approx(1.0) and cam1.min() >= 0.0
    # each map is inside its own square and zero on the other one
    assert cam1[0][box_mask(RED_BOX)].mean() > 0.9 and cam1[0][box_mask(GREEN_BOX)].max() == 0.0
    assert cam0[0][box_mask(GREEN_BOX)].mean() > 0.9 and cam0[0][box_mask(RED_BOX)].max() == 0.0
    # the predicted class (z = 4 * 100/1024 - 2 * 100/1024 > 0, so malignant) is the default
    assert model.predict(image[None], verbose=0)[0, 0] > 0.5
    np.testing.assert_array_equal(grad_cam(model, image), cam1)  # one [H, W, C] image works too


def test_grad_cam_with_activation_layer_output_uses_the_same_logit():
    image = blob_image(red=[RED_BOX], green=[GREEN_BOX])
    model = colour_model(output_as_activation=True)
    assert class_score_kind(model) == "logit"
    np.testing.assert_allclose(grad_cam(model, image, 0)[0], expected_cam(image, [-4.0, 2.0]), atol=1e-5)


def test_grad_cam_with_softmax_layer_output_uses_the_logits():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(3, name="embedding")(x)
    softmax = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))
    linear = keras.Model(inputs, logits)  # same weights, scores are the logits themselves
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    assert class_score_kind(softmax) == "logit"
    np.testing.assert_allclose(grad_cam(softmax, images, 2), grad_cam(linear, images, 2), atol=1e-6)


def test_grad_cam_without_positive_evidence_is_all_zeros_not_nan():
    model = colour_model()
    image = blob_image(green=[GREEN_BOX])  # only evidence against class 1
    for method in (grad_cam, grad_cam_plus_plus):
        cam = method(model, image, class_index=1)
        assert np.isfinite(cam).all() and cam.max() == 0.0


def test_grad_cam_softmax_each_class_points_at_its_colour():
    model = colour_model(head="softmax", weights=np.eye(3) * 3.0)
    boxes = {0: RED_BOX, 1: GREEN_BOX, 2: (20, 30, 2, 12)}
    image = blob_image(red=[boxes[0]], green=[boxes[1]], blue=[boxes[2]])
    batch = np.stack([image] * 3)
    for method in (grad_cam, grad_cam_plus_plus):
        cams = method(model, batch, class_index=[0, 1, 2])
        for c in range(3):
            inside = cams[c][box_mask(boxes[c])].mean()
            outside = [cams[c][box_mask(boxes[o])].max() for o in range(3) if o != c]
            assert inside > 0.9 and max(outside) == 0.0, (method.__name__, c)
    with pytest.raises(ConfigError, match="class_index=3"):
        grad_cam(model, image, class_index=3)


def test_grad_cam_plus_plus_matches_the_closed_form_weights():
    """With g_k = v_k / hw constant, alpha_k = 1 / (2 + S_k g_k) and w_k = hw alpha_k relu(g_k)."""
    v = np.array([4.0, 1.0])
    model = colour_model(weights=v)
    big, small = (0, 16, 0, 16), (22, 26, 22, 26)
    image = blob_image(red=[big], green=[small])
    a = image.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))[..., :2]
    g = v / (16 * 16)
    w_pp = 16 * 16 * g / (2.0 + a.sum(axis=(0, 1)) * g)
    cam_pp = grad_cam_plus_plus(model, image, class_index=1)[0]
    np.testing.assert_allclose(cam_pp, expected_cam(image, w_pp), atol=1e-5)
    # ... which differs from Grad-CAM's weights (proportional to v): the small square gets more weight
    cam = grad_cam(model, image, class_index=1)[0]
    np.testing.assert_allclose(cam, expected_cam(image, v), atol=1e-5)
    assert cam_pp[box_mask(small)].max() > cam[box_mask(small)].max() + 0.1
    # with the authors' per-channel alpha renormalisation, constant gradients give w_k = relu(g_k): Grad-CAM
    np.testing.assert_allclose(
        grad_cam_plus_plus(model, image, 1, renormalize_alphas=True)[0], cam, atol=1e-5
    )


@pytest.mark.parametrize("n_classes", [1, 3])
def test_cams_on_a_random_cnn_have_the_right_shape_range_and_batching(n_classes):
    model = tiny_cnn(n_classes)
    images = np.random.default_rng(0).random((5, SIZE, SIZE, 3), dtype=np.float32)
    for method in (grad_cam, grad_cam_plus_plus):
        cams = method(model, images)
        assert cams.shape == (5, SIZE, SIZE)
        assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
        np.testing.assert_allclose(method(model, images, batch_size=2), cams, atol=1e-5)
    with pytest.raises(DataError, match="shape"):
        grad_cam(model, images[..., 0])


# --------------------------------------------------------------------------------------------------------------
# LIME

LIME_SIZE = 64
REGION = (8, 28, 8, 28)  # the only part of the image the region model sees


def region_model() -> keras.Model:
    """p = sigmoid(20 * (mean intensity in REGION - 0.1)): depends on REGION only."""
    inputs = keras.Input((LIME_SIZE, LIME_SIZE, 3))
    r0, r1, c0, c1 = REGION
    x = keras.layers.Cropping2D(((r0, LIME_SIZE - r1), (c0, LIME_SIZE - c1)))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    embedding = keras.layers.Dense(1, name="embedding")
    dense = keras.layers.Dense(1, activation="sigmoid", name="probabilities")
    outputs = dense(embedding(x))
    embedding.set_weights([np.full((3, 1), 1 / 3, np.float32), np.zeros(1, np.float32)])
    dense.set_weights([np.array([[20.0]], np.float32), np.array([-2.0], np.float32)])
    return keras.Model(inputs, outputs)


def lime_image() -> np.ndarray:
    """A grey CT-like crop: soft texture, a bright 'nodule' inside REGION and a brighter one outside."""
    rng = np.random.default_rng(1)
    grey = 0.08 + 0.04 * rng.random((LIME_SIZE, LIME_SIZE))
    yy, xx = np.mgrid[:LIME_SIZE, :LIME_SIZE]
    grey[(yy - 17) ** 2 + (xx - 18) ** 2 < 36] = 0.5  # inside REGION
    grey[(yy - 46) ** 2 + (xx - 46) ** 2 < 64] = 0.8  # outside
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def test_make_predict_fn_gives_two_columns_and_handles_uint8_and_channels():
    model = region_model()
    predict = make_predict_fn(model)
    image = lime_image()
    probs = predict(image[None])
    assert probs.shape == (1, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 1] > 0.5  # the nodule in REGION makes it "malignant"
    as_uint8 = np.round(image * 255).astype(np.uint8)
    np.testing.assert_allclose(predict(as_uint8[None]), probs, atol=2e-3)
    np.testing.assert_allclose(predict(image[None, ..., :1]), probs, atol=1e-6)  # 1 channel -> repeated


def test_segmentation_labels_are_contiguous_and_follow_the_blobs():
    segments = make_segmentation_fn(n_segments=30)(lime_image())
    assert segments.shape == (LIME_SIZE, LIME_SIZE)
    assert set(np.unique(segments)) == set(range(segments.max() + 1))
    # the in-region nodule lies (mostly) in one superpixel
    yy, xx = np.mgrid[:LIME_SIZE, :LIME_SIZE]
    nodule = (yy - 17) ** 2 + (xx - 18) ** 2 < 36
    assert np.bincount(segments[nodule]).max() / nodule.sum() > 0.8


def test_lime_top_superpixels_lie_in_the_region_the_model_sees():
    model = region_model()
    image = lime_image()
    predict = make_predict_fn(model)
    heatmap, explanation = lime_explanation(predict, image, num_samples=150, num_features=3, seed=0)
    assert heatmap.shape == (LIME_SIZE, LIME_SIZE) and heatmap.dtype == np.float32
    assert explanation.explained_label == 1  # the predicted class
    region = box_mask(REGION, LIME_SIZE)
    top = top_superpixels(explanation, k=3)
    assert len(top) == 3
    for segment in top:
        assert (region & (explanation.segments == segment)).any(), segment
    # superpixels the model cannot see get (near) zero weight compared with the top one
    outside = [
        s for s in range(explanation.segments.max() + 1) if not (region & (explanation.segments == s)).any()
    ]
    weights = dict(explanation.local_exp[1])
    assert max(abs(weights[s]) for s in outside) < 0.1 * weights[top[0]]
    mask = lime_mask(explanation)
    assert mask.any() and (mask & ~region).sum() < (mask & region).sum()
    np.testing.assert_array_equal(lime_heatmap(explanation), heatmap)
    # deterministic for a seed
    again, _ = lime_explanation(predict, image, num_samples=150, num_features=3, seed=0)
    np.testing.assert_array_equal(again, heatmap)


def test_lime_rejects_bad_input():
    predict = make_predict_fn(region_model())
    with pytest.raises(DataError, match="shape"):
        lime_explanation(predict, np.zeros((2, LIME_SIZE, LIME_SIZE, 3)))
    with pytest.raises(ConfigError, match="num_samples"):
        lime_explanation(predict, lime_image(), num_samples=1)


# --------------------------------------------------------------------------------------------------------------
# Retrieval


def test_nearest_neighbours_matches_a_hand_computation():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [2.0, 0.0]])
    query = np.array([[3.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    idx, sims = nearest_neighbours(query, gallery, k=3)
    # query 0 = (1, 0) direction: cos = 1 (gallery 0), 1 (gallery 4, tie -> lower index first), 1/sqrt(2)
    np.testing.assert_array_equal(idx[0], [0, 4, 2])
    np.testing.assert_allclose(sims[0], [1.0, 1.0, 1 / np.sqrt(2)], atol=1e-6)
    # a zero vector is similar to nothing: all 0, order by index
    np.testing.assert_array_equal(idx[1], [0, 1, 2])
    np.testing.assert_allclose(sims[1], 0.0)
    # (1, 2): cos with (1,1) = 3/sqrt(10), with (0,1) = 2/sqrt(5), with (1,0) = 1/sqrt(5)
    np.testing.assert_array_equal(idx[2], [2, 1, 0])
    np.testing.assert_allclose(sims[2], [3 / np.sqrt(10), 2 / np.sqrt(5), 1 / np.sqrt(5)], atol=1e-6)
    with pytest.raises(ConfigError, match="k=6"):
        nearest_neighbours(query, gallery, k=6)
    with pytest.raises(DataError, match="dimensions"):
        nearest_neighbours(np.ones((1, 3)), gallery)


def test_nearest_neighbours_agrees_with_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    query, gallery = rng.normal(size=(7, 5)), rng.normal(size=(40, 5))
    idx, sims = nearest_neighbours(query, gallery, k=4, chunk_size=3)
    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(idx, np.argsort(-cos, axis=1)[:, :4])
    np.testing.assert_allclose(sims, np.sort(cos, axis=1)[:, ::-1][:, :4], atol=1e-6)


def test_embed_reads_the_embedding_layer_from_arrays_and_datasets():
    model = colour_model()
    images = np.stack([blob_image(red=[RED_BOX]), blob_image(green=[GREEN_BOX]), blob_image()])
    emb = embed(model, images, batch_size=2)
    # identity embedding of GAP(A): the mean of each colour's 2x2 averages = 100 / 1024 for a 10x10 square
    np.testing.assert_allclose(emb, [[100 / 1024, 0.0], [0.0, 100 / 1024], [0.0, 0.0]], atol=1e-6)
    labels = np.array([1, 0, 0])
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    np.testing.assert_allclose(embed(model, ds), emb, atol=1e-7)
    ds_dict = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(2)
    np.testing.assert_allclose(embed(model, ds_dict), emb, atol=1e-7)
    with pytest.raises(ConfigError, match="nope"):
        embed(model, images, layer_name="nope")


def test_similar_cases_returns_the_top_k_training_images_with_labels():
    model = colour_model()
    train = np.stack(
        [blob_image(red=[(0, 8, 0, 8)]), blob_image(green=[(0, 8, 0, 8)]), blob_image(red=[(0, 12, 0, 12)])]
        + [blob_image(red=[(0, 10, 0, 10)], green=[(20, 30, 20, 30)])]
    )
    labels = np.array(["malignant", "benign", "malignant", "malignant"])
    query = np.stack([blob_image(red=[RED_BOX]), blob_image(green=[GREEN_BOX])])
    table = similar_cases(
        model,
        query,
        train,
        labels,
        k=2,
        gallery_ids=["a", "b", "c", "d"],
        query_labels=[
            "malignant",
            "benign",
        ],
    )
    assert list(table.columns) == [
        "query", "rank", "gallery_index", "gallery_id", "label", "similarity", "query_label", "same_label"
    ]  # fmt: skip
    first = table[table["query"] == 0]
    assert first["gallery_index"].tolist()[:2] in ([0, 2], [2, 0])  # pure red: cos 1 with both red images
    assert first["label"].tolist() == ["malignant", "malignant"]
    np.testing.assert_allclose(first["similarity"], 1.0, atol=1e-6)
    second = table[table["query"] == 1]
    assert second["gallery_id"].tolist()[0] == "b" and second["similarity"].is_monotonic_decreasing
    assert precision_at_k(["malignant", "benign"], table["label"].to_numpy().reshape(2, 2)) == pytest.approx(
        0.75
    )


# --------------------------------------------------------------------------------------------------------------
# Latent outliers


def blobs_and_noise(n_blobs: int = 60, n_noise: int = 5, size: int = 32, seed: int = 0):
    """Smooth Gaussian blobs with a few uniform-noise images at known positions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(n_blobs):
        cy, cx = rng.uniform(10, size - 10, 2)
        sigma = rng.uniform(3, 6)
        images.append(0.1 + 0.7 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    noise_at = rng.choice(n_blobs + n_noise, n_noise, replace=False)
    for i in sorted(noise_at):
        images.insert(i, rng.random((size, size)))
    return np.stack(images)[..., None].astype(np.float32), set(noise_at.tolist())


def test_build_autoencoder_shapes_and_checks():
    autoencoder, encoder = build_autoencoder((32, 32, 1), latent_dim=6, filters=(4, 8))
    assert autoencoder.output.shape == (None, 32, 32, 1) and encoder.output.shape == (None, 6)
    assert encoder.get_layer("latent") is autoencoder.get_layer("latent")  # shared weights
    with pytest.raises(ConfigError, match="divisible"):
        build_autoencoder((30, 30, 1), filters=(4, 8))


def test_latent_outliers_flag_the_noise_images_among_smooth_blobs():
    """5 noise images among 60 blobs, 10% contamination (7 flagged): at least 4 of the 5 are flagged.

    (Measured over data/training seeds 0-5, 8 or 20 epochs, 4 or 8 components: 4 or 5 every time.)
    """
    images, noise = blobs_and_noise()
    autoencoder, encoder, history = fit_autoencoder(
        images, latent_dim=8, epochs=8, batch_size=16, filters=(8, 16)
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    table = latent_outliers(encoder, images, n_components=8, contamination=0.1, seed=0)
    assert len(table) == len(images) and table["anomaly_score"].notna().all()
    assert {"anomaly_score", "is_outlier", "pc1", "pc8"} <= set(table.columns)
    flagged = set(table.index[table["is_outlier"]])
    assert len(flagged) == 7 and len(flagged & noise) >= 4, (flagged, noise)
    assert len(table.attrs["explained_variance_ratio"]) == 8


def test_outliers_from_features_is_deterministic_and_validates():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(size=(50, 6)), rng.normal(8.0, 1.0, size=(3, 6))])
    a = outliers_from_features(features, n_components=3, contamination=3 / 53)
    b = outliers_from_features(features, n_components=3, contamination=3 / 53)
    pd.testing.assert_frame_equal(a, b)
    assert set(a.index[a["is_outlier"]]) == {50, 51, 52}
    assert outliers_from_features(features[:4], n_components=10).shape[1] == 2 + 4  # capped at min(N, D)
    with pytest.raises(ConfigError, match="contamination"):
        outliers_from_features(features, contamination=0.7)
    with pytest.raises(DataError, match="NaN"):
        outliers_from_features(np.full((5, 2), np.nan))


# --------------------------------------------------------------------------------------------------------------
# Figures


def assert_png(path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 150
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas


def test_cam_figure_renders(tmp_path):
    model = colour_model()
    images = np.stack([blob_image(red=[RED_BOX], green=[GREEN_BOX]), blob_image(green=[GREEN_BOX])])
    fig = cam_figure(model, images, y_true=[1, 0], class_names=["benign", "malignant"])
    assert len(fig.axes) >= 6
    assert "true: malignant" in fig.axes[0].get_title() and "p(malignant)=" in fig.axes[0].get_title()
    assert fig.axes[1].get_title() == "Grad-CAM for 'malignant'"  # the predicted class is explained
    assert_png(save_figure(fig, tmp_path / "cam.png"))
    # overlays of given maps; a map of the wrong size is an error
    fig = plot_cam_overlays(images, np.zeros((2, SIZE, SIZE)))
    assert_png(save_figure(fig, tmp_path / "cam2.png"))
    with pytest.raises(DataError, match="shape"):
        plot_cam_overlays(images, np.zeros((2, 8, 8)))


def test_lime_figure_renders(tmp_path):
    image = lime_image()
    _, explanation = lime_explanation(make_predict_fn(region_model()), image, num_samples=40, seed=0)
    fig = plot_lime(image, explanation, class_names=["benign", "malignant"], title="LIME")
    assert_png(save_figure(fig, tmp_path / "lime.png"))


def test_retrieval_figure_renders(tmp_path):
    model = colour_model()
    train = np.stack([blob_image(red=[(0, 8 + i, 0, 8)]) for i in range(3)] + [blob_image(green=[GREEN_BOX])])
    query = np.stack([blob_image(red=[RED_BOX]), blob_image(green=[GREEN_BOX])])
    table = similar_cases(model, query, train, [1, 1, 0, 0], k=3, query_labels=[1, 0])
    fig = plot_retrieval(query, train, table, class_names=["benign", "malignant"])
    assert_png(save_figure(fig, tmp_path / "retrieval.png"))


def test_outlier_figure_renders(tmp_path):
    images, _ = blobs_and_noise(n_blobs=30, n_noise=3)
    table = outliers_from_features(images.reshape(len(images), -1), n_components=3, contamination=0.1)
    assert_png(save_figure(plot_outliers(table, images), tmp_path / "outliers.png"))
    assert_png(save_figure(plot_outliers(table), tmp_path / "outliers_no_images.png"))
