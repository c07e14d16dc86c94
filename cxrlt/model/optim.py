"""The optimizer and learning-rate schedule of a config (timm's create_optimizer, in small)."""

from __future__ import annotations

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


def schedule(lr: float, name: str, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0, cycle_epochs: int = 1):
    """The learning rate (a float) or its schedule: constant | cosine (to 0 at the last step) | cyclic (cosine to 0
    over every `cycle_epochs`, then back to `lr`: seed 003's "cyclically annealed towards 0"), after
    `warmup_epochs` of linear warm-up (from 0 at step 0 to `lr` at step warmup_epochs * steps_per_epoch;
    with the constant schedule the rate then stays at `lr`)."""
    import keras

    if name == "cyclic":
        if warmup_epochs:
            raise ConfigError("optim.schedule cyclic has no warm-up (optim.warmup_epochs 0): every cycle starts at lr")
        return keras.optimizers.schedules.CosineDecayRestarts(lr, first_decay_steps=steps_per_epoch * cycle_epochs,
                                                              t_mul=1.0, m_mul=1.0, alpha=0.0)
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


def make_optimizer(cfg: dict, steps_per_epoch: int):
    """The optimizer of the config; the learning rate scaled with the global batch if optim.lr_scaling asks.

    Under mixed_float16 it is wrapped in a LossScaleOptimizer: float16 gradients underflow without it."""
    import keras

    o = cfg["optim"]
    # the batch an update sees: train.batch_size x train.accumulate micro-batches
    effective = cfg["train"]["batch_size"] * cfg["train"].get("accumulate", 1)
    lr = scaled_lr(o["lr"], o["lr_scaling"], effective, o["reference_batch"])
    lr = schedule(lr, o["schedule"], steps_per_epoch, cfg["train"]["epochs"], o.get("warmup_epochs", 0),
                  o.get("cycle_epochs", 1))
    if o["name"] == "adam" and not o["weight_decay"]:
        optimizer = keras.optimizers.Adam(lr, beta_1=o["beta_1"], beta_2=o["beta_2"])
    elif o["name"] in ("adam", "adamw"):
        optimizer = keras.optimizers.AdamW(lr, weight_decay=o["weight_decay"], beta_1=o["beta_1"], beta_2=o["beta_2"])
    else:  # sgd (the schema allows no other name)
        optimizer = keras.optimizers.SGD(lr, momentum=o.get("momentum", 0.9), weight_decay=o["weight_decay"] or None)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
