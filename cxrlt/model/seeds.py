"""Different dropout and stochastic-depth masks on every replica.

A Keras layer draws its masks from a `SeedGenerator` whose state is a variable; under a tf.distribute
strategy that variable is mirrored, so every replica drew the same seed and sample j of every replica's
micro-batch got the same mask (measured on two logical CPUs: identical masks). `fold_replica_into_seeds`
makes each generator of a model fold the replica's id in the global batch (worker x local replicas + local
index) into the seed it hands out. The state itself stays one mirrored variable, advanced alike everywhere
and checkpointed as before; one replica draws exactly what it drew before.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.random import seed_generator as _seed_generator


class ReplicaSeedGenerator(_seed_generator.SeedGenerator):
    """A SeedGenerator whose seeds differ by replica: stateless_fold_in(seed, replica id) with more than one
    replica in sync, the plain seed otherwise."""

    def next(self, ordered=True):
        seed = super().next(ordered)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
        folded = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica)
        return tf.cast(folded, seed.dtype)


def _generators(layer) -> list:
    found = list(getattr(layer, "_seed_generators", []) or [])
    found += [v for v in vars(layer).values() if isinstance(v, _seed_generator.SeedGenerator) and v not in found]
    return found


def fold_replica_into_seeds(model: keras.Model) -> int:
    """Turn every SeedGenerator of `model`'s layers, and Keras' global one (used by layers that draw without
    their own, e.g. keras.applications ConvNeXt's stochastic depth), into a ReplicaSeedGenerator; returns how
    many generators there are. Call it once the model is built, under the strategy's scope."""
    generators = {id(g): g for layer in model._flatten_layers() for g in _generators(layer)}
    shared = _seed_generator.global_seed_generator()
    generators[id(shared)] = shared
    for generator in generators.values():
        if type(generator) is _seed_generator.SeedGenerator:
            generator.__class__ = ReplicaSeedGenerator  # same state, same config: only `next` differs
    return len(generators)
