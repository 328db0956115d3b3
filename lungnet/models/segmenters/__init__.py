"""Segmenters; importing this package registers every family (U-Net, attention residual U-Net, UNet++)."""

from lungnet.models.segmenters import unet, unet_plus_plus  # noqa: F401  (registers them)
