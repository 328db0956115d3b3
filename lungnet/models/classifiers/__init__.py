"""Classifiers; importing this package registers every family (custom CNN, pretrained encoder + head)."""

from lungnet.models.classifiers import custom_cnn, pretrained  # noqa: F401  (registers them)
