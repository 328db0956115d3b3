"""Fully connected CRF refinement of a binary segmentation (Kraehenbuehl & Koltun 2011, via pydensecrf2).

pydensecrf2 (module ``pydensecrf``) is imported only when a CRF runs: it compiles from source, so the rest
of lungnet must work without it, and `require_crf` says how to install it or switch it off.

The model: two labels (background, foreground); unary = -log p of the network's probabilities clipped to
[1e-5, 1 - 1e-5]; a Gaussian (smoothness) kernel of width ``gaussian_sxy`` px and a bilateral (appearance)
kernel of width ``bilateral_sxy`` px and ``bilateral_srgb`` grey levels, both Potts; mean-field inference for
``iterations`` steps. The image is min-max scaled to 0-255 per image and replicated into the three channels
that pydensecrf's bilateral kernel takes (as RGB-parameterised published setups do), so a grey-level step
of ``bilateral_srgb`` / sqrt(3) is one kernel width.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, fields

import numpy as np
from tqdm.auto import tqdm

from lungnet.errors import ConfigError, DataError

_CLIP = 1e-5
_PROB_TOL = 1e-6


@dataclass(frozen=True)
class CRFConfig:
    """Dense CRF settings (config section ``postprocess.crf``); defaults are pydensecrf's usual ones."""

    enabled: bool = True
    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 20.0
    bilateral_srgb: float = 10.0
    bilateral_compat: float = 5.0

    def __post_init__(self):
        where = "postprocess.crf"
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{where}.enabled: expected true or false, got {self.enabled!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"{where}.iterations: expected an integer >= 1, got {self.iterations!r}")
        for f in fields(self):
            if f.name in ("enabled", "iterations"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"{where}.{f.name}: expected a finite number, got {v!r}")
            # widths divide the features (0 is a division by zero); a compat of 0 switches that kernel off
            if f.name.endswith("compat") and v < 0:
                raise ConfigError(f"{where}.{f.name}: expected a number >= 0, got {v!r}")
            if not f.name.endswith("compat") and v <= 0:
                raise ConfigError(f"{where}.{f.name}: expected a number > 0, got {v!r}")


def _import_densecrf():
    return importlib.import_module("pydensecrf.densecrf")


def crf_available() -> bool:
    """True when pydensecrf2 can be imported."""
    try:
        _import_densecrf()
    except ImportError:
        return False
    return True


def require_crf():
    """Return the ``pydensecrf.densecrf`` module or raise `ConfigError` saying how to install it or switch it off."""
    try:
        return _import_densecrf()
    except ImportError as exc:
        raise ConfigError(
            "CRF post-processing (postprocess.crf.enabled: true) needs pydensecrf2, which is not installed "
            f"({exc}). Install it with `pip install pydensecrf2==1.1` (it compiles from source: needs a C++ "
            "compiler, about a minute), or turn the CRF off with `postprocess.crf.enabled: false` in the config "
            "(`--set postprocess.crf.enabled=false` on the command line)."
        ) from exc


def _to_uint8(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    # a constant image has no edges: all zeros, and the bilateral kernel then acts as a second Gaussian
    scaled = np.rint((image - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros(image.shape)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _check_pair(image, probability, i: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    at = "" if i is None else f"[{i}]"
    img = np.asarray(image, dtype=np.float64)
    prob = np.asarray(probability, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    if img.ndim != 2:
        raise DataError(f"image{at} must be 2-D [H, W], got shape {img.shape}")
    if prob.shape != img.shape:
        raise DataError(f"probability{at} has shape {prob.shape} but image{at} has shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise DataError(f"image{at} has non-finite values")
    if not np.all(np.isfinite(prob)) or prob.min() < -_PROB_TOL or prob.max() > 1 + _PROB_TOL:
        raise DataError(
            f"probability{at} must be foreground probabilities in [0, 1], got range "
            f"[{np.nanmin(prob):.4g}, {np.nanmax(prob):.4g}] (pass sigmoid outputs, not logits)"
        )
    return img, np.clip(prob, 0.0, 1.0)


def _refine(dcrf, image: np.ndarray, prob: np.ndarray, config: CRFConfig) -> np.ndarray:
    h, w = prob.shape
    p = np.clip(prob, _CLIP, 1.0 - _CLIP)
    unary = np.ascontiguousarray(-np.log(np.stack([1.0 - p, p]).reshape(2, -1)), dtype=np.float32)
    rgb = np.ascontiguousarray(np.repeat(_to_uint8(image)[..., np.newaxis], 3, axis=2))
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=config.bilateral_sxy, srgb=config.bilateral_srgb, rgbim=rgb, compat=config.bilateral_compat
    )
    q = np.asarray(crf.inference(config.iterations), dtype=np.float32).reshape(2, h, w)
    return q[1]


def dense_crf(image: np.ndarray, probability: np.ndarray, config: CRFConfig | None = None) -> np.ndarray:
    """Refined foreground probability [H, W] float32 of one image [H, W] (any units) and its probabilities.

    With ``config.enabled`` false the probabilities come back unchanged (as float32) and pydensecrf2 is not
    needed.
    """
    config = CRFConfig() if config is None else config
    img, prob = _check_pair(image, probability)
    if not config.enabled:
        return prob.astype(np.float32)
    return _refine(require_crf(), img, prob, config)


def dense_crf_batch(
    images: np.ndarray, probabilities: np.ndarray, config: CRFConfig | None = None, progress: bool = False
) -> np.ndarray:
    """`dense_crf` over a batch: images and probabilities [N, H, W] (or [N, H, W, 1]) -> float32 [N, H, W]."""
    config = CRFConfig() if config is None else config
    imgs, probs = np.asarray(images), np.asarray(probabilities)
    if imgs.ndim == 4 and imgs.shape[-1] == 1:
        imgs = imgs[..., 0]
    if probs.ndim == 4 and probs.shape[-1] == 1:
        probs = probs[..., 0]
    if imgs.ndim != 3:
        raise DataError(f"images must be [N, H, W], got shape {imgs.shape}")
    if probs.shape != imgs.shape:
        raise DataError(f"probabilities have shape {probs.shape} but images have shape {imgs.shape}")
    dcrf = require_crf() if config.enabled else None
    out = np.empty(probs.shape, dtype=np.float32)
    for i in tqdm(range(len(imgs)), desc="dense CRF", unit="image", disable=not progress):
        img, prob = _check_pair(imgs[i], probs[i], i)
        out[i] = prob if dcrf is None else _refine(dcrf, img, prob, config)
    return out
