"""Training beyond one device: ``training.strategy`` as a tf.distribute strategy.

- ``default``: no strategy (one device).
- ``mirrored``: `tf.distribute.MirroredStrategy` over this machine's GPUs, or over its logical CPU devices
  when it has none (how the tests run two replicas on a CPU).
- ``multi_worker`` is refused with the reason: Keras 3's ``model.fit`` fails under
  `tf.distribute.MultiWorkerMirroredStrategy` before its first step (keras-team/keras#20585, open; measured
  here with Keras 3.15.1 and TensorFlow 2.21.0 on two localhost workers: ``_maybe_symbolic_build`` cannot
  reduce the first batch's ``PerReplica`` values).

Batch and learning rate: ``data.batch_size`` and ``training.learning_rate`` are a *replica's*. With
``training.scale_with_replicas`` (the default) each training step takes ``batch_size × replicas`` images,
split evenly across the replicas, at ``learning_rate × replicas`` (the linear scaling rule, Goyal et al.
2017), so a one-device recipe keeps its per-device batch on N devices. With it off, ``batch_size`` is the
global batch and the rate is used as given. Validation and prediction batches are never rescaled.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

MULTI_WORKER_REFUSED = (
    "training.strategy: multi_worker is not available: Keras 3's model.fit fails under "
    "tf.distribute.MultiWorkerMirroredStrategy before its first step (keras-team/keras#20585, open; seen "
    "with Keras 3.15.1 and TensorFlow 2.21.0). Use mirrored for the GPUs of one machine"
)
_created: dict[str, tf.distribute.Strategy] = {}


def prepare_strategy(name: str) -> tf.distribute.Strategy | None:
    """The strategy for ``training.strategy`` `name` (checked by `TrainingConfig`), created on first use and
    kept for the process."""
    if name == "default":
        return None
    if name not in _created:
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        _created[name] = tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    return _created[name]


def replicas(name: str) -> int:
    """How many replicas a step is split across (1 without a strategy)."""
    strategy = prepare_strategy(name)
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def distribution_scope(config):
    """The scope to build, compile and fit models in (a no-op without a strategy)."""
    strategy = prepare_strategy(config.strategy)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def scaled_for_replicas(dataset: tf.data.Dataset, learning_rate: float, config):
    """The training pipeline and learning rate a step uses under `config`'s strategy (see the module)."""
    n = replicas(config.strategy)
    if n == 1 or not config.scale_with_replicas:
        return dataset, learning_rate
    per_replica = int(tf.nest.flatten(next(iter(dataset.take(1))))[0].shape[0])  # the pipeline's batch
    return dataset.rebatch(per_replica * n), learning_rate * n
