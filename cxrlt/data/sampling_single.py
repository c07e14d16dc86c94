"""Random over- and undersampling when every image has exactly one class (one-hot rows).

With one class per image there is no "tail quantile" to choose: resampling works on the classes themselves.

* ROS (`sampling.sampler: ros`, and the oversampling of seed 000's strategies): every class drawn equally often.
  `epoch_size=None`: each epoch holds every image once plus, for every class, random copies (with replacement)
  until it has as many images as the largest class (imbalanced-learn's RandomOverSampler, its default
  'not majority' strategy). `epoch_size=k`: k draws with replacement, each image weighted by the inverse of its
  class count (seed 000's code: WeightedRandomSampler(1 / n_c, num_samples=len(train), replacement=True)), so
  each class makes 1/K of the draws in expectation.
* RUS (`sampling.sampler: rus`): each epoch every class cut, without replacement, to the size of the rarest class
  (imbalanced-learn's RandomUnderSampler, its default 'not minority' strategy), drawn anew every epoch.

Streams are numpy epochs seeded by (seed + epoch) and streamed like the multi-label ROS/RUS
(`sampling._epochs`), so a resumed fold continues the same stream.
"""

from __future__ import annotations

import numpy as np

from . import sampling


def _classes(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty one-hot [N, K] array, got shape {labels.shape}")
    return np.argmax(labels, axis=1)


def oversample_epoch(labels, seed: int, epoch_size: int | None = None) -> np.ndarray:
    """One shuffled epoch of class-balanced random oversampling (int64 row indices)."""
    y = _classes(labels)
    rng = np.random.default_rng(seed)
    present = np.unique(y)
    if epoch_size is None:
        members = [np.flatnonzero(y == c) for c in present]
        largest = max(len(m) for m in members)
        extra = [rng.choice(m, size=largest - len(m), replace=True) for m in members if len(m) < largest]
        out = np.concatenate([np.arange(len(y)), *extra])
    else:
        counts = np.bincount(y)
        weights = 1.0 / counts[y]
        out = rng.choice(len(y), size=int(epoch_size), replace=True, p=weights / weights.sum())
    return rng.permutation(out).astype(np.int64)


def undersample_epoch(labels, seed: int) -> np.ndarray:
    """One shuffled epoch of random undersampling: every class cut to the rarest class's count."""
    y = _classes(labels)
    rng = np.random.default_rng(seed)
    present = np.unique(y)
    smallest = min(int(np.sum(y == c)) for c in present)
    kept = [rng.choice(np.flatnonzero(y == c), size=smallest, replace=False) for c in present]
    return rng.permutation(np.concatenate(kept)).astype(np.int64)


def index_dataset(name: str, labels, seed: int, *, epoch_size: int | None = None):
    """Infinite int64 row-index stream of `name` (ros | rus) over single-label (one-hot) rows."""
    labels = np.asarray(labels)
    if name == "ros":
        return sampling._epochs(lambda s: oversample_epoch(labels, s, epoch_size), seed)
    if name == "rus":
        return sampling._epochs(lambda s: undersample_epoch(labels, s), seed)
    raise ValueError(f"single-label resampling is ros or rus, not {name!r}")
