"""Training beyond one device: ``training.strategy`` as a tf.distribute strategy.

- ``default``: no strategy (one device).
- ``mirrored``: `tf.distribute.MirroredStrategy` over this machine's GPUs, or over its logical CPU devices
  when it has none (how the tests run two replicas on a CPU).
- ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy` over the machines ``TF_CONFIG`` names
  (`lungnet.training.multi_worker`: who writes the run folder, and the Keras workaround it needs). Each
  worker reads the whole pipeline and keeps its replicas' share of every global batch (tf.data's ``DATA``
  sharding), so the workers see what one device would see at that batch.

Batch and learning rate: ``data.batch_size`` and ``training.learning_rate`` are a *replica's*. With
``training.scale_with_replicas`` (the default) each training step takes ``batch_size × replicas`` images,
split evenly across the replicas, at ``learning_rate × replicas`` (the linear scaling rule, Goyal et al.
2017), so a one-device recipe keeps its per-device batch on N devices. With it off, ``batch_size`` is the
global batch and the rate is used as given. Validation and prediction batches are never rescaled.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from lungnet.training import multi_worker

_created: dict[str, tf.distribute.Strategy] = {}


def prepare_strategy(name: str) -> tf.distribute.Strategy | None:
    """The strategy for ``training.strategy`` `name` (checked by `TrainingConfig`), created on first use and
    kept for the process."""
    if name == "default":
        return None
    if name not in _created:
        _created[name] = multi_worker.create_strategy() if name == "multi_worker" else _mirrored()
    return _created[name]


def _mirrored() -> tf.distribute.MirroredStrategy:
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])


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
    dataset = sharded(dataset, config)
    n = replicas(config.strategy)
    if n == 1 or not config.scale_with_replicas:
        return dataset, learning_rate
    per_replica = int(tf.nest.flatten(next(iter(dataset.take(1))))[0].shape[0])  # the pipeline's batch
    return dataset.rebatch(per_replica * n), learning_rate * n


def sharded(dataset: tf.data.Dataset, config) -> tf.data.Dataset:
    """`dataset` split between workers by element (``DATA``) under ``multi_worker``; unchanged otherwise.

    tf.data's default would try to split by file first, which lungnet's in-memory and file-list pipelines
    cannot, and warn."""
    if config.strategy != "multi_worker":
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
