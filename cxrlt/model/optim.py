"""The optimizer and learning-rate schedule of a config (timm's create_optimizer, in small)."""

from __future__ import annotations

import functools

from ..config import ConfigError


def scaled_lr(lr: float, rule: str, global_batch: int, reference_batch: int) -> float:
    """Learning-rate scaling with the global batch: none (seed 002 kept 1e-4 on 4 GPUs, G23), linear or sqrt."""
    if rule == "none":
        return lr
    ratio = global_batch / reference_batch
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * ratio ** 0.5
    raise ConfigError(f"optim.lr_scaling must be none, linear or sqrt, got {rule!r}")


def schedule(lr: float, name: str, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0):
    """The learning rate (a float) or its schedule: constant | cosine (to 0 at the last step), after
    `warmup_epochs` of linear warm-up (from 0 at step 0 to `lr` at step warmup_epochs * steps_per_epoch;
    with the constant schedule the rate then stays at `lr`)."""
    import keras

    if not warmup_epochs:
        if name == "cosine":
            return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * epochs)
        return lr
    if not 0 < warmup_epochs < epochs:
        raise ConfigError(f"optim.warmup_epochs ({warmup_epochs}) must be below train.epochs ({epochs})")
    warmup = steps_per_epoch * warmup_epochs
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps_per_epoch * (epochs - warmup_epochs), warmup_target=lr, warmup_steps=warmup,
        alpha=1.0 if name == "constant" else 0.0)  # alpha 1: the "decay" keeps the rate at lr


def loss_scale_optimizer(inner):
    """`inner` wrapped for mixed_float16: dynamic loss scaling with one finite-or-skip decision everywhere."""
    return _agreed_loss_scale_class()(inner)


@functools.lru_cache(maxsize=None)
def _agreed_loss_scale_class():
    """Keras' LossScaleOptimizer, with one finite-or-skip decision for every replica and worker.

    Keras 3.15 decides from the gradients one replica holds before the all-reduce: under MirroredStrategy
    it takes the first replica's word (measured on two CPUs, replica 1's half overflowing: the first
    replica said finite, the summed gradient held inf, the weights became NaN); under
    MultiWorkerMirroredStrategy each worker decides alone, and a worker that skips leaves the other waiting
    in the gradient all-reduce forever. Here each replica's "all my gradients are finite" is all-reduced
    (a count of replicas with a non-finite gradient) before the decision, so all take the same branch: all
    apply the update, or all skip it and halve the loss scale. The rest (scale growth, unscaling, the
    variables and their checkpoint) is Keras' own."""
    import keras
    import tensorflow as tf

    class AgreedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
        def check_finite(self, grads):
            finite = super().check_finite(grads)
            context = tf.distribute.get_replica_context()
            if context is None or context.num_replicas_in_sync == 1:
                return finite
            overflowing = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
            return overflowing < 0.5

    return AgreedLossScaleOptimizer


def make_optimizer(cfg: dict, steps_per_epoch: int):
    """The optimizer of the config; the learning rate scaled with the global batch if optim.lr_scaling asks.

    Under mixed_float16 it is wrapped in a loss-scale optimizer that decides once for all replicas whether
    a step's gradients are finite (`loss_scale_optimizer`): float16 gradients underflow without one."""
    import keras

    o = cfg["optim"]
    # the batch an update sees: train.batch_size x train.accumulate micro-batches
    effective = cfg["train"]["batch_size"] * cfg["train"].get("accumulate", 1)
    lr = scaled_lr(o["lr"], o["lr_scaling"], effective, o["reference_batch"])
    lr = schedule(lr, o["schedule"], steps_per_epoch, cfg["train"]["epochs"], o.get("warmup_epochs", 0))
    if o["name"] == "adam" and not o["weight_decay"]:
        optimizer = keras.optimizers.Adam(lr, beta_1=o["beta_1"], beta_2=o["beta_2"])
    elif o["name"] in ("adam", "adamw"):
        optimizer = keras.optimizers.AdamW(lr, weight_decay=o["weight_decay"], beta_1=o["beta_1"], beta_2=o["beta_2"])
    else:  # sgd (the schema allows no other name)
        optimizer = keras.optimizers.SGD(lr, momentum=0.9, weight_decay=o["weight_decay"] or None)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = loss_scale_optimizer(optimizer)
    return optimizer
