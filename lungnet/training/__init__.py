"""One fit path for every experiment: callbacks, checkpoints, resume, mixed precision, XLA, tf.distribute."""

from lungnet.training.fit import TrainingConfig, train_phase

__all__ = ["TrainingConfig", "train_phase"]
