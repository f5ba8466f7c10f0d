"""Training on more than one device: the `tf.distribute` strategy a run's ``--distribution`` names.

The models are built and compiled inside the strategy's scope, so their variables are mirrored, and
Keras splits every batch of the training dataset across the replicas and sums their gradients.
The batch size is therefore the global batch: two replicas of ``--batch_size=128`` train on 64 rows
each, and a run on one device and a run on N see the same batches in the same order.

  - ``default``: the one device TensorFlow picks (no distribution);
  - ``mirrored``: synchronous data parallelism over the local GPUs (or CPUs when there is none);
  - ``multi_worker``: the same across machines; every worker runs the same command with its own
    ``TF_CONFIG``, e.g. ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
    "task": {"type": "worker", "index": 0}}`` (Kubernetes operators and Vertex AI set it).

Every worker trains; only the chief (`is_chief`) evaluates and writes the run's outputs, as TensorFlow's
multi-worker guide prescribes: N workers writing one export folder would race for its version
numbers and files, and each would spend the evaluation's hours again for the same weights.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from tfrs_pipeline.config import DISTRIBUTIONS

TF_CONFIG = "TF_CONFIG"


def strategy_for(distribution: str) -> tf.distribute.Strategy:
    """The strategy for a ``--distribution`` value (see the module docstring).

    Raises:
      ValueError: an unknown name, or ``multi_worker`` without a usable ``TF_CONFIG``.
    """
    if distribution == "default":
        return tf.distribute.get_strategy()
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribution == "multi_worker":
        _check_tf_config(os.environ.get(TF_CONFIG))
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs: always, unless it is a multi-worker non-chief.

    The chief is the worker of task type ``chief`` if ``TF_CONFIG`` names one, else worker 0.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def _check_tf_config(text: str | None) -> None:
    """Fails early, with the fix, where TensorFlow would train on one worker or hang waiting for peers."""
    if not text:
        raise ValueError(f"--distribution=multi_worker needs ${TF_CONFIG}: a JSON cluster spec and this "
                         "worker's task, e.g. {\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                         "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"${TF_CONFIG} is not JSON: {error}") from None
    workers = tf_config.get("cluster", {}).get("worker")
    task = tf_config.get("task", {})
    if not workers:
        raise ValueError(f"${TF_CONFIG} lists no cluster.worker addresses")
    if task.get("type") not in ("worker", "chief") or not isinstance(task.get("index"), int):
        raise ValueError(f"${TF_CONFIG} needs task.type 'worker' (or 'chief') and an integer task.index")
    if task["type"] == "worker" and not 0 <= task["index"] < len(workers):
        raise ValueError(f"${TF_CONFIG} task.index {task['index']} is not one of the {len(workers)} workers")
