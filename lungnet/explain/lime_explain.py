"""LIME (Ribeiro et al., KDD 2016) superpixel explanations for grey CT crops.

`lime_explanation` wraps `lime.lime_image.LimeImageExplainer`: it splits the image into superpixels, hides random
subsets of them, asks the classifier for its probabilities on each perturbed copy and fits a weighted linear
model; each superpixel's weight is its contribution to the explained class.

Choices for CT crops (documented because they change the answer):

- superpixels: SLIC on the grey image (the mean of the channels) with ~50 segments and low compactness, so
  that segments follow nodule and vessel edges in a 128 px crop; LIME's default (quickshift on RGB) is made
  for colour photographs;
- hidden superpixels are set to ``hide_color=0.0`` (black: air in a lung window) by default. LIME's own
  default (``None``) replaces a superpixel by its mean intensity, which leaves a uniform superpixel, such as
  the inside of a solid nodule, unchanged and so can never show its importance;
- the classifier is called in batches through a predict function that includes the model's preprocessing
  (`make_predict_fn`), and the perturbed images are built vectorised (no per-sample progress bar).

The result is deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from lime import lime_image
from skimage.segmentation import slic

from lungnet.errors import ConfigError, DataError

PredictFn = Callable[[np.ndarray], np.ndarray]


def make_predict_fn(
    model: keras.Model,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 64,
) -> PredictFn:
    """A batch predict function ``images [N, H, W, C] -> probabilities [N, K]`` for LIME.

    ``preprocess`` maps the raw batch to the model's input; by default integer images are divided by 255
    and float images are passed as they are (the models take float32 in ``[0, 1]``). Channels are adapted
    to the model's input: a 3-channel grey image is averaged for a 1-channel model and a 1-channel image is
    repeated for a 3-channel model. A single sigmoid output ``p`` becomes two columns ``[1 - p, p]``.
    """
    in_channels = model.inputs[0].shape[-1]

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if preprocess is not None:
            x = np.asarray(preprocess(images), dtype=np.float32)
        elif np.issubdtype(images.dtype, np.integer):
            x = images.astype(np.float32) / 255.0
        else:
            x = images.astype(np.float32)
        if in_channels == 1 and x.shape[-1] != 1:
            x = x.mean(axis=-1, keepdims=True)
        elif in_channels not in (None, 1) and x.shape[-1] == 1:
            x = np.repeat(x, in_channels, axis=-1)
        outs = [
            keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
            for i in range(0, len(x), batch_size)
        ]
        probs = np.concatenate(outs).astype(np.float64)
        if probs.ndim == 1:
            probs = probs[:, None]
        if probs.shape[1] == 1:
            probs = np.concatenate([1.0 - probs, probs], axis=1)
        return probs

    return predict


def make_segmentation_fn(
    n_segments: int = 50,
    compactness: float = 0.1,
    sigma: float = 1.0,
) -> Callable[[np.ndarray], np.ndarray]:
    """SLIC superpixels on the grey version of an ``[H, W, C]`` image, labelled ``0..S-1``.

    ``compactness`` is in the units of the grey image scaled to ``[0, 1]``: ~0.1 follows edges in CT crops;
    larger values give more regular, grid-like superpixels.
    """
    if n_segments < 2:
        raise ConfigError(f"n_segments={n_segments}: need at least 2 superpixels")

    def segment(image: np.ndarray) -> np.ndarray:
        grey = np.asarray(image, dtype=np.float64)
        if grey.ndim == 3:
            grey = grey.mean(axis=-1)
        if grey.max() > 1.0:
            grey = grey / 255.0
        segments = slic(
            grey,
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            channel_axis=None,
            start_label=0,
        )
        # LIME indexes superpixels 0..S-1: relabel in case SLIC skipped a label.
        return np.unique(segments, return_inverse=True)[1].reshape(segments.shape)

    return segment


class _BatchedLimeImageExplainer(lime_image.LimeImageExplainer):
    """LIME's image explainer with the perturbed images built vectorised and without a progress bar."""

    def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10, **_):
        n_features = np.unique(segments).shape[0]
        data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
        data[0, :] = 1
        labels = []
        for start in range(0, num_samples, batch_size):
            keep = data[start : start + batch_size][:, segments].astype(bool)  # [b, H, W]
            images = np.where(keep[..., None], image[None], fudged_image[None])
            labels.append(np.asarray(classifier_fn(images)))
        return data, np.concatenate(labels)


def lime_explanation(
    predict_fn: PredictFn,
    image: np.ndarray,
    num_samples: int = 1000,
    num_features: int = 5,
    seed: int = 0,
    label: int | None = None,
    segmentation_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    hide_color: float | None = 0.0,
    batch_size: int = 64,
) -> tuple[np.ndarray, lime_image.ImageExplanation]:
    """Explain one image ``[H, W, C]`` (or grey ``[H, W]``); returns ``(heatmap, explanation)``.

    ``heatmap`` ``[H, W]`` float32: every pixel holds the LIME weight of its superpixel for ``label`` (signed;
    positive = evidence for the class), with every superpixel weighted. ``explanation`` is LIME's
    `ImageExplanation` (``.segments``, ``.local_exp``, ``.get_image_and_mask``); ``lime_mask`` gives the mask
    of the ``num_features`` strongest positive superpixels. ``label=None`` explains the predicted class
    (column of ``predict_fn``'s output; 1 = malignant for a single-sigmoid model through `make_predict_fn`).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise DataError(f"image: expected [H, W, 3], [H, W, 1] or [H, W], got shape {image.shape}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if num_samples < 2:
        raise ConfigError(f"num_samples={num_samples}: LIME needs at least 2 perturbed samples")
    if label is None:
        label = int(np.argmax(predict_fn(image[None])[0]))
    segmentation_fn = segmentation_fn or make_segmentation_fn()
    explainer = _BatchedLimeImageExplainer(random_state=seed)
    explanation = explainer.explain_instance(
        image,
        predict_fn,
        labels=(label,),
        top_labels=None,
        hide_color=hide_color,
        num_features=100_000,  # weight every superpixel; ``num_features`` only sizes the mask
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=segmentation_fn,
        random_seed=seed,
    )
    explanation.explained_label = label
    explanation.num_features = num_features
    return lime_heatmap(explanation, label), explanation


def lime_heatmap(explanation: lime_image.ImageExplanation, label: int | None = None) -> np.ndarray:
    """``[H, W]`` float32 map of each superpixel's LIME weight for ``label`` (0 where it has none)."""
    label = _label(explanation, label)
    weights = np.zeros(int(explanation.segments.max()) + 1, dtype=np.float32)
    for segment, weight in explanation.local_exp[label]:
        weights[segment] = weight
    return weights[explanation.segments]


def lime_mask(
    explanation: lime_image.ImageExplanation,
    label: int | None = None,
    num_features: int | None = None,
    positive_only: bool = True,
) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the ``num_features`` superpixels with the largest weights for ``label``.

    ``positive_only``: only superpixels with a positive weight (evidence for the class); otherwise the
    largest absolute weights of either sign.
    """
    label = _label(explanation, label)
    num_features = num_features or getattr(explanation, "num_features", 5)
    ranked = explanation.local_exp[label]  # sorted by |weight|, largest first
    if positive_only:
        ranked = [(s, w) for s, w in ranked if w > 0]
    chosen = [s for s, _ in ranked[:num_features]]
    return np.isin(explanation.segments, chosen)


def top_superpixels(
    explanation: lime_image.ImageExplanation, label: int | None = None, k: int = 5
) -> list[int]:
    """Ids of the ``k`` superpixels with the largest positive weight for ``label``, strongest first."""
    label = _label(explanation, label)
    positive = sorted((w, s) for s, w in explanation.local_exp[label] if w > 0)
    return [int(s) for _, s in positive[::-1][:k]]


def _label(explanation: lime_image.ImageExplanation, label: int | None) -> int:
    if label is None:
        label = getattr(explanation, "explained_label", None)
        if label is None:
            label = next(iter(explanation.local_exp))
    if label not in explanation.local_exp:
        raise ConfigError(f"label={label} was not explained; explained: {sorted(explanation.local_exp)}")
    return label
