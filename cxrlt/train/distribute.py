"""Which tf.distribute strategy and numeric policy a run uses.

    auto         MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker, else
                 MirroredStrategy when more than one GPU is visible, else the default (one device).
    one          the default strategy: one device.
    mirrored     MirroredStrategy over every visible GPU of this host, or over the logical CPU devices
                 of a CPU-only host (tests split the CPU in two with `split_cpu`).
    multiworker  MultiWorkerMirroredStrategy over the hosts TF_CONFIG names (one process per host, each
                 with its GPUs); every worker runs the same command.

Every strategy trains with the same step (cxrlt.engine): Keras 3 `fit` does not run under
MultiWorkerMirroredStrategy (keras-team/keras#20585), so cxrlt does not use `fit` at all.
The strategy must be made before TensorFlow runs its first op (MultiWorkerMirroredStrategy
refuses otherwise); cxrlt.train makes it first thing.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

log = logging.getLogger(__name__)

from ..config.schema import STRATEGY_NAMES as STRATEGIES
from ..utils.errors import UserError


class DistributeError(UserError):
    """A strategy that cannot run with this machine, TF_CONFIG or batch size; the message says why."""


def split_cpu(n: int = 2) -> None:
    """Expose the CPU as `n` logical devices (call before any TensorFlow op runs)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def tf_config_workers() -> int:
    """Number of worker (+ chief) tasks TF_CONFIG names; 0 without TF_CONFIG."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err})") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def resolve_name(name: str) -> str:
    """'auto' -> the strategy this host and TF_CONFIG call for; other names are checked and kept."""
    if name not in STRATEGIES:
        raise DistributeError(f"distribute.strategy must be one of {STRATEGIES}, got {name!r}")
    if name != "auto":
        return name
    if tf_config_workers() > 1:
        return "multiworker"
    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    name = resolve_name(name)
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log.info("MirroredStrategy over %d replicas: %s", strategy.num_replicas_in_sync, devices)
        return strategy
    if tf_config_workers() < 1:
        raise DistributeError("--strategy multiworker needs TF_CONFIG naming the workers, e.g. "
                              '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    log.info("MultiWorkerMirroredStrategy: task %s/%s, %d replicas in sync", resolver.task_type, resolver.task_id,
             strategy.num_replicas_in_sync)
    return strategy


def steps_per_execution(setting: int | None) -> int:
    """train.steps_per_execution, with null resolved: 16 where a GPU is visible (a step there is short enough
    that the host's per-call dispatch and loss read show), 1 on CPU (a step costs seconds)."""
    if setting is not None:
        return int(setting)
    return 16 if tf.config.list_physical_devices("GPU") else 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one process that writes files: the 'chief' task, or worker 0 when TF_CONFIG names no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_id(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}{resolver.task_id}"


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker got here (one tiny all-reduce); nothing to wait for on one host.

    Used after each fold: the workers wait while the chief predicts the fold's validation split,
    instead of racing ahead (or exiting, which the chief's coordination service reports as a crash).
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.ones([])), axis=None)


def check_batch(strategy: tf.distribute.Strategy, global_batch: int) -> int:
    """The per-replica batch: the global batch must split evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch < replicas or global_batch % replicas:
        raise DistributeError(f"train.batch_size {global_batch} must be a multiple of the {replicas} replicas in sync "
                              f"(each replica gets batch_size / replicas images); use e.g. {replicas * max(1, global_batch // replicas)}")
    return global_batch // replicas


def set_precision(mixed: bool) -> str:
    """mixed_float16 on GPU, mixed_bfloat16 on CPU; the head's logits, the loss and the outputs stay float32."""
    policy = "float32"
    if mixed:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    import keras

    keras.mixed_precision.set_global_policy(policy)
    return policy
