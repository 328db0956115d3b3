"""Segmenters; importing this package registers every family (the U-Nets, UNet++ and UNAR, Inf-Net, and
keras-hub's DeepLabV3+ and SegFormer)."""

from lungnet.models.segmenters import (  # noqa: F401  (registers them)
    inf_net,
    keras_hub_segmenters,
    unet,
    unet_plus_plus,
)
