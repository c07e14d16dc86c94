"""The one predict step: a model's probabilities averaged over test-time views, in one traced function.

Validation during training (the identity view, every epoch), a fold's out-of-fold prediction and
`python -m cxrlt.predict` (the run's TTA views) and `python -m cxrlt.bench predict` all use
:class:`Predictor`, so what the bench times is what runs. One Predictor traces its model once and is
reused for every call (every epoch's validation). Called on a dataset it runs on this process's default
device (no collective operations), so any process may call it alone. Given a tf.distribute strategy,
`Predictor.shard` spreads a list over every replica of every worker instead (validation and OOF
during training): each predicts its own share and all of them receive every score, in list order.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ..config.schema import TTA_VIEWS

# Test-time views, averaged per image. Only views that give a plausible radiograph: seed 002 uses the
# horizontal flip; vertical flips and rotations by 90 degrees produce images no scanner makes.
TTA = {
    "identity": lambda x: x,
    "hflip": lambda x: tf.reverse(x, axis=[2]),  # [B, H, W, C]: mirror the width
}
assert set(TTA) == set(TTA_VIEWS), "predict.step.TTA and config.schema.TTA_VIEWS name the same views"


class Predictor:
    """`predictor(batches)` -> [N, C] float32: the mean of the model's outputs over the `tta` views."""

    def __init__(self, model, tta=("identity",), strategy: tf.distribute.Strategy | None = None):
        """`strategy`: the one the model's variables were made under, for `shard` (None: this device only)."""
        unknown = [name for name in tta if name not in TTA]
        if unknown or not tta:
            raise ValueError(f"unknown TTA views {unknown}; choose from {sorted(TTA)}")
        views = [TTA[name] for name in tta]
        self.n_outputs = int(model.outputs[0].shape[-1])
        self.strategy = strategy

        def view_mean(images):
            return tf.add_n([tf.cast(model(view(images), training=False), tf.float32) for view in views]) / len(views)

        self.step = tf.function(view_mean, reduce_retracing=True)
        if strategy is not None:
            # No collective inside: each replica scores its own batch; the workers meet once, after the list.
            self.replica_step = tf.function(lambda batches: strategy.run(view_mean, args=(batches,)),
                                            reduce_retracing=True)

    def shard(self, n: int, make_batches, *, batch_size: int, progress=None, label: str = "predict") -> np.ndarray:
        """Scores of a list of `n` images, [n, C] in list order, on every worker; each replica predicts a share.

        `make_batches(rows, batch_size)` returns a dataset of image batches of the list's rows `rows` (in that
        order). Worker w of W takes the w-th of W contiguous parts of the list; its L replicas take its
        batches of `batch_size` in turn (L at a time, one per replica). The workers' scores meet in one
        all-reduce (each row is non-zero on one worker only, so the sum is that worker's value, bit for bit)
        and every row must have been scored exactly once. `progress` counts this worker's images. One device, no workers: `__call__` on one stream.
        """
        from ..runtime import distribute

        strategy = self.strategy
        if strategy is None or strategy.num_replicas_in_sync == 1:
            return self(make_batches(np.arange(n), batch_size), expected=n, progress=progress, label=label)
        worker, workers = distribute.worker_position(strategy)
        per_worker = distribute.local_replicas(strategy)
        rows = np.array_split(np.arange(n), workers)[worker]
        out = np.zeros((n, self.n_outputs + 1), np.float32)  # the last column counts who scored the row
        iterator = iter(make_batches(rows, batch_size)) if len(rows) else iter(())
        done = 0
        for _ in range(math.ceil(len(rows) / (batch_size * per_worker))):
            group = [batch for _, batch in zip(range(per_worker), iterator)]
            if not group:
                break
            sizes = [int(batch.shape[0]) for batch in group]
            group += [group[-1]] * (per_worker - len(group))  # idle replicas repeat a batch; its scores are dropped
            per_replica = strategy.experimental_distribute_values_from_function(
                lambda ctx: group[ctx.replica_id_in_sync_group % per_worker])
            results = strategy.experimental_local_results(self.replica_step(per_replica))
            for size, probs in zip(sizes, results):
                out[rows[done:done + size], :-1] = np.asarray(probs)
                out[rows[done:done + size], -1] += 1
                done += size
                if progress is not None:
                    progress.add(size)
        if done != len(rows) or next(iterator, None) is not None:
            raise RuntimeError(f"{label}: the input pipeline yielded {done}+ images for a share of {len(rows)}")
        out = distribute.sum_over_workers(strategy, out)
        if not np.all(out[:, -1] == 1):
            raise RuntimeError(f"{label}: {int(np.sum(out[:, -1] != 1))} of {n} images were not scored exactly once")
        return out[:, :-1]

    def __call__(self, batches, *, expected: int | None = None, progress=None, label: str = "predict") -> np.ndarray:
        """Stream `batches` (a dataset of image batches). With `expected` (the image count) the scores go
        into one preallocated array, so memory stays flat in N, and a short stream is an error."""
        if expected is None:
            out = [self.step(images).numpy() for images in batches]
            return np.concatenate(out) if out else np.zeros((0, self.n_outputs), np.float32)
        out = np.empty((expected, self.n_outputs), np.float32)
        filled = 0
        for images in batches:
            probs = self.step(images).numpy()
            out[filled:filled + len(probs)] = probs
            filled += len(probs)
            if progress is not None:
                progress.add(len(probs))
        if filled != expected:
            raise RuntimeError(f"{label}: the input pipeline yielded {filled} images for a list of {expected}")
        return out
