"""One module per reproduced paper, registered by the ``task`` of its experiments (`registry`)."""

from lungnet.studies import classification, inf_net, nodule_fusion, segmentation  # noqa: F401  (registers the studies)
