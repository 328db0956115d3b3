"""Classifiers; importing this package registers every family (custom CNN, pretrained encoder + head,
CT + genomic fusion)."""

from lungnet.models.classifiers import custom_cnn, fusion, pretrained  # noqa: F401  (registers them)
