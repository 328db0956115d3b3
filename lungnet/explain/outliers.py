"""Latent-space outlier check: a convolutional autoencoder, PCA of its latent vectors, an isolation forest.

The study trains a small autoencoder on the crops, projects the encoder's latent vectors onto their
principal components and flags the images an isolation forest finds easy to isolate: crops unlike the rest
(rendering or cropping failures, other anatomy, artefacts). `latent_outliers` works with any encoder (for
example the classifier's `embedding` model, see `lungnet.explain.retrieval.embedding_model`);
`outliers_from_features` takes precomputed vectors.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from lungnet.errors import ConfigError, DataError


def build_autoencoder(
    input_shape: tuple[int, int, int] = (128, 128, 3),
    latent_dim: int = 32,
    filters: tuple[int, ...] = (16, 32, 64),
) -> tuple[keras.Model, keras.Model]:
    """A convolutional autoencoder for images in ``[0, 1]``; returns ``(autoencoder, encoder)``.

    Encoder: one stride-2 3x3 conv (ReLU) per entry of ``filters``, flatten, ``Dense(latent_dim)`` named
    ``latent``. Decoder: the mirror image with transposed convolutions and a sigmoid output of
    ``input_shape``. Height and width must be divisible by ``2 ** len(filters)``. The autoencoder is compiled
    with Adam and mean squared error; the encoder shares its layers.
    """
    height, width, channels = input_shape
    factor = 2 ** len(filters)
    if height % factor or width % factor:
        raise ConfigError(
            f"input_shape={input_shape}: height and width must be divisible by 2**len(filters) = {factor}"
        )
    if latent_dim < 1:
        raise ConfigError(f"latent_dim={latent_dim}: must be at least 1")
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"enc_conv{i}")(x)
    bottleneck_shape = (height // factor, width // factor, filters[-1])
    x = keras.layers.Flatten(name="enc_flatten")(x)
    latent = keras.layers.Dense(latent_dim, name="latent")(x)
    y = keras.layers.Dense(int(np.prod(bottleneck_shape)), activation="relu", name="dec_dense")(latent)
    y = keras.layers.Reshape(bottleneck_shape, name="dec_reshape")(y)
    for i, f in enumerate(reversed(filters[:-1])):
        y = keras.layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", activation="relu", name=f"dec_deconv{i}"
        )(y)
    outputs = keras.layers.Conv2DTranspose(
        channels, 3, strides=2, padding="same", activation="sigmoid", name="reconstruction"
    )(y)
    autoencoder = keras.Model(inputs, outputs, name="autoencoder")
    encoder = keras.Model(inputs, latent, name="encoder")
    autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return autoencoder, encoder


def fit_autoencoder(
    images: np.ndarray,
    latent_dim: int = 32,
    epochs: int = 20,
    batch_size: int = 32,
    seed: int = 0,
    filters: tuple[int, ...] = (16, 32, 64),
) -> tuple[keras.Model, keras.Model, keras.callbacks.History]:
    """Build and train an autoencoder on ``images`` ``[N, H, W, C]`` in ``[0, 1]``; returns (ae, encoder, history)."""
    images = _as_images(images)
    keras.utils.set_random_seed(seed)
    autoencoder, encoder = build_autoencoder(images.shape[1:], latent_dim, filters)
    history = autoencoder.fit(images, images, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return autoencoder, encoder, history


def latent_outliers(
    encoder: keras.Model,
    images: np.ndarray,
    n_components: int = 10,
    contamination: float | str = 0.05,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Flag the images whose encoder latent vectors are outliers; see `outliers_from_features`."""
    images = _as_images(images)
    latent = encoder.predict(images, batch_size=batch_size, verbose=0)
    return outliers_from_features(
        np.asarray(latent).reshape(len(images), -1), n_components, contamination, seed
    )


def outliers_from_features(
    features: np.ndarray,
    n_components: int = 10,
    contamination: float | str = 0.05,
    seed: int = 0,
    n_estimators: int = 200,
) -> pd.DataFrame:
    """PCA of ``features`` ``[N, D]`` then an isolation forest on the principal components.

    Returns one row per sample: ``anomaly_score`` (higher = more anomalous; the negated
    `IsolationForest.score_samples`), ``is_outlier`` (the forest's flag for the given ``contamination``, the
    expected outlier fraction, or ``"auto"``) and the components ``pc1 .. pcK``. ``n_components`` is capped at
    ``min(N, D)``; ``table.attrs["explained_variance_ratio"]`` holds PCA's ratios.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise DataError(f"features: expected [N >= 2, D], got shape {features.shape}")
    if not np.isfinite(features).all():
        raise DataError(f"features: {int((~np.isfinite(features)).sum())} values are NaN or infinite")
    if contamination != "auto" and not 0.0 < float(contamination) <= 0.5:
        raise ConfigError(f"contamination={contamination}: must be in (0, 0.5] or 'auto'")
    if n_components < 1:
        raise ConfigError(f"n_components={n_components}: must be at least 1")
    n_components = min(n_components, *features.shape)
    pca = PCA(n_components=n_components, random_state=seed)
    components = pca.fit_transform(features)
    forest = IsolationForest(n_estimators=n_estimators, contamination=contamination, random_state=seed)
    flags = forest.fit_predict(components) == -1
    table = pd.DataFrame({"anomaly_score": -forest.score_samples(components), "is_outlier": flags})
    for i in range(n_components):
        table[f"pc{i + 1}"] = components[:, i]
    table.attrs["explained_variance_ratio"] = [float(r) for r in pca.explained_variance_ratio_]
    return table


def _as_images(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise DataError(f"images: expected [N, H, W, C], got shape {images.shape}")
    return images
