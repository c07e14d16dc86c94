"""tf.data input pipelines: file -> decoded grey image -> square 0..255 float RGB -> augment -> batch -> mix.

Everything after the file list is TensorFlow ops, so tf.data runs it in parallel and under
tf.distribute. Training streams forever (shuffle the path list, repeat, decode; or, with a
`sampling:` sampler, draw row indices and gather path/label before decoding) and Keras cuts it
into epochs with `steps_per_epoch`; evaluation keeps the CSV order so predictions line up with ids.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_image(path: tf.Tensor, size: int, resize: str = "stretch") -> tf.Tensor:
    """Any JPEG/PNG (8/16-bit, grey/RGB/RGBA) -> float32 [size, size, 3] in 0..255.

    Radiographs are grey: decode to one channel (16-bit PNGs are scaled, not truncated) and
    replicate it to the 3 channels ImageNet backbones expect (G33).
    """
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=1, dtype=tf.float32, expand_animations=False)  # 0..1
    image.set_shape([None, None, 1])
    if resize == "letterbox":
        image = tf.image.resize_with_pad(image, size, size, antialias=True)
    else:
        image = tf.image.resize(image, (size, size), antialias=True)
    image = tf.clip_by_value(image * 255.0, 0.0, 255.0)
    return tf.tile(image, (1, 1, 3))


def _element_seed(base_seed: int, index: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(base_seed, tf.int64), tf.cast(index, tf.int64)])


def _stream(paths, labels, flags, cfg: dict, seed: int) -> tf.data.Dataset:
    """One infinite shuffled stream of (image, label, is_minority)."""
    size, resize = cfg["input"]["size"], cfg["input"]["resize"]
    n = len(paths)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), labels.astype(np.float32), flags))
    decode = lambda p, y, m: (decode_image(p, size, resize), y, m)  # noqa: E731
    if cfg["input"]["cache"]:
        # Decode once, keep the resized images in RAM, shuffle the decoded images.
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE).cache()
        return ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    # Shuffling the path list is cheap even for 264,849 images; decode after it.
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.map(decode, num_parallel_calls=AUTOTUNE)


def train_dataset(paths: np.ndarray, labels: np.ndarray, cfg: dict, *, seed: int, batch_size: int,
                  augment_fn=None, mixer=None, minority: np.ndarray | None = None,
                  minority_share: float | None = None, strategy_fn=None) -> tf.data.Dataset:
    """Infinite, sampled, augmented and mixed batches of (images, labels) for `fit`.

    `augment_fn(image, seed) -> image` runs per image; `mixer(step, images, labels)` per batch.
    Both take stateless seeds derived from `seed` and the element/batch index: the same seed
    gives the same stream. With `minority` flags, `strategy_fn(image, is_minority)` replaces
    `augment_fn` (seed 000), and `minority_share` oversamples minority images by drawing from a
    majority and a minority stream (streaming: no repeated copies are materialised).

    Which images are drawn is `cfg["sampling"]` (see `sampled_images`); Balanced-MixUp
    (`cfg["mix"]["balanced_mixup"]` > 0) draws a second, class-sampled batch per step and blends it
    into the first (`balanced_batches`) before `mixer` runs.
    """
    paths, labels = np.asarray(paths, dtype=str), np.asarray(labels, dtype=np.float32)
    flags = np.zeros(len(paths), bool) if minority is None else np.asarray(minority, bool)
    if minority_share is not None:
        if flags.all() or not flags.any():
            raise ValueError(f"oversampling needs both minority and majority images; found {int(flags.sum())} "
                             f"minority of {len(flags)} (change augment.tail_quantile)")
        _check_single_sampler(cfg)
        streams = [_stream(paths[~flags], labels[~flags], flags[~flags], cfg, seed),
                   _stream(paths[flags], labels[flags], flags[flags], cfg, seed + 1)]
        ds = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 - minority_share, minority_share], seed=seed)
    else:
        ds = sampled_images(paths, labels, flags, cfg, seed)
    augment = lambda d, s: _augmented(d, s, augment_fn, strategy_fn)  # noqa: E731
    ds = augment(ds, seed).batch(batch_size, drop_remainder=True)
    ds = balanced_batches(ds, paths, labels, flags, cfg, seed, batch_size, augment)
    if mixer is not None:
        ds = ds.enumerate().map(lambda i, xy: mixer(i, xy[0], xy[1]), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _augmented(ds: tf.data.Dataset, seed: int, augment_fn, strategy_fn) -> tf.data.Dataset:
    """(image, label, is_minority) -> (augmented image, label)."""
    if strategy_fn is not None:
        return ds.map(lambda x, y, m: (strategy_fn(x, m), y), num_parallel_calls=AUTOTUNE)
    if augment_fn is not None:
        return ds.enumerate().map(lambda i, xym: (augment_fn(xym[0], _element_seed(seed, i)), xym[1]),
                                  num_parallel_calls=AUTOTUNE)
    return ds.map(lambda x, y, m: (x, y))


# --- training samplers (`sampling:`) and Balanced-MixUp's second stream -------------------------------
# The sampler yields row indices (cxrlt.sampling); each index is gathered into (path, label, flag) and
# decoded, so nothing is copied per draw: the path/label tables are held once (about 30 MB for CXR-LT's
# 264,849 images x 26 classes) and an oversampled image is decoded again each time it is drawn.

BALANCED_SEED_OFFSET = 1_000_003  # the class-sampled stream's seed: seed + this (as sampling.balanced_pair_indices)


def _sampling_section(cfg: dict) -> dict:
    from .sampling import SECTION_DEFAULTS

    return {**SECTION_DEFAULTS, **(cfg.get("sampling") or {})}


def _check_single_sampler(cfg: dict) -> None:
    if _sampling_section(cfg)["sampler"] != "instance":
        raise ValueError(f"sampling.sampler {_sampling_section(cfg)['sampler']!r} and the oversampling of an "
                         "augment.strategy both choose the training images; use one of them (sampling.sampler: "
                         "instance, or augment.strategy: baseline/none)")


def sampled_index_stream(labels: np.ndarray, cfg: dict, seed: int) -> tf.data.Dataset | None:
    """Infinite int64 row indices drawn by `cfg["sampling"]`, or None for `instance` (shuffled epochs,
    which `_stream` does without an index stream). ros/rus: minority = images with any tail class
    (`sampling.tail_quantile`, as `augment.minority_mask`), majority = every other image."""
    from . import augment, sampling

    section = _sampling_section(cfg)
    spec = sampling.spec_from_config(section)
    if spec["name"] == "instance":
        return None
    labels = np.asarray(labels)
    masks = {}
    if spec["name"] in ("ros", "rus"):
        minority = augment.minority_mask(labels, labels.sum(axis=0), section["tail_quantile"])
        if minority.all() or not minority.any():
            raise ValueError(f"sampling.sampler {spec['name']} needs minority and majority images; found "
                             f"{int(minority.sum())} minority of {len(minority)} (change sampling.tail_quantile)")
        masks = {"minority_mask": minority} if spec["name"] == "ros" else {"majority_mask": ~minority}
    return sampling.make_index_dataset(labels, spec, seed, **masks)


def sampled_images(paths, labels, flags, cfg: dict, seed: int) -> tf.data.Dataset:
    """Infinite (image, label, is_minority) drawn by the configured sampler."""
    index = sampled_index_stream(labels, cfg, seed)
    if index is None:
        return _stream(paths, labels, flags, cfg, seed)
    return images_at(index, paths, labels, flags, cfg)


def images_at(index: tf.data.Dataset, paths, labels, flags, cfg: dict) -> tf.data.Dataset:
    """(image, label, is_minority) for each row index of `index`: gather the row, then decode it.

    With `input.cache` the images are decoded once into one in-memory tensor [N, size, size, 3] (small
    data sets only, like the cache of `_stream`) and gathered by index."""
    size, resize = cfg["input"]["size"], cfg["input"]["resize"]
    labels_t = tf.constant(np.asarray(labels, np.float32))
    flags_t = tf.constant(np.asarray(flags, bool))
    if cfg["input"]["cache"]:
        decoded = _decoded_table(paths, size, resize)
        return index.map(lambda i: (tf.gather(decoded, i), tf.gather(labels_t, i), tf.gather(flags_t, i)))
    paths_t = tf.constant(np.asarray(paths, dtype=str))
    rows = index.map(lambda i: (tf.gather(paths_t, i), tf.gather(labels_t, i), tf.gather(flags_t, i)))
    return rows.map(lambda p, y, m: (decode_image(p, size, resize), y, m), num_parallel_calls=AUTOTUNE)


def _decoded_table(paths, size: int, resize: str) -> tf.Tensor:
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    ds = ds.map(lambda p: decode_image(p, size, resize), num_parallel_calls=AUTOTUNE)
    return ds.batch(len(paths)).get_single_element()


def balanced_batches(batches: tf.data.Dataset, paths, labels, flags, cfg: dict, seed: int, batch_size: int,
                     augment) -> tf.data.Dataset:
    """Balanced-MixUp (seed 003): zip each batch of the training stream with a batch of a class-sampled
    stream (q = mix.balanced_mixup_q) and blend them with `mix.BalancedMixer`; unchanged when off.

    Combined with the other mixers by stacking: Balanced-MixUp forms every batch first, then the
    BatchMixer op (Mosaic/MixUp/CutMix, by its probabilities) and CutOut run on the blended batch, their
    label rule applied to the blended (soft) labels. Seed 003 uses Balanced-MixUp alone (mosaic, mixup,
    cutmix 0), as the ablation grids do."""
    from . import mix, sampling

    mixer = mix.BalancedMixer.from_config(cfg.get("mix") or {}, seed=seed)
    if mixer is None:
        return batches
    class_seed = seed + BALANCED_SEED_OFFSET
    index = sampling.class_sampled_indices(labels, mixer.q, class_seed)
    others = augment(images_at(index, paths, labels, flags, cfg), class_seed).batch(batch_size, drop_remainder=True)
    pairs = tf.data.Dataset.zip((batches, others)).enumerate()
    return pairs.map(lambda i, pair: mixer(i, pair[0], pair[1]), num_parallel_calls=AUTOTUNE)


def eval_dataset(paths: np.ndarray, cfg: dict, *, batch_size: int) -> tf.data.Dataset:
    """Batches of images in file-list order (no randomness), for validation and prediction."""
    size, resize = cfg["input"]["size"], cfg["input"]["resize"]
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    ds = ds.map(lambda p: decode_image(p, size, resize), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
