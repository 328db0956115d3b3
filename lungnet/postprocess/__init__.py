"""Post-processing of predicted segmentation probabilities (fully connected CRF)."""

from lungnet.postprocess.crf import CRFConfig, crf_available, dense_crf, dense_crf_batch, require_crf

__all__ = ["CRFConfig", "crf_available", "dense_crf", "dense_crf_batch", "require_crf"]
