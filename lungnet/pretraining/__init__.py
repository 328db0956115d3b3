"""Self-supervised pretraining of encoders on unlabelled CT (Models Genesis), with a cache of the results."""

from lungnet.pretraining.genesis import GenesisConfig, genesis_pair
from lungnet.pretraining.pretrain import PretrainConfig, PretrainedBase, pretrain_encoder

__all__ = ["GenesisConfig", "PretrainConfig", "PretrainedBase", "genesis_pair", "pretrain_encoder"]
