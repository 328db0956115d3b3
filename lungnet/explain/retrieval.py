"""Content-based retrieval in the classifier's embedding space: "which training nodules look like this one?".

`embed` reads the penultimate feature vector (the layer named ``embedding``), `nearest_neighbours` ranks a
gallery by cosine similarity, and `similar_cases` puts both together and returns, for each query image, its
top-k gallery (training) images with their labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lungnet.errors import ConfigError, DataError

EMBEDDING_LAYER = "embedding"


def embedding_model(model: keras.Model, layer_name: str = EMBEDDING_LAYER) -> keras.Model:
    """A model from ``model``'s input to the output of ``layer_name``."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ConfigError(
            f"layer_name={layer_name!r} is not a layer of model {model.name!r}; "
            f"its last layers are {[layer.name for layer in model.layers[-5:]]}"
        ) from None
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_{layer_name}")


def embed(
    model: keras.Model,
    images_or_dataset,
    batch_size: int = 64,
    layer_name: str = EMBEDDING_LAYER,
) -> np.ndarray:
    """Embeddings ``[N, D]`` (float32) of images ``[N, H, W, C]`` or of a ``tf.data.Dataset``.

    A dataset may yield image batches, ``(images, labels, ...)`` tuples or dicts with an ``"image"`` key; it
    is used as it is batched (``batch_size`` applies to arrays only). Outputs with more than two dimensions
    are flattened.
    """
    encoder = embedding_model(model, layer_name)
    if isinstance(images_or_dataset, tf.data.Dataset):
        data = images_or_dataset.map(_images_only)
        outs = [keras.ops.convert_to_numpy(encoder(batch, training=False)) for batch in data]
        out = np.concatenate(outs) if outs else np.zeros((0, int(np.prod(encoder.output.shape[1:]))))
    else:
        images = np.asarray(images_or_dataset, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise DataError(f"images: expected [N, H, W, C], got shape {images.shape}")
        out = encoder.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(out, dtype=np.float32).reshape(len(out), -1)


def _images_only(*element):
    first = element[0]
    if isinstance(first, dict):
        if "image" not in first:
            raise DataError(f"dataset elements are dicts without an 'image' key: {sorted(first)}")
        return first["image"]
    return first


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise DataError(f"{name}: expected [N, D] embeddings, got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def nearest_neighbours(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    k: int = 5,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` gallery rows most cosine-similar to each query row.

    Returns ``(indices [Q, k], similarities [Q, k])``, most similar first; ties go to the lower gallery
    index. A zero vector has similarity 0 to everything.
    """
    query = _unit(query_emb, "query_emb")
    gallery = _unit(gallery_emb, "gallery_emb")
    if query.shape[1] != gallery.shape[1]:
        raise DataError(f"query_emb has {query.shape[1]} dimensions, gallery_emb has {gallery.shape[1]}")
    if not 1 <= k <= len(gallery):
        raise ConfigError(f"k={k}: must be between 1 and the gallery size ({len(gallery)})")
    indices = np.empty((len(query), k), dtype=np.int64)
    sims = np.empty((len(query), k), dtype=np.float32)
    for start in range(0, len(query), chunk_size):
        s = query[start : start + chunk_size] @ gallery.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        indices[start : start + chunk_size] = order
        sims[start : start + chunk_size] = np.take_along_axis(s, order, axis=1)
    return indices, np.clip(sims, -1.0, 1.0)


def similar_cases(
    model: keras.Model,
    query_images,
    gallery_images,
    gallery_labels: Sequence,
    k: int = 5,
    batch_size: int = 64,
    gallery_ids: Sequence | None = None,
    query_labels: Sequence | None = None,
    gallery_emb: np.ndarray | None = None,
) -> pd.DataFrame:
    """For each query image, its ``k`` nearest gallery (training) images in the embedding space.

    Returns one row per (query, rank): ``query``, ``rank`` (1 = most similar), ``gallery_index``,
    ``gallery_id`` (``gallery_ids`` or the index), ``label`` (the gallery image's label), ``similarity``
    (cosine) and, with ``query_labels``, ``query_label`` and ``same_label``. Pass ``gallery_emb`` to reuse
    precomputed gallery embeddings.
    """
    gallery_labels = np.asarray(gallery_labels)
    if gallery_emb is None:
        gallery_emb = embed(model, gallery_images, batch_size)
    if len(gallery_labels) != len(gallery_emb):
        raise DataError(f"gallery_labels has {len(gallery_labels)} rows, the gallery {len(gallery_emb)}")
    query_emb = embed(model, query_images, batch_size)
    indices, sims = nearest_neighbours(query_emb, gallery_emb, k)
    ids = np.asarray(gallery_ids) if gallery_ids is not None else np.arange(len(gallery_emb))
    n_query = len(query_emb)
    table = pd.DataFrame(
        {
            "query": np.repeat(np.arange(n_query), k),
            "rank": np.tile(np.arange(1, k + 1), n_query),
            "gallery_index": indices.ravel(),
            "gallery_id": ids[indices.ravel()],
            "label": gallery_labels[indices.ravel()],
            "similarity": sims.ravel(),
        }
    )
    if query_labels is not None:
        query_labels = np.asarray(query_labels)
        if len(query_labels) != n_query:
            raise DataError(f"query_labels has {len(query_labels)} rows, the queries {n_query}")
        table["query_label"] = np.repeat(query_labels, k)
        table["same_label"] = table["label"].to_numpy() == table["query_label"].to_numpy()
    return table


def precision_at_k(query_labels: Sequence, neighbour_labels: np.ndarray) -> float:
    """Mean fraction of each query's neighbours (``[Q, k]`` labels) that share the query's label."""
    query_labels = np.asarray(query_labels)
    neighbour_labels = np.asarray(neighbour_labels)
    if neighbour_labels.ndim != 2 or len(neighbour_labels) != len(query_labels):
        raise DataError(
            f"neighbour_labels: expected [Q={len(query_labels)}, k], got shape {neighbour_labels.shape}"
        )
    return float(np.mean(neighbour_labels == query_labels[:, None]))
