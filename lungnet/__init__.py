"""lungnet: Keras 3 reproductions of published lung-nodule CT deep-learning systems."""

__version__ = "0.1.0"
