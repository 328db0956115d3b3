"""Training on several machines: `tf.distribute.MultiWorkerMirroredStrategy` from ``TF_CONFIG``.

Every worker runs the same ``lungnet train`` command with its own ``TF_CONFIG`` (the cluster's addresses and
this worker's place in it). The chief (task ``chief``, or ``worker`` 0 where the cluster has no chief) writes
the run folder; every other worker writes its copy to a temporary folder that it deletes at the end, as
TensorFlow's multi-worker guide recommends, so two workers never write the same file.

Keras 3's ``model.fit`` fails under this strategy (keras-team/keras#20585, tensorflow/tensorflow#72388), in
two places of ``keras/src/backend/tensorflow/trainer.py``, both patched here while a multi-worker strategy
is in use:

- ``_maybe_symbolic_build`` reduces the first batch's per-replica values across workers to build the model
  symbolically, which cannot convert a ``PerReplica`` batch: this worker's own part of the batch is enough.
- ``reduce_per_replica`` averages the step's metrics with ``strategy.reduce("MEAN", value, axis=0)``, which
  fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions"). The mean over replicas is
  ``axis=None``, which is what the one-machine branch of the same function computes.

Tested with Keras 3.15.1 and TensorFlow 2.21.0: two workers on localhost train like one device at the same
global batch (`tests/test_distribute.py`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import tensorflow as tf

from lungnet.errors import ConfigError


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in ``TF_CONFIG``'s cluster."""

    kind: str  # "chief" or "worker"
    index: int
    workers: int  # every member, the chief included
    chief: bool  # writes the run folder: the ``chief`` task, or ``worker`` 0 where the cluster has none


def cluster_task(environ=os.environ) -> ClusterTask:
    """This process's task in ``TF_CONFIG``, checked."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "training.strategy: multi_worker needs TF_CONFIG, the cluster's addresses and this worker's task, "
            'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
            '"index": 0}}\' on the first machine'
        )
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = str(task["type"]), int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"TF_CONFIG: not a cluster spec ({exc}); it needs 'cluster' and 'task': {{'type', 'index'}}"
        ) from None
    members = {name: list(cluster.get(name, [])) for name in ("chief", "worker")}
    if kind not in members or not 0 <= index < len(members[kind]):
        raise ConfigError(f"TF_CONFIG: task {kind} {index} is not in the cluster {cluster}")
    chief = kind == "chief" or (not members["chief"] and index == 0)
    return ClusterTask(kind, index, len(members["chief"]) + len(members["worker"]), chief)


def create_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy of ``TF_CONFIG``'s cluster, with Keras patched to fit under it (see the module)."""
    cluster_task()
    _patch_keras()
    return tf.distribute.MultiWorkerMirroredStrategy()


def any_worker(flag: bool) -> bool:
    """`flag` or'ed over the workers under a multi-worker strategy (each worker's `flag` elsewhere), so a
    decision taken from a worker's own clock, such as a time budget, stops every worker at the same epoch."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return flag
    value = strategy.run(lambda: tf.constant(float(flag)))
    return bool(strategy.reduce("MAX", value, axis=None) > 0)


def _patch_keras() -> None:
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_lungnet_multi_worker", False):
        return
    missing = [
        name
        for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker")
        if not hasattr(trainer, name)
    ]
    if missing or not hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        import keras

        raise ConfigError(
            f"training.strategy: multi_worker: Keras {keras.__version__} lacks the internals lungnet patches to "
            f"fit under MultiWorkerMirroredStrategy ({', '.join(missing) or '_maybe_symbolic_build'}); "
            "use Keras 3.15"
        )
    reduce_per_replica = trainer.reduce_per_replica

    def reduce_across_workers(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: _local_part(self._distribute_strategy, v), next(batches)
                )
                break
        with self._distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_across_workers
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    trainer._lungnet_multi_worker = True


def _local_part(strategy, value):
    """This worker's first replica's part of a distributed `value` (a plain value as it is)."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value
