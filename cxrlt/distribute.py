"""Which tf.distribute strategy and numeric policy a run uses.

auto: MirroredStrategy when more than one GPU is visible, else the default (one device).
mirrored: MirroredStrategy over every visible GPU, or over the logical CPU devices on a CPU-only
host (tests split the CPU in two with `split_cpu`). Multi-host training (MultiWorkerMirrored)
needs a custom train step because Keras 3 `fit` does not support it (ENV_NOTES; keras#20585).
"""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


def split_cpu(n: int = 2) -> None:
    """Expose the CPU as `n` logical devices (call before any TensorFlow op runs)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one"
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log.info("MirroredStrategy over %d replicas: %s", strategy.num_replicas_in_sync, devices)
        return strategy
    raise ValueError(f"distribute.strategy must be auto, one or mirrored, got {name!r}"
                     " (multi-host training is not available through Keras fit yet)")


def set_precision(mixed: bool) -> str:
    """mixed_float16 on GPU, mixed_bfloat16 on CPU; outputs and losses stay float32."""
    policy = "float32"
    if mixed:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    import keras

    keras.mixed_precision.set_global_policy(policy)
    return policy
