"""tf.data input pipelines: file -> decoded grey image -> square 0..255 float RGB -> augment -> batch -> mix.

Everything after the file list is TensorFlow ops, so tf.data runs it in parallel and under
tf.distribute. Training streams forever (shuffle the path list, repeat, decode) and Keras cuts it
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
                  minority_share: float | None = None, strategy_fn=None, mask: np.ndarray | None = None) -> tf.data.Dataset:
    """Infinite, shuffled, augmented and mixed batches of (images, labels) for `fit`.

    `augment_fn(image, seed) -> image` runs per image; `mixer(step, images, labels)` per batch.
    Both take stateless seeds derived from `seed` and the element/batch index: the same seed
    gives the same stream. With `minority` flags, `strategy_fn(image, is_minority)` replaces
    `augment_fn` (seed 000), and `minority_share` oversamples minority images by drawing from a
    majority and a minority stream (streaming: no repeated copies are materialised).

    With a label `mask` ([N, C], 0 = ignore, from --uncertain ignore) the batches are
    (images, labels, mask). The mask travels through the mixers as C extra "uncertain" label
    columns, so every mix op combines it with its own rule: a mixed label is ignored when any
    source that shows in the image had it uncertain.
    """
    paths, labels = np.asarray(paths, dtype=str), np.asarray(labels, dtype=np.float32)
    n_classes = labels.shape[1]
    if mask is not None:
        labels = np.concatenate([labels, 1.0 - np.asarray(mask, dtype=np.float32)], axis=1)
    flags = np.zeros(len(paths), bool) if minority is None else np.asarray(minority, bool)
    if minority_share is not None:
        if flags.all() or not flags.any():
            raise ValueError(f"oversampling needs both minority and majority images; found {int(flags.sum())} "
                             f"minority of {len(flags)} (change augment.tail_quantile)")
        streams = [_stream(paths[~flags], labels[~flags], flags[~flags], cfg, seed),
                   _stream(paths[flags], labels[flags], flags[flags], cfg, seed + 1)]
        ds = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 - minority_share, minority_share], seed=seed)
    else:
        ds = _stream(paths, labels, flags, cfg, seed)
    if strategy_fn is not None:
        ds = ds.map(lambda x, y, m: (strategy_fn(x, m), y), num_parallel_calls=AUTOTUNE)
    elif augment_fn is not None:
        ds = ds.enumerate().map(lambda i, xym: (augment_fn(xym[0], _element_seed(seed, i)), xym[1]),
                                num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda x, y, m: (x, y))
    ds = ds.batch(batch_size, drop_remainder=True)
    if mixer is not None:
        ds = ds.enumerate().map(lambda i, xy: mixer(i, xy[0], xy[1]), num_parallel_calls=AUTOTUNE)
    if mask is not None:
        ds = ds.map(lambda x, y: (x, y[:, :n_classes], tf.cast(y[:, n_classes:] <= 0.0, tf.float32)))
    return ds.prefetch(AUTOTUNE)


def eval_dataset(paths: np.ndarray, cfg: dict, *, batch_size: int) -> tf.data.Dataset:
    """Batches of images in file-list order (no randomness), for validation and prediction."""
    size, resize = cfg["input"]["size"], cfg["input"]["resize"]
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    ds = ds.map(lambda p: decode_image(p, size, resize), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
