"""Class-frequency samplers for multi-hot labels (seed 003 eq. 2, decisions G11 and G28), streamed in tf.data.

Every sampler yields int64 row indices into the training table; map them to paths/labels with
``tf.gather`` or a lookup. The streams are infinite and built from stateless random ops keyed by
``(seed, block)``, so the same seed gives the same stream whatever TensorFlow's global seed.

* :func:`class_sampled_indices` - G11 "class first": pick class j with ``p_j = n_j^q / sum_k n_k^q``
  (q in the PAPER's convention: 1 = instance-like, 0.5 = square root, 0 = class-balanced; the
  ``balanced_mixup`` code inverts it), then an image positive for j uniformly at random. The positives
  of all classes are stored once, CSR-style (one concatenated index array + per-class offsets and
  counts, int32: about 2.5 MB for CXR-LT's ~636k positive labels), and a block of draws is a
  ``searchsorted`` on the class CDF plus a modulo into the class's slice. No per-class copies, no
  ``sample_from_datasets``. "No Finding" is a class like any other.
* :func:`instance_sampled_indices` - ordinary shuffled epochs, forever.
* :func:`random_oversample_indices` / :func:`random_undersample_indices` - one epoch of seed 000's
  ROS / RUS as numpy index arrays; :func:`make_index_dataset` streams them epoch after epoch.
* :func:`balanced_pair_indices` - (instance index, class index) pairs for Balanced-MixUp (seed 003).
* :func:`repeat_factor_indices` - repeat-factor sampling (Gupta et al.'s LVIS rule, detectron2's
  RepeatFactorTrainingSampler), as the CXR-LT 2026 task-1 winner's "class-aware sampling" (CAS,
  hieuphamha19/CXR_LT ``RepeatFactorDistributedSampler``): every epoch holds each image
  ``round(clip(max over its positives of max(1, sqrt(t / f_c)), 1, max_repeat))`` times, where ``f_c`` is class
  c's share of all positive labels (their ``cls_counts / cls_counts.sum()``, counts floored at 1). Their code
  puts an image's copies next to each other after shuffling the images; here the expanded epoch is shuffled
  again (detectron2's sampler does the same), so the copies do not land in one batch.

Note on the mix of the resulting image stream: under class-first sampling, an image with several
positives can be reached through any of them, so the share of *images* positive for class j is
above ``p_j`` for co-occurring classes; ``p_j`` is the distribution of the *picked* class.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

BLOCK = 1024  # draws per stateless random call; part of the stream's definition (changing it changes the stream)
from ..config import defaults
from ..config.schema import SAMPLERS, oversampling_conflict  # noqa: F401 - re-exported for the pipeline


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty [N, C] array, got shape {labels.shape}")
    return labels > 0.5 if labels.dtype.kind == "f" else labels > 0


def class_probabilities(class_counts, q: float) -> np.ndarray:
    """``p_j = n_j^q / sum_k n_k^q`` over the classes with positives; classes with none get 0."""
    counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError(f"class_counts must be finite and >= 0, got {counts.tolist()}")
    if not np.isfinite(q):
        raise ValueError(f"q must be finite, got {q}")
    present = counts > 0
    if not present.any():
        raise ValueError("no class has a positive image: nothing to sample")
    weights = np.zeros_like(counts)
    weights[present] = counts[present] ** float(q)
    return weights / weights.sum()


def _seed_pair(seed, block):
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(block, tf.int64)])


def class_sampled_indices(labels, q: float, seed: int, *, with_class: bool = False) -> tf.data.Dataset:
    """Infinite int64 image indices: a class with probability p_j (:func:`class_probabilities`), then
    a uniformly random image positive for it. ``with_class=True`` yields ``(index, class)`` pairs."""
    positive = _labels(labels)
    n, num_classes = positive.shape
    if n >= 2**31:
        raise ValueError(f"{n} images: more than int32 indices can address")
    counts = positive.sum(axis=0)
    probs = class_probabilities(counts, q)
    # CSR: rows of class 0's positives, then class 1's, ... (np.nonzero on the transpose is class-major).
    _, rows = np.nonzero(positive.T)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cdf = np.cumsum(probs)
    cdf[np.flatnonzero(probs > 0)[-1]:] = 1.0  # exact top: u in [0, 1) always lands on a class with p > 0

    rows_t = tf.constant(rows.astype(np.int32))
    offsets_t = tf.constant(offsets.astype(np.int64))
    counts_t = tf.constant(counts.astype(np.int64))
    cdf_t = tf.constant(cdf, tf.float64)
    seed = int(seed)

    def block(b):
        keys = tf.random.experimental.stateless_split(_seed_pair(seed, b), 2)
        u = tf.random.stateless_uniform([BLOCK], keys[0], dtype=tf.float64)
        cls = tf.minimum(tf.searchsorted(cdf_t, u, side="right", out_type=tf.int64), num_classes - 1)
        r = tf.random.stateless_uniform([BLOCK], keys[1], minval=None, maxval=None, dtype=tf.int64)
        within = tf.math.floormod(r, tf.gather(counts_t, cls))  # bias <= count / 2^64: negligible
        index = tf.cast(tf.gather(rows_t, tf.gather(offsets_t, cls) + within), tf.int64)
        return (index, cls) if with_class else index

    return tf.data.Dataset.counter().map(block).unbatch()


def instance_sampled_indices(n: int, seed: int, reshuffle_each_iteration: bool = True) -> tf.data.Dataset:
    """Infinite int64 indices in shuffled epochs of ``range(n)`` (every image once per epoch).

    With ``reshuffle_each_iteration=False`` every epoch repeats the first epoch's order.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seed = int(seed)
    base = tf.range(n, dtype=tf.int64)

    def epoch(e):
        key = _seed_pair(seed, e if reshuffle_each_iteration else 0)
        return tf.random.experimental.stateless_shuffle(base, key)

    return tf.data.Dataset.counter().map(epoch).unbatch()


def _image_mask(labels: np.ndarray, mask, what: str, any_of: bool) -> np.ndarray:
    """An image mask [N] as given, or derived from a class mask [C] (when C != N)."""
    mask = np.asarray(mask).reshape(-1).astype(bool)
    n, c = labels.shape
    if mask.size == n:
        return mask
    if mask.size == c:
        if any_of:  # minority image: positive for any flagged class
            return labels[:, mask].any(axis=1)
        return ~labels[:, ~mask].any(axis=1)  # majority image: no positive outside the flagged classes
    raise ValueError(f"{what} must have one flag per image ({n}) or per class ({c}), got {mask.size}")


def random_oversample_indices(labels, minority_mask, target_share: float, seed: int, *,
                              epoch_size: int | None = None) -> np.ndarray:
    """One epoch of random oversampling (ROS, seed 000), shuffled int64 indices.

    ``minority_mask``: one flag per image, or one per class (an image is minority if positive for any
    flagged class; e.g. :func:`cxrlt.augment.minority_mask` gives image flags). Minority images make
    ``target_share`` of the epoch:

    * ``epoch_size=None`` (pure ROS): every image appears once, plus minority copies drawn uniformly
      with replacement until the share is reached; the epoch has about ``n_majority / (1 - target_share)``
      entries. A target at or below the current share adds nothing.
    * ``epoch_size=k`` (seed 000's code, G28: ``len(train)`` draws with replacement): ``round(share*k)``
      minority draws and the rest majority draws, each uniformly with replacement.
    """
    positive = _labels(labels)
    minority = _image_mask(positive, minority_mask, "minority_mask", any_of=True)
    if not 0.0 < float(target_share) < 1.0:
        raise ValueError(f"target_share must be in (0, 1), got {target_share}")
    mino, majo = np.flatnonzero(minority), np.flatnonzero(~minority)
    if mino.size == 0 or majo.size == 0:
        raise ValueError(f"oversampling needs minority and majority images; got {mino.size} minority, "
                         f"{majo.size} majority")
    rng = np.random.default_rng(seed)
    if epoch_size is None:
        wanted = int(np.ceil(target_share * majo.size / (1.0 - target_share)))
        extra = rng.choice(mino, size=max(wanted - mino.size, 0), replace=True)
        out = np.concatenate([majo, mino, extra])
    else:
        k = int(epoch_size)
        n_min = int(round(target_share * k))
        out = np.concatenate([rng.choice(majo, size=k - n_min, replace=True), rng.choice(mino, size=n_min, replace=True)])
    return rng.permutation(out).astype(np.int64)


def random_undersample_indices(labels, majority_mask, keep_fraction: float, seed: int) -> np.ndarray:
    """One epoch of random undersampling (RUS), shuffled int64 indices: every non-majority image once,
    and a random ``keep_fraction`` of the majority images (without replacement).

    ``majority_mask``: one flag per image, or one per class (an image is majority if it has no
    positive outside the flagged classes, e.g. "No Finding"-only images).
    """
    positive = _labels(labels)
    majority = _image_mask(positive, majority_mask, "majority_mask", any_of=False)
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    rng = np.random.default_rng(seed)
    majo = np.flatnonzero(majority)
    kept = rng.choice(majo, size=int(round(keep_fraction * majo.size)), replace=False)
    return rng.permutation(np.concatenate([np.flatnonzero(~majority), kept])).astype(np.int64)


def _epochs(make_epoch, seed: int) -> tf.data.Dataset:
    """Stream numpy epochs ``make_epoch(seed + e)`` for e = 0, 1, ... (host-side generator)."""
    def gen():
        e = 0
        while True:
            yield make_epoch(int(seed) + e)
            e += 1

    return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([None], tf.int64)).unbatch()


def make_index_dataset(labels, sampler_cfg: dict, seed: int, *, minority_mask=None,
                       majority_mask=None) -> tf.data.Dataset:
    """Infinite int64 index stream from a config, e.g.::

        {"name": "instance"}                      # shuffled epochs
        {"name": "class"} / {"name": "sqrt"}      # class-first sampling, q = 0 / 0.5
        {"name": "q", "q": 0.25}                  # any q (paper convention)
        {"name": "ros", "target_share": 0.5, "epoch_size": None}   # needs minority_mask=
        {"name": "rus", "keep_fraction": 0.5}                      # needs majority_mask=
        {"name": "repeat_factor", "threshold": 0.01, "max_repeat": 10}   # the 2026 winner's CAS
    """
    cfg = dict(sampler_cfg or {})
    name = cfg.pop("name", "instance")
    allowed = {"instance": {"reshuffle_each_iteration"}, "class": set(), "sqrt": set(), "q": {"q"},
               "ros": {"target_share", "epoch_size"}, "rus": {"keep_fraction"},
               "repeat_factor": {"threshold", "max_repeat"}}
    if name not in allowed:
        raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    unknown = sorted(set(cfg) - allowed[name])
    if unknown:
        raise ValueError(f"sampler {name!r} got unknown key(s) {unknown}; it takes {sorted(allowed[name]) or 'none'}")
    labels = np.asarray(labels)
    if name == "instance":
        return instance_sampled_indices(len(labels), seed, cfg.get("reshuffle_each_iteration", True))
    if name in ("class", "sqrt", "q"):
        if name == "q" and "q" not in cfg:
            raise ValueError("sampler 'q' needs a 'q' value (1 instance-like, 0.5 square root, 0 class-balanced)")
        q = {"class": 0.0, "sqrt": 0.5}.get(name, cfg.get("q"))
        return class_sampled_indices(labels, float(q), seed)
    if name == "repeat_factor":
        return repeat_factor_indices(labels, cfg.get("threshold", 0.01), cfg.get("max_repeat", 10.0), seed)
    if name == "ros":
        if minority_mask is None:
            raise ValueError("sampler 'ros' needs minority_mask (image or class flags)")
        share, size = cfg.get("target_share", 0.5), cfg.get("epoch_size")
        return _epochs(lambda s: random_oversample_indices(labels, minority_mask, share, s, epoch_size=size), seed)
    if majority_mask is None:
        raise ValueError("sampler 'rus' needs majority_mask (image or class flags)")
    keep = cfg.get("keep_fraction", 0.5)
    return _epochs(lambda s: random_undersample_indices(labels, majority_mask, keep, s), seed)


def repeat_factors(labels, threshold: float = 0.01, max_repeat: float = 10.0) -> np.ndarray:
    """Copies of each image per epoch (int64 >= 1): the 2026 winner's repeat factors, rounded as their sampler
    (``int(np.round(r_i))``); an image without positives is drawn once."""
    positive = _labels(labels)
    if not float(threshold) > 0 or not float(max_repeat) >= 1:
        raise ValueError(f"repeat factors need threshold > 0 and max_repeat >= 1, got {threshold}, {max_repeat}")
    counts = np.maximum(positive.sum(axis=0), 1).astype(np.float64)
    freq = counts / counts.sum()
    per_class = np.maximum(1.0, np.sqrt(float(threshold) / np.clip(freq, 1e-12, None)))
    per_image = np.where(positive, per_class[None, :], 1.0).max(axis=1)
    return np.round(np.clip(per_image, 1.0, float(max_repeat))).astype(np.int64)


def repeat_factor_indices(labels, threshold: float, max_repeat: float, seed: int) -> tf.data.Dataset:
    """Infinite int64 indices in epochs of ``sum(repeat_factors)`` entries: the images shuffled, each repeated
    its number of copies, the result shuffled again (TensorFlow ops only: tf.data service workers can run it)."""
    copies = repeat_factors(labels, threshold, max_repeat)
    copies_t = tf.constant(copies)
    base = tf.range(len(copies), dtype=tf.int64)
    seed = int(seed)

    def epoch(e):
        keys = tf.random.experimental.stateless_split(_seed_pair(seed, e), 2)
        order = tf.random.experimental.stateless_shuffle(base, keys[0])
        return tf.random.experimental.stateless_shuffle(tf.repeat(order, tf.gather(copies_t, order)), keys[1])

    return tf.data.Dataset.counter().map(epoch).unbatch()


def epoch_images(labels, section: dict) -> int:
    """Images in one epoch of the `sampling:` section's stream: the table's size, or for repeat_factor the sum of
    the repeat factors (the winner's epochs are of the repeated list)."""
    s = {**SECTION_DEFAULTS, **(section or {})}
    if s["sampler"] == "repeat_factor":
        return int(repeat_factors(labels, s["repeat_threshold"], s["repeat_max"]).sum())
    return len(np.asarray(labels))


BALANCED_SEED_OFFSET = 1_000_003  # Balanced-MixUp's class-sampled stream is seeded with seed + this


def balanced_pair_indices(labels, q_class: float = 0.0, seed: int = 0) -> tf.data.Dataset:
    """Infinite ``(instance_index, class_index)`` int64 pairs for Balanced-MixUp (seed 003): one
    instance-sampled stream (shuffled epochs) zipped with one class-sampled stream (``q_class``,
    default 0 = class-balanced). The two streams use different seeds derived from ``seed``."""
    labels = np.asarray(labels)
    instance = instance_sampled_indices(len(labels), seed)
    balanced = class_sampled_indices(labels, q_class, seed + BALANCED_SEED_OFFSET)
    return tf.data.Dataset.zip((instance, balanced))


# --- the `sampling:` config section (cxrlt/defaults.yaml) ---------------------------------------------

SECTION_DEFAULTS = defaults()["sampling"]  # the `sampling:` section of defaults.yaml, the one copy


def config_problem(section: dict) -> str | None:
    """What is wrong with a `sampling:` section (a message naming the key), or None. Checked when the
    config is loaded, before any TensorFlow work."""
    s = {**SECTION_DEFAULTS, **(section or {})}
    unknown = sorted(set(s) - set(SECTION_DEFAULTS))
    if unknown:
        return f"sampling: unknown key(s) {unknown}; known: {sorted(SECTION_DEFAULTS)}"
    if s["sampler"] not in SAMPLERS:
        return f"sampling.sampler must be one of {', '.join(SAMPLERS)}, got {s['sampler']!r}"
    if not isinstance(s["q"], (int, float)) or not np.isfinite(s["q"]):
        return (f"sampling.q must be a finite number (1 instance-like, 0.5 square root, 0 class-balanced), "
                f"got {s['q']!r}")
    if not 0.0 <= s["tail_quantile"] <= 1.0:
        return f"sampling.tail_quantile must be in [0, 1], got {s['tail_quantile']}"
    if not 0.0 < s["ros_share"] < 1.0:
        return f"sampling.ros_share must be in (0, 1), got {s['ros_share']}"
    if int(s["ros_epoch_size"]) < 0:
        return (f"sampling.ros_epoch_size must be 0 (every image once plus copies) or a number of draws, "
                f"got {s['ros_epoch_size']}")
    if not 0.0 < s["rus_keep"] <= 1.0:
        return f"sampling.rus_keep must be in (0, 1], got {s['rus_keep']}"
    if not s["repeat_threshold"] > 0 or not s["repeat_max"] >= 1:
        return (f"sampling.repeat_threshold must be > 0 and sampling.repeat_max >= 1, got {s['repeat_threshold']} "
                f"and {s['repeat_max']}")
    return None


def spec_from_config(section: dict) -> dict:
    """The `sampling:` section as a :func:`make_index_dataset` spec (``{"name": ..., ...}``)."""
    problem = config_problem(section)
    if problem:
        raise ValueError(problem)
    s = {**SECTION_DEFAULTS, **(section or {})}
    name = s["sampler"]
    if name == "q":
        return {"name": "q", "q": float(s["q"])}
    if name == "ros":
        return {"name": "ros", "target_share": float(s["ros_share"]), "epoch_size": int(s["ros_epoch_size"]) or None}
    if name == "rus":
        return {"name": "rus", "keep_fraction": float(s["rus_keep"])}
    if name == "repeat_factor":
        return {"name": "repeat_factor", "threshold": float(s["repeat_threshold"]), "max_repeat": float(s["repeat_max"])}
    return {"name": name}
