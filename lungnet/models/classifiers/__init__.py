"""Classifiers; importing this package registers every family (custom CNN, pretrained encoder + head,
CT + genomic fusion, NoduleHyperFusionNet)."""

from lungnet.models.classifiers import custom_cnn, fusion, hyperfusion, pretrained  # noqa: F401  (registers them)
