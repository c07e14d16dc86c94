"""The optimizer and learning-rate schedule of a config (timm's create_optimizer, in small).

Beyond one learning rate for every weight, what the CXR-LT recipes need:

* **per-part rates** (``optim.backbone_lr_mult``): the backbone's variables learn at ``lr x mult``, the head's
  (cxrlt.model.models.HEAD_LAYERS) at ``lr`` (the 2026 winner: 1.5e-5 / 1.5e-4). Adam divides the gradient by
  its own running scale, so scaling gradients would change nothing: the rate itself is scaled, per variable,
  inside the update (``update_step``), as torch's parameter groups do.
* **per-part weight decay** (``optim.head_weight_decay``, the winner: 0.01 backbone / 0.05 head) and AdamW decay
  that skips norms and biases (``optim.decay_norms_and_biases: false``, timm's ``filter_bias_and_bn``): decoupled
  decay ``w -= lr_part x wd_part x w``, as torch's AdamW, skipping every 1-D variable when asked.
* **gradient clipping by the global norm over the whole model** (``optim.clip_norm``, torch's
  ``clip_grad_norm_(model.parameters(), 1.0)``). Keras' own ``global_clipnorm`` clips inside ``apply`` BEFORE
  the gradients are summed over the replicas (each replica's share, not the update); here the norm is taken
  after the cross-replica sum, on the gradient the update uses, so 2 replicas clip as 1 device does.
"""

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


def schedule(lr: float, name: str, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0,
             min_lr_ratio: float = 0.0, cycle_epochs: int = 1):
    """The learning rate (a float) or its schedule: constant | cosine (to `min_lr_ratio` x lr at the last step) |
    cyclic (cosine to 0 over every `cycle_epochs`, then back to `lr`: the Balanced-MixUp paper's "cyclically
    annealed towards 0"),
    after `warmup_epochs` of linear warm-up (from 0 at step 0 to `lr` at step warmup_epochs * steps_per_epoch;
    with the constant schedule the rate then stays at `lr`)."""
    import keras

    if name == "cyclic":
        if warmup_epochs:
            raise ConfigError("optim.schedule cyclic has no warm-up (optim.warmup_epochs 0): every cycle starts at lr")
        return keras.optimizers.schedules.CosineDecayRestarts(lr, first_decay_steps=steps_per_epoch * cycle_epochs,
                                                              t_mul=1.0, m_mul=1.0, alpha=0.0)
    if not warmup_epochs:
        if name == "cosine":
            return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * epochs, alpha=min_lr_ratio)
        return lr
    if not 0 < warmup_epochs < epochs:
        raise ConfigError(f"optim.warmup_epochs ({warmup_epochs}) must be below train.epochs ({epochs})")
    warmup = steps_per_epoch * warmup_epochs
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps_per_epoch * (epochs - warmup_epochs), warmup_target=lr, warmup_steps=warmup,
        alpha=1.0 if name == "constant" else min_lr_ratio)  # alpha 1: the "decay" keeps the rate at lr


class PartwiseMixin:
    """Per-variable learning-rate multipliers and weight decays, and clipping by the global norm after the
    cross-replica sum, for a Keras 3 optimizer on the TensorFlow backend (see the module docstring).

    `part_rule(variable) -> (lr multiplier, weight decay)` is read for every variable when the optimizer is built;
    the base optimizer is made with weight_decay=None and no Keras clipping (both are done here)."""

    clip_norm: float | None = None
    part_rule = None

    def build(self, variables):
        super().build(variables)
        rule = self.part_rule or (lambda v: (1.0, 0.0))
        self._parts = _Parts({self._var_key(v): tuple(float(x) for x in rule(v)) for v in variables})

    def lr_multiplier(self, variable) -> float:
        parts = getattr(self, "_parts", None)
        return parts.of(self._var_key(variable))[0] if parts else 1.0

    def weight_decay_of(self, variable) -> float:
        parts = getattr(self, "_parts", None)
        return parts.of(self._var_key(variable))[1] if parts else 0.0

    def update_step(self, gradient, variable, learning_rate):
        factor = self.lr_multiplier(variable)
        return super().update_step(gradient, variable, learning_rate if factor == 1.0 else learning_rate * factor)

    def _apply_weight_decay(self, variables):
        """Decoupled decay w -= lr x multiplier x decay x w, per variable (torch's AdamW with parameter groups)."""
        import tensorflow as tf
        from keras.src import backend

        decays = [(v, self.weight_decay_of(v) * self.lr_multiplier(v)) for v in variables]
        decays = [(v, d) for v, d in decays if d]
        if not decays:
            return

        def apply(distribution, decays):
            def decay_fn(variable, factor):
                lr = tf.cast(self.learning_rate, variable.dtype)
                variable.assign_sub(variable * tf.cast(factor, variable.dtype) * lr)

            for variable, factor in decays:
                variable = variable.value if isinstance(variable, backend.Variable) else variable
                distribution.extended.update(variable, decay_fn, args=(factor,), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(apply, self._distribution_strategy, decays)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """As Keras' TensorFlow optimizer (sum the gradients over the replicas, then update every variable on every
        device), with the clipping by the global norm between the two: on the summed gradient of the update."""
        if not self.clip_norm:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf
        from keras.src import backend

        variables = [v.value if isinstance(v, backend.Variable) else v for v in trainable_variables]
        reduced = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        present = [(g, v) for g, v in reduced if g is not None]
        clipped, _ = tf.clip_by_global_norm([g for g, _ in present], self.clip_norm)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy,
            list(zip(clipped, [v for _, v in present])), learning_rate)


class _Parts:
    """variable key -> (lr multiplier, weight decay); a plain object, so the optimizer's checkpoint tracking leaves it be."""

    def __init__(self, table: dict):
        self.table = table

    def of(self, key) -> tuple[float, float]:
        return self.table.get(key, (1.0, 0.0))


_CLASSES: dict = {}


def _partwise(base):
    """The PartwiseMixin subclass of a Keras optimizer class (made once per class)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Partwise{base.__name__}", (PartwiseMixin, base), {})
    return _CLASSES[base]


def decays_weight(variable) -> bool:
    """Whether optim.decay_norms_and_biases false keeps decaying this variable: matrices and kernels yes; biases,
    norm scales and shifts, and every other 1-D (or scalar) variable no (timm's filter_bias_and_bn rule)."""
    return len(variable.shape) > 1


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


def make_optimizer(cfg: dict, steps_per_epoch: int, *, head_variables=None, warmup: bool = False):
    """The optimizer of the config; the learning rate scaled with the global batch if optim.lr_scaling asks.

    `head_variables` (cxrlt.model.models.head_variables) split the model into head and backbone for the per-part
    rates and decays (read when the optimizer is built); None: every variable is treated as the head.
    `warmup`: the optimizer of train.freeze_backbone_epochs (head only, optim.head_warmup_lr, constant).
    Under mixed_float16 it is wrapped in a loss-scale optimizer that decides once for all replicas whether
    a step's gradients are finite (`loss_scale_optimizer`): float16 gradients underflow without one."""
    import keras

    o, t = cfg["optim"], cfg["train"]
    # the batch an update sees: train.batch_size x train.accumulate micro-batches
    effective = t["batch_size"] * t.get("accumulate", 1)
    frozen = t.get("freeze_backbone_epochs", 0)
    if warmup:
        lr = o.get("head_warmup_lr") or o["lr"]
        lr = scaled_lr(lr, o["lr_scaling"], effective, o["reference_batch"])
    else:
        lr = scaled_lr(o["lr"], o["lr_scaling"], effective, o["reference_batch"])
        lr = schedule(lr, o["schedule"], steps_per_epoch, t["epochs"] - frozen, o.get("warmup_epochs", 0),
                      o.get("min_lr_ratio", 0.0), o.get("cycle_epochs", 1))
    kind = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[o["name"]]
    kwargs = {"momentum": o.get("momentum", 0.9)} if o["name"] == "sgd" else {"beta_1": o["beta_1"], "beta_2": o["beta_2"]}
    optimizer = _partwise(kind)(lr, **kwargs)  # decay and clipping: PartwiseMixin's (Keras' are off)
    optimizer.clip_norm = o.get("clip_norm") or None
    head = {id(v) for v in (head_variables or [])}
    everything_is_head = head_variables is None  # no partition given: every variable learns at lr, decays as the head
    mult = o.get("backbone_lr_mult", 1.0)
    head_decay = o.get("head_weight_decay")
    head_decay = o["weight_decay"] if head_decay is None or warmup else head_decay
    keep_all = o.get("decay_norms_and_biases", True)

    def part_rule(variable):
        in_head = everything_is_head or id(variable) in head
        decay = head_decay if in_head else o["weight_decay"]
        return (1.0 if in_head else mult), (decay if keep_all or decays_weight(variable) else 0.0)

    optimizer.part_rule = part_rule
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = loss_scale_optimizer(optimizer)
    return optimizer
