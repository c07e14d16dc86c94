"""The one predict step: a model's probabilities averaged over test-time views, in one traced function.

Validation during training (the identity view, every epoch), a fold's out-of-fold prediction and
`python -m cxrlt.predict` (the run's TTA views) and `python -m cxrlt.bench predict` all use
:class:`Predictor`, so what the bench times is what runs. One Predictor traces its model once and is
reused for every call (every epoch's validation). It runs on this process's devices outside
strategy.run (no collective operations), so any worker may call it alone.
"""

from __future__ import annotations

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

    def __init__(self, model, tta=("identity",)):
        unknown = [name for name in tta if name not in TTA]
        if unknown or not tta:
            raise ValueError(f"unknown TTA views {unknown}; choose from {sorted(TTA)}")
        views = [TTA[name] for name in tta]
        self.n_outputs = int(model.outputs[0].shape[-1])

        @tf.function(reduce_retracing=True)
        def step(images):
            return tf.add_n([tf.cast(model(view(images), training=False), tf.float32) for view in views]) / len(views)

        self.step = step

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
