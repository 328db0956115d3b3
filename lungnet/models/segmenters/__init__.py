"""Segmenters; importing this package registers every family (U-Net, attention residual U-Net, UNet++,
Inf-Net)."""

from lungnet.models.segmenters import inf_net, unet, unet_plus_plus  # noqa: F401  (registers them)
