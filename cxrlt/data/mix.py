"""Batch mixers in plain TensorFlow ops: Mosaic (random-crop and full-resize), MixUp, CutMix, CutOut,
Balanced-MixUp, and the per-batch policy `BatchMixer` that chooses among them.

Conventions (the contract with `cxrlt.pipeline`):
- `images` float32 [B, H, W, C] in 0..255 (C = 1 in the pipeline, grey), `labels` float32 [B, C'] multi-hot; B static
  (drop_remainder=True). Every op returns tensors of the same shapes and dtypes, with the static
  shapes kept, so the ops run inside `tf.data` `map` in graph mode, at 32..768 px.
- Randomness is stateless: every op takes a `seed`, an int tensor of shape [2] (or a Python int).
  The same seed gives the same batch, in any tf.data worker, in any order. `BatchMixer` derives the
  seed of batch `step` from (its base seed, step).
- Partners come from the same (shuffled) batch: output i is built from image i and the next 1 or 3
  images after i in a random cyclic order of the batch (`_partner_indices`). So the sources of one
  output are distinct (for B >= 2, or B >= 4 for Mosaic), and every image of the batch is used
  exactly once in each source slot (each Mosaic quadrant, each MixUp/CutMix role).
- The batch mixed is an optimizer update's whole batch, not one replica's share: the pipeline mixes
  every local replica's micro-batches of an update together (`pipeline.train_dataset(mix_group=...)`),
  and in accelerator mode every replica gathers the update's batch from all replicas and workers and
  computes its own rows (`BatchMixer.apply(rows=..., source=...)`, `pipeline.device_preprocess`). An op
  is a plan (its draws for the whole batch) and the pixels of the rows asked for, read through a
  `Source`, so a row of the full result is computed the same way whichever rows are asked for.
- Every op accepts `return_info=True` and then also returns a dict with the partner indices it used
  (`sources`, int32 [k, B]), the share of each source in each output (`weights`, float32 [k, B]) and
  its geometry, so tests and previews can recompute the labels.

Label rules (`combine_labels`, one function used by every op):
- `clip_sum` (seed 002, the default): y = clip(sum of the source labels, 0, 1), the element-wise
  union ("averaging is ineffective"). A source whose share is exactly 0 (a CutMix box that was
  clipped to nothing, a lambda that underflowed to 0 or 1) is not in the image and is left out of the
  union; any share above 0 counts in full, whatever the crop or the lambda (seed 002 accepts that a
  crop can cut the finding out).
- `convex`: y = sum_k w_k y_k with w the shares (lambda, or the visible area fraction), normalised to
  sum to 1. This is what the classic MixUp/CutMix papers and Balanced-MixUp (seed 003) use.

Granularity: Mosaic split points, crop offsets, MixUp lambdas, CutMix and CutOut boxes are drawn
per sample; Balanced-MixUp uses one lambda per batch (as the seed 003 code). `BatchMixer` chooses
the mix op per batch; CutOut is then applied per image with its own probability.

Balanced-MixUp in training (`BalancedMixer`, config `mix.balanced_mixup*`) needs a second,
class-sampled batch per step, so `cxrlt.pipeline` runs it where both streams exist, before
`BatchMixer`: the two stack (Balanced-MixUp forms the batch, then Mosaic/MixUp/CutMix and CutOut
may mix it further, their label rule applied to the blended labels).

No per-image loop and no host-only kernel, so the ops run inside the train step on an accelerator:
Mosaic crop is one gather (every output pixel is one source pixel), Mosaic resize gathers a few source
rows, then columns, per output row and column and adds them with the weights of
tf.image.resize(antialias=True) (`resize_taps`; ScaleAndTranslate itself has a CPU kernel only, and the
tile sizes differ per sample). MixUp is at the memory-bandwidth floor on a CPU (a plain a*0.5 + b*0.5 of
the batch runs as fast). Speed before and after: BENCHMARKS.md, `python -m cxrlt.bench device`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import tensorflow as tf

from ..config import defaults
from ..config.schema import LABEL_MODES
MOSAIC_VARIANTS = ("crop", "resize")
_SALT = 0x6D1C5EED  # decorrelates the mixers' streams from per-image streams that share (seed, index)


# --- seeds and small helpers -------------------------------------------------------------------------

def as_seed(seed) -> tf.Tensor:
    """A stateless seed: int64 [2]. A Python int n becomes [n, 0]."""
    if isinstance(seed, int):
        seed = [seed, 0]
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.ensure_shape(seed, [2])


def _split(seed, n: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), n))


def step_seed(base_seed: int, step) -> tf.Tensor:
    """The seed of batch `step` of a mixer with base seed `base_seed` (salted, see `_SALT`)."""
    base = tf.bitwise.bitwise_xor(tf.constant(int(base_seed), tf.int64), tf.constant(_SALT, tf.int64))
    return tf.stack([base, tf.cast(step, tf.int64)])


def _batch_size(images: tf.Tensor):
    return images.shape[0] if images.shape[0] is not None else tf.shape(images)[0]


def _hw(images: tf.Tensor) -> tuple[int, int]:
    h, w = images.shape[1], images.shape[2]
    if h is None or w is None:
        raise ValueError(f"the mixers need a static image size, got shape {images.shape}")
    return int(h), int(w)


def _prepare(images, labels):
    images = tf.convert_to_tensor(images)
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_floating:
        labels = tf.cast(labels, tf.float32)
    if images.shape.rank != 4 or labels.shape.rank != 2:
        raise ValueError(f"expected images [B, H, W, C] and labels [B, C], got {images.shape} and {labels.shape}")
    return images, labels


def _beta(shape, alpha: float, beta: float, seed) -> tf.Tensor:
    """Beta(alpha, beta) from two stateless gammas: X / (X + Y). Both gammas can underflow to 0 for
    small alpha; then the sample is the mean alpha / (alpha + beta)."""
    s1, s2 = _split(seed, 2)
    x = tf.random.stateless_gamma(shape, s1, alpha=alpha, dtype=tf.float32)
    y = tf.random.stateless_gamma(shape, s2, alpha=beta, dtype=tf.float32)
    total = x + y
    return tf.where(total > 0, x / tf.where(total > 0, total, 1.0), alpha / (alpha + beta))


def _partner_indices(batch, n: int, seed) -> tf.Tensor:
    """int32 [n, B]: row 0 is the identity; row k is the image k places after i in a random cyclic
    order of the batch. The n sources of an output are distinct when B >= n, and each image of the
    batch appears exactly once per row."""
    order = tf.argsort(tf.random.stateless_uniform([batch], seed))
    position = tf.argsort(order)
    return tf.stack([tf.gather(order, (position + k) % batch) for k in range(n)])


def _split_points(batch, size: int, center_range, seed) -> tf.Tensor:
    """Per-sample integer split points in [ceil(low*size), floor(high*size)], within 1..size-1."""
    low, high = center_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"center_range must satisfy 0 <= low <= high <= 1, got {center_range}")
    lo, hi = max(1, math.ceil(low * size)), min(size - 1, math.floor(high * size))
    if lo > hi:  # tiny images: the middle
        lo = hi = max(1, size // 2)
    return tf.random.stateless_uniform([batch], seed, lo, hi + 1, dtype=tf.int32)


def _random_offsets(limit: tf.Tensor, seed) -> tf.Tensor:
    """Uniform integers in [0, limit] (inclusive), element-wise."""
    u = tf.random.stateless_uniform(tf.shape(limit), seed)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(limit + 1, tf.float32)), tf.int32), limit)


def _boxes(batch, h: int, w: int, box_h, box_w, seed) -> tf.Tensor:
    """Integer boxes int32 [B, 4] = (y0, y1, x0, x1): a uniform centre, the given size, clipped to the
    image (as CutMix and CutOut do), so a box near the border is smaller."""
    sy, sx = _split(seed, 2)
    cy = tf.random.stateless_uniform([batch], sy) * h
    cx = tf.random.stateless_uniform([batch], sx) * w
    box_h = tf.broadcast_to(tf.cast(box_h, tf.float32), [batch])
    box_w = tf.broadcast_to(tf.cast(box_w, tf.float32), [batch])
    y0 = tf.clip_by_value(tf.round(cy - box_h / 2), 0, h)
    y1 = tf.clip_by_value(tf.round(cy + box_h / 2), 0, h)
    x0 = tf.clip_by_value(tf.round(cx - box_w / 2), 0, w)
    x1 = tf.clip_by_value(tf.round(cx + box_w / 2), 0, w)
    return tf.cast(tf.stack([y0, y1, x0, x1], axis=1), tf.int32)


def _box_mask(boxes: tf.Tensor, h: int, w: int) -> tf.Tensor:
    """bool [B, h, w, 1], True inside each sample's box."""
    rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 1:2])
    in_cols = (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4])
    return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


def _box_area(boxes: tf.Tensor, h: int, w: int) -> tf.Tensor:
    return tf.cast((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]), tf.float32) / float(h * w)


def _result(images, labels, info, return_info: bool):
    return (images, labels, info) if return_info else (images, labels)


# --- label rule -------------------------------------------------------------------------------------

def combine_labels(labels_list, weights, mode: str = "clip_sum") -> tf.Tensor:
    """Labels of mixed images from the labels of their sources.

    labels_list: k tensors [B, C] (source k of each output). weights: k tensors, each [B] or a
    scalar, the share of source k in each output (lambda, 1 - lambda, a visible area fraction).
    clip_sum: clip(sum of the sources with a share > 0, 0, 1), the element-wise union.
    convex: sum_k w_k y_k with the weights normalised to sum to 1 per sample.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {mode!r}")
    if len(labels_list) != len(weights) or not labels_list:
        raise ValueError(f"combine_labels needs one weight per source, got {len(labels_list)} labels "
                         f"and {len(weights)} weights")
    ys = [tf.convert_to_tensor(y) for y in labels_list]
    dtype = ys[0].dtype if ys[0].dtype.is_floating else tf.float32
    ys = [tf.cast(y, dtype) for y in ys]
    ws = []
    for wt in weights:
        wt = tf.cast(tf.convert_to_tensor(wt), dtype)
        ws.append(tf.reshape(wt, [-1, 1]) if wt.shape.rank == 1 else wt)
    if mode == "clip_sum":
        return tf.clip_by_value(tf.add_n([y * tf.cast(wt > 0, dtype) for y, wt in zip(ys, ws)]), 0.0, 1.0)
    total = ws[0]
    for wt in ws[1:]:
        total = total + wt
    total = tf.where(total > 0, total, tf.ones_like(total))
    return tf.add_n([wt * y for y, wt in zip(ys, ws)]) / total


# --- sources: the images an op reads ----------------------------------------------------------------

class Source:
    """The `count` images a mix op takes its pixels from, read by index: `source(indices)` is float
    [*indices.shape, H, W, C].

    `Source.of(batch)` reads a batch tensor (the host path, library callers). In the train step
    (`pipeline.device_preprocess`) the images are the uint8 batch gathered from every replica, augmented
    as they are read: a replica computes only its own output rows, so it augments only the images those
    rows show. Ops ask for the images of their output rows only (`rows`), so they compose: the next op
    of a stack reads the previous op's outputs through a Source."""

    def __init__(self, read, count: int, shape, dtype=tf.float32, batch: tf.Tensor | None = None):
        self.read, self.count = read, int(count)
        self.shape, self.dtype, self.batch = tf.TensorShape(shape), tf.as_dtype(dtype), batch
        if self.shape.rank != 3 or not self.shape[:2].is_fully_defined():
            raise ValueError(f"the mixers need images of a static size [H, W, C], got {self.shape}")

    @classmethod
    def of(cls, images) -> "Source":
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or images.shape[0] is None:
            raise ValueError(f"expected a batch [B, H, W, C] with a static B, got {images.shape}")
        return cls(lambda i: tf.gather(images, i), images.shape[0], images.shape[1:], images.dtype, batch=images)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.shape[0]), int(self.shape[1])

    def __call__(self, indices=None) -> tf.Tensor:
        """The images at `indices` (any shape of int indices); None: all of them, in order."""
        if indices is None:
            if self.batch is not None:
                return self.batch
            indices = tf.range(self.count)
        indices = tf.convert_to_tensor(indices)
        images = self.read(tf.reshape(indices, [-1]))
        return tf.reshape(images, [*indices.shape, *self.shape]) if indices.shape.is_fully_defined() else \
            tf.reshape(images, tf.concat([tf.shape(indices), tf.shape(images)[1:]], 0))


def _at(values: tf.Tensor, rows, axis: int = 0) -> tf.Tensor:
    """values for the output rows `rows` along `axis` (a plan is drawn for every image of the batch)."""
    return values if rows is None else tf.gather(values, rows, axis=axis)


def _plan_labels(plan: dict, labels: tf.Tensor, label_mode: str) -> tf.Tensor:
    """The mixed labels of every output of the batch: the rule applied to the sources of the plan."""
    sources, weights = plan["sources"], plan["weights"]
    ys = [labels if k == 0 else tf.gather(labels, sources[k]) for k in range(sources.shape[0])]
    return combine_labels(ys, tf.unstack(weights), label_mode)


class _Op(NamedTuple):
    """A mix op in two halves: the draws for a whole batch, and the pixels of some of its outputs."""
    plan: Callable    # (batch, h, w, seed) -> dict: sources int32 [k, B], weights float32 [k, B], geometry
    pixels: Callable  # (plan, source, rows or None) -> float [n, h, w, c]


def _run_op(op: _Op, images, labels, seed, label_mode: str, return_info: bool):
    images, labels = _prepare(images, labels)
    h, w = _hw(images)
    plan = op.plan(_batch_size(images), h, w, seed)
    out = tf.ensure_shape(op.pixels(plan, Source.of(images), None), images.shape)
    mixed = tf.ensure_shape(_plan_labels(plan, labels, label_mode), labels.shape)
    return _result(out, mixed, plan, return_info)


# --- Mosaic -----------------------------------------------------------------------------------------

def _mosaic_geometry(batch, h: int, w: int, center_range, random_split: bool, seed):
    if random_split:
        s_y, s_x = _split(seed, 2)
        cy, cx = _split_points(batch, h, center_range, s_y), _split_points(batch, w, center_range, s_x)
    else:
        cy, cx = tf.fill([batch], h // 2), tf.fill([batch], w // 2)
    # quadrants 0..3 = top-left, top-right, bottom-left, bottom-right: [4, B]
    tile_h = tf.stack([cy, cy, h - cy, h - cy])
    tile_w = tf.stack([cx, w - cx, cx, w - cx])
    return cy, cx, tile_h, tile_w


def _mosaic_plan(variant: str, center_range, random_split: bool = True):
    def plan(batch, h, w, seed):
        if variant == "crop":
            s_src, s_geo, s_oy, s_ox = _split(seed, 4)
        else:
            s_src, s_geo = _split(seed, 2)
        sources = _partner_indices(batch, 4, s_src)
        cy, cx, tile_h, tile_w = _mosaic_geometry(batch, h, w, center_range, random_split or variant == "crop", s_geo)
        out = {"sources": sources, "weights": tf.cast(tile_h * tile_w, tf.float32) / float(h * w),
               "center": tf.stack([cy, cx], axis=1)}
        if variant == "crop":
            out["offsets"] = tf.stack([_random_offsets(h - tile_h, s_oy), _random_offsets(w - tile_w, s_ox)], axis=-1)
        return out
    return plan


def _quadrants(center: tf.Tensor, h: int, w: int):
    """Per output pixel of n Mosaics: (bottom [n, h, 1], right [n, 1, w]), from the split points [n, 2]."""
    ys, xs = tf.reshape(tf.range(h), [1, h, 1]), tf.reshape(tf.range(w), [1, 1, w])
    # explicit reshapes: a strided slice with new axes after an index (center[:, 0, None, None]) gave [B] in graphs
    return ys >= tf.reshape(center[:, 0], [-1, 1, 1]), xs >= tf.reshape(center[:, 1], [-1, 1, 1])


class _Separable:
    """What both Mosaics share: output row y of side s (left: quadrants 0/2, right: 1/3) is a (weighted sum of)
    whole source rows, then, transposed, output column x of a half (top: quadrants 0/1, bottom: 2/3) a
    (weighted sum of) whole columns of the left or right side. Only whole rows are gathered (contiguous
    memory: a gather per pixel costs about 30 times more on a CPU), and nothing loops over the batch.

    The source rows are read straight from the batch when the Source is a tensor (no copy of the 4 x n
    sources), else from the 4 x n images the Source returns (augmented on demand in the train step)."""

    def __init__(self, plan, source: Source, rows):
        self.h, self.w = source.hw
        self.sources = _at(plan["sources"], rows, axis=1)  # [4, n]
        self.n, self.c = self.sources.shape[1], source.shape[2]
        self.dtype = source.dtype
        h, w = self.h, self.w
        center = _at(plan["center"], rows)
        self.cy, self.cx = tf.reshape(center[:, 0], [-1, 1]), tf.reshape(center[:, 1], [-1, 1])
        self.ys, self.xs = tf.reshape(tf.range(h), [1, h]), tf.reshape(tf.range(w), [1, w])
        self.bottom, self.right = self.ys >= self.cy, self.xs >= self.cx  # [n, h], [n, w]
        self.direct = source.batch is not None  # rows read from the batch itself, by its image indices
        images = source.batch if self.direct else source(self.sources)
        self.table = tf.reshape(tf.cast(images, tf.float32), [-1, w, self.c])  # every source row

    def first_row(self, side: int, source_row) -> tf.Tensor:
        """Flat index [n, h] of `source_row` [n, h] of the source of each output row's quadrant on `side`."""
        quadrant = tf.where(self.bottom, 2, 0) + side  # [n, h]
        sample = tf.reshape(tf.range(self.n), [-1, 1])
        if not self.direct:  # the 4 x n images source(sources) returned
            image = quadrant * self.n + sample
        else:  # the batch index of the source: sources[quadrant, sample]
            image = tf.where(self.bottom, tf.reshape(self.sources[2 + side], [-1, 1]),
                             tf.reshape(self.sources[side], [-1, 1]))
        return image * self.h + source_row

    def sides(self, row_taps) -> tf.Tensor:
        """[2, n, h, w, c]: `row_taps` = [(flat row index [2, n, h], weight [2, n, h] or None)] summed."""
        out = 0.0
        for index, weight in row_taps:
            rows = tf.gather(self.table, index)
            out = out + (rows if weight is None else tf.reshape(weight, [2, self.n, self.h, 1, 1]) * rows)
        return out

    def columns(self, sides: tf.Tensor, column_taps) -> tf.Tensor:
        """[k, n, w, h, c] (transposed): `column_taps` = [(column index [k, n, w] into [left | right], weight
        [k, n, w] or None)] summed over taps, for k halves."""
        n, h, w = self.n, self.h, self.w
        flat = tf.reshape(tf.transpose(sides, [0, 1, 3, 2, 4]), [2 * n * w, h, self.c])  # columns as rows
        sample = tf.reshape(tf.range(n), [-1, 1])
        base = (tf.cast(self.right, tf.int32) * n + sample) * w
        out = 0.0
        for index, weight in column_taps:
            columns = tf.gather(flat, base + index)
            out = out + (columns if weight is None else tf.reshape(weight, [-1, n, w, 1, 1]) * columns)
        return out

    def finish(self, transposed: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.transpose(transposed, [0, 2, 1, 3]), self.dtype)


def _mosaic_crop_pixels(plan, source: Source, rows):
    """Every output pixel is one source pixel: each output row the right stretch of one source row."""
    g = _Separable(plan, source, rows)
    offsets = _at(plan["offsets"], rows, axis=1)  # [4, n, 2]
    offset = lambda quadrant, axis: tf.reshape(offsets[quadrant, :, axis], [-1, 1])  # noqa: E731
    rows_index = tf.stack([g.first_row(side, tf.where(g.bottom, offset(2 + side, 0) - g.cy, offset(side, 0)) + g.ys)
                           for side in (0, 1)])
    columns_index = tf.stack([tf.where(g.right, offset(2 * half + 1, 1) - g.cx, offset(2 * half, 1)) + g.xs
                              for half in (0, 1)])
    both = g.columns(g.sides([(rows_index, None)]), [(columns_index, None)])  # [2 halves, n, w, h, c]
    return g.finish(tf.where(tf.reshape(g.bottom, [g.n, 1, g.h, 1]), both[1], both[0]))


def resize_taps(size: int, tile, position, taps: int | None):
    """The weights of tf.image.resize(bilinear, antialias=True) (ScaleAndTranslate's triangle kernel, widened
    by the shrink factor, normalised) as `taps` taps: output pixel `position` of a resize of `size` input
    pixels to `tile` pixels (int tensors of one shape) reads inputs first..first+taps-1 with these weights.
    Returns (first int32, weights float32 [..., taps]); taps past the kernel's span weigh 0. taps=None: one
    weight per input pixel (first = 0, weights [..., size]), the dense form for strong shrinks."""
    scale = tf.cast(tile, tf.float32) / float(size)
    inverse = 1.0 / scale
    kernel_scale = tf.maximum(inverse, 1.0)
    sample = (tf.cast(position, tf.float32) + 0.5) * inverse
    first = tf.clip_by_value(tf.math.ceil(sample - kernel_scale - 0.5), 0.0, size - 1.0)
    end = tf.clip_by_value(tf.floor(sample + kernel_scale - 0.5), 0.0, size - 1.0) + 1.0
    offset = first[..., None] if taps is not None else 0.0
    source = offset + tf.range(taps if taps is not None else size, dtype=tf.float32)
    weights = tf.maximum(0.0, 1.0 - tf.abs((source + 0.5 - sample[..., None]) * (1.0 / kernel_scale)[..., None]))
    weights = tf.where((source >= first[..., None]) & (source < end[..., None]), weights, 0.0)
    total = tf.reduce_sum(weights, axis=-1, keepdims=True)
    weights = tf.where(total >= 1000.0 * 1.1754944e-38, weights / tf.where(total > 0, total, 1.0), weights)
    return tf.cast(first if taps is not None else tf.zeros_like(first), tf.int32), weights


MAX_TAPS = 16  # beyond (tiles under 1/7.5 of the side, from a wide mix.mosaic_center): dense weights, matmuls


def _taps_needed(size: int, smallest_tile: int) -> int:
    """Taps that cover the antialiasing kernel of the strongest shrink (size -> smallest_tile): 2 x shrink + 1."""
    return int(min(size, math.floor(2.0 * size / max(1, smallest_tile) + 1e-3) + 1))


def _smallest_tile(size: int, center_range, random_split: bool) -> int:
    if not random_split:
        return size // 2
    low, high = center_range
    lo, hi = max(1, math.ceil(low * size)), min(size - 1, math.floor(high * size))
    if lo > hi:
        lo = hi = max(1, size // 2)
    return min(lo, size - hi)


def _mosaic_resize_pixels(center_range, random_split: bool):
    """Each source resized whole into its quadrant, separably: every output row is a weighted sum of a few
    rows of its source (the taps of `resize_taps`), then every output column of a few columns."""
    def pixels(plan, source: Source, rows):
        g = _Separable(plan, source, rows)
        h, w = g.h, g.w
        row_taps, column_taps = (_taps_needed(size, _smallest_tile(size, center_range, random_split))
                                 for size in (h, w))
        if max(row_taps, column_taps) > MAX_TAPS:
            return _dense_resize(g)
        first, weights = resize_taps(h, tf.where(g.bottom, h - g.cy, g.cy), tf.where(g.bottom, g.ys - g.cy, g.ys),
                                     row_taps)
        row_taps = [(tf.stack([g.first_row(side, tf.minimum(first + t, h - 1)) for side in (0, 1)]),
                     tf.stack([weights[..., t]] * 2)) for t in range(weights.shape[-1])]
        first, weights = resize_taps(w, tf.where(g.right, w - g.cx, g.cx), tf.where(g.right, g.xs - g.cx, g.xs),
                                     column_taps)
        # top and bottom tiles share their widths: one pass over the columns serves both halves
        column_taps = [(tf.minimum(first + t, w - 1)[None], weights[None, ..., t]) for t in range(weights.shape[-1])]
        return g.finish(g.columns(g.sides(row_taps), column_taps)[0])
    return pixels


def _dense_resize(g: _Separable) -> tf.Tensor:
    """Mosaic resize with one weight per source row and column (`resize_taps(taps=None)`): batched matmuls,
    for splits so uneven that a tile shrinks more than MAX_TAPS / 2 times."""
    h, w, n = g.h, g.w, g.n
    images = tf.reshape(g.table, [-1, h, w, g.c])
    if g.direct:  # the sources in the batch
        pick = lambda q: tf.gather(images, g.sources[q])  # noqa: E731
    else:  # the 4 x n images the Source returned, quadrant-major
        pick = lambda q: images[q * n:(q + 1) * n]  # noqa: E731
    _, rows = resize_taps(h, tf.where(g.bottom, h - g.cy, g.cy), tf.where(g.bottom, g.ys - g.cy, g.ys), None)
    _, columns = resize_taps(w, tf.where(g.right, w - g.cx, g.cx), tf.where(g.right, g.xs - g.cx, g.xs), None)
    bottom, right = tf.cast(g.bottom, tf.float32)[..., None], tf.cast(g.right, tf.float32)[..., None]
    sides = [tf.einsum("nyj,njwc->nywc", rows * (1.0 - bottom), pick(side))
             + tf.einsum("nyj,njwc->nywc", rows * bottom, pick(2 + side)) for side in (0, 1)]
    out = (tf.einsum("nyjc,nxj->nyxc", sides[0], columns * (1.0 - right))
           + tf.einsum("nyjc,nxj->nyxc", sides[1], columns * right))
    return tf.cast(out, g.dtype)


def _mosaic_op(variant: str, center_range=(0.25, 0.75), random_split: bool = True) -> _Op:
    center_range = tuple(float(v) for v in center_range)
    if variant == "crop":
        return _Op(_mosaic_plan("crop", center_range), _mosaic_crop_pixels)
    return _Op(_mosaic_plan("resize", center_range, random_split), _mosaic_resize_pixels(center_range, random_split))


def mosaic_crop(images, labels, seed, center_range=(0.25, 0.75), label_mode="clip_sum", return_info=False):
    """Mosaic, random-crop variant (seed 002 Fig. 3 top).

    Each output is split at a random centre (cy, cx) drawn per sample, uniform in `center_range`
    times the size; each of the 4 quadrants is filled with a random crop, of exactly the quadrant's
    size, of one source (image i and the 3 next in a random cyclic order of the batch). Sources are
    already at the output size, so no quadrant has a blank gap. Convex weights = quadrant areas.
    The whole batch in one gather (every output pixel is one source pixel), no per-sample loop.
    """
    return _run_op(_mosaic_op("crop", center_range), images, labels, seed, label_mode, return_info)


def mosaic_resize(images, labels, seed, random_split=True, center_range=(0.25, 0.75), label_mode="clip_sum",
                  return_info=False):
    """Mosaic, full-resize variant (seed 002 Fig. 3 bottom): each of the 4 sources is resized whole
    (bilinear, antialiased: the weights of tf.image.resize(antialias=True), see `resize_taps`) into its
    quadrant, so no finding is cropped away.

    random_split=True: the split point is drawn per sample in `center_range` (quadrants of different
    sizes, aspect ratios change); False: a fixed 2 x 2 grid of (H/2, W/2) tiles. Convex weights =
    quadrant areas. The whole batch at once in gathers and multiply-adds: ScaleAndTranslate (the op behind
    an antialiased tf.image.resize) has a CPU kernel only, and its tile sizes differ per sample.
    """
    return _run_op(_mosaic_op("resize", center_range, random_split), images, labels, seed, label_mode, return_info)


# --- MixUp, CutMix, CutOut, Balanced-MixUp ----------------------------------------------------------

def _mixup_op(alpha: float, per_sample: bool = True) -> _Op:
    def plan(batch, h, w, seed):
        s_src, s_lam = _split(seed, 2)
        sources = _partner_indices(batch, 2, s_src)
        lam = tf.broadcast_to(_beta([batch] if per_sample else [], alpha, alpha, s_lam), [batch])
        return {"sources": sources, "weights": tf.stack([lam, 1.0 - lam])}

    def pixels(plan, source: Source, rows):
        sources = _at(plan["sources"], rows, axis=1)
        x_a = source(None) if rows is None else source(sources[0])
        x_b = source(sources[1])
        lam = tf.cast(_at(plan["weights"][0], rows), source.dtype)[:, None, None, None]
        return x_b + lam * (x_a - x_b)
    return _Op(plan, pixels)


def mixup(images, labels, seed, alpha=0.4, label_mode="clip_sum", per_sample=True, return_info=False):
    """MixUp: x = lam x_i + (1 - lam) x_j, lam ~ Beta(alpha, alpha), one lam per sample (per batch
    with per_sample=False). j = the next image after i in a random cyclic order of the batch.
    clip_sum labels = union of y_i and y_j (seed 002); convex = lam y_i + (1 - lam) y_j."""
    return _run_op(_mixup_op(alpha, per_sample), images, labels, seed, label_mode, return_info)


def _cutmix_op(alpha: float) -> _Op:
    def plan(batch, h, w, seed):
        s_src, s_lam, s_box = _split(seed, 3)
        sources = _partner_indices(batch, 2, s_src)
        ratio = tf.sqrt(1.0 - _beta([batch], alpha, alpha, s_lam))
        boxes = _boxes(batch, h, w, ratio * h, ratio * w, s_box)
        pasted = _box_area(boxes, h, w)
        return {"sources": sources, "weights": tf.stack([1.0 - pasted, pasted]), "boxes": boxes}

    def pixels(plan, source: Source, rows):
        h, w = source.hw
        sources = _at(plan["sources"], rows, axis=1)
        x_a = source(None) if rows is None else source(sources[0])
        return tf.where(_box_mask(_at(plan["boxes"], rows), h, w), source(sources[1]), x_a)
    return _Op(plan, pixels)


def cutmix(images, labels, seed, alpha=1.0, label_mode="clip_sum", return_info=False):
    """CutMix: paste a box of x_j into x_i. lam ~ Beta(alpha, alpha) per sample; the box has the
    image's aspect ratio and area (1 - lam) before clipping to the image. The convex weights are the
    actual pasted area fraction (after clipping): w_i = 1 - area, w_j = area."""
    return _run_op(_cutmix_op(alpha), images, labels, seed, label_mode, return_info)


def _cutout_plan(batch, h: int, w: int, seed, size_frac: float, n_holes: int, p: float) -> dict:
    s_boxes, s_p = _split(seed, 2)
    hole_seeds = _split(s_boxes, n_holes)
    boxes = tf.stack([_boxes(batch, h, w, round(size_frac * h), round(size_frac * w), s) for s in hole_seeds],
                     axis=1)  # [B, holes, 4]
    chosen = tf.random.stateless_uniform([batch], s_p) < p if p < 1.0 else tf.ones([batch], tf.bool)
    return {"boxes": boxes, "applied": chosen}


def _cutout_pixels(plan: dict, images: tf.Tensor, rows, fill: float) -> tf.Tensor:
    h, w = int(images.shape[1]), int(images.shape[2])
    boxes, chosen = _at(plan["boxes"], rows), _at(plan["applied"], rows)
    mask = tf.reduce_any(tf.stack([_box_mask(boxes[:, k], h, w) for k in range(boxes.shape[1])]), axis=0)
    return tf.where(mask & chosen[:, None, None, None], tf.cast(fill, images.dtype), images)


def cutout(images, labels, seed, size_frac=0.25, n_holes=1, fill=0.0, p=1.0, return_info=False):
    """CutOut (DeVries & Taylor): per image, `n_holes` boxes of side `size_frac` times the image side,
    uniform centres, clipped at the border, filled with `fill`. Each image is cut with probability
    `p` (all of them by default). Labels unchanged."""
    images, labels = _prepare(images, labels)
    h, w = _hw(images)
    plan = _cutout_plan(_batch_size(images), h, w, seed, size_frac, n_holes, p)
    out = tf.ensure_shape(_cutout_pixels(plan, images, None, fill), images.shape)
    return _result(out, labels, plan, return_info)

def balanced_mixup(images_instance, labels_instance, images_class, labels_class, seed, alpha=0.2,
                   label_mode="convex", return_info=False):
    """Balanced-MixUp (seed 003), in the form of the authors' code (inventory erratum E5):
    x = (1 - lam) x_I + lam x_C, lam ~ Beta(alpha, 1), one lam per batch; x_I from the instance-based
    stream, x_C from the class-based stream, mixed pairwise. E[lam] = alpha / (alpha + 1).
    Labels convex by default ((1 - lam) y_I + lam y_C); clip_sum = union."""
    images_instance, labels_instance = _prepare(images_instance, labels_instance)
    images_class, labels_class = _prepare(images_class, labels_class)
    lam = _beta([], alpha, 1.0, seed)
    lam_x = tf.cast(lam, images_instance.dtype)
    out = tf.ensure_shape(images_instance + lam_x * (images_class - images_instance), images_instance.shape)
    batch = _batch_size(images_instance)
    weights = [tf.fill([batch], 1.0 - lam), tf.fill([batch], lam)]
    mixed = combine_labels([labels_instance, labels_class], weights, label_mode)
    return _result(out, tf.ensure_shape(mixed, labels_instance.shape), {"lam": lam}, return_info)


# --- per-batch policy -------------------------------------------------------------------------------

# A mixer built without a config mixes nothing: the `mix:` section of defaults.yaml (the one copy of these
# values) with every probability at 0, plus the settings only library callers change.
MIXER_DEFAULTS = {
    **defaults()["mix"],
    "mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0, "cutout": 0.0, "balanced_mixup": 0.0,
    "mosaic_center": tuple(defaults()["mix"]["mosaic_center"]),
    "exclusive": True,      # True: at most one of mosaic/mixup/cutmix per batch (sum of p <= 1; the rest: no mix)
                            # False: each applied independently, in the order Mosaic, MixUp, CutMix
    "mosaic_random_split": True,  # resize variant: random split point (False: fixed 2 x 2 grid)
    "cutout_holes": 1,
    "cutout_fill": 0.0,
    "seed": 0,              # base seed; batch `step` uses step_seed(seed, step)
}
BALANCED_KEYS = ("balanced_mixup", "balanced_mixup_labels", "balanced_mixup_q")


def _mosaic_weights(variant) -> dict[str, float]:
    if isinstance(variant, str):
        table = {"both": {"crop": 0.5, "resize": 0.5}, "crop": {"crop": 1.0}, "resize": {"resize": 1.0}}
        if variant not in table:
            raise ValueError(f"mosaic_variant must be both, crop, resize or a mapping, got {variant!r}")
        return table[variant]
    if not isinstance(variant, Mapping):
        raise ValueError(f"mosaic_variant must be both, crop, resize or a mapping, got {variant!r}")
    unknown = set(variant) - set(MOSAIC_VARIANTS)
    if unknown:
        raise ValueError(f"unknown mosaic variant {sorted(unknown)[0]!r}; known: {MOSAIC_VARIANTS}")
    weights = {k: float(v) for k, v in variant.items() if float(v) > 0}
    if any(float(v) < 0 for v in variant.values()) or not weights:
        raise ValueError(f"mosaic_variant weights must be >= 0 with one > 0, got {dict(variant)}")
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


class BatchMixer:
    """The per-batch mixing policy of seed 002: Mosaic / MixUp / CutMix by probability, then CutOut.

    Build it from a config dict (keys and defaults: `MIXER_DEFAULTS`, the `mix:` section of
    defaults.yaml) and/or keyword arguments; an unknown key is a ValueError that names it:

        mixer = BatchMixer({"mosaic": 0.5, "mosaic_variant": "both", "label_mode": "clip_sum"}, seed=42)
        ds = ds.batch(8, drop_remainder=True).enumerate().map(lambda i, b: mixer(i, *b))

    exclusive=True: one uniform draw per batch picks Mosaic (p_mosaic, split between the variants by
    `mosaic_variant`), MixUp, CutMix or, with the remaining probability, nothing; only the chosen op
    runs (tf.switch_case). exclusive=False: each op is applied with its own probability, in that
    order (tf.cond each). With all probabilities 0 the mixer is a no-op (`active` is False) and
    returns its inputs untouched, without adding any op to the graph.
    """

    def __init__(self, config: Mapping | None = None, **overrides):
        cfg = dict(config or {})
        cfg.update(overrides)
        unknown = [k for k in cfg if k not in MIXER_DEFAULTS]
        if unknown:
            raise ValueError(f"unknown BatchMixer setting {unknown[0]!r}; known: {sorted(MIXER_DEFAULTS)}")
        cfg = {**MIXER_DEFAULTS, **cfg}
        p = {k: float(cfg[k]) for k in ("mosaic", "mixup", "cutmix")}
        if any(not 0.0 <= v <= 1.0 for v in (*p.values(), float(cfg["cutout"]))):
            raise ValueError(f"mix probabilities must be in [0, 1], got {p} and cutout={cfg['cutout']}")
        if cfg["exclusive"] and sum(p.values()) > 1.0 + 1e-9:
            raise ValueError(f"with exclusive=True, mosaic + mixup + cutmix must be <= 1 (one mix op per batch), "
                             f"got {sum(p.values()):g}")
        if cfg["label_mode"] not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {cfg['label_mode']!r}")
        low, high = cfg["mosaic_center"]
        if not 0.0 <= float(low) <= float(high) <= 1.0:
            raise ValueError(f"mosaic_center must satisfy 0 <= low <= high <= 1, got {cfg['mosaic_center']}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if float(cfg[key]) <= 0:
                raise ValueError(f"{key} must be > 0, got {cfg[key]}")
        if not 0.0 < float(cfg["cutout_size"]) <= 1.0 or int(cfg["cutout_holes"]) < 1:
            raise ValueError("cutout_size must be in (0, 1] and cutout_holes >= 1")
        self.config = cfg
        self.p = p
        self.variants = _mosaic_weights(cfg["mosaic_variant"])
        self.seed = int(cfg["seed"])

    @classmethod
    def from_config(cls, cfg: Mapping, seed: int | None = None) -> "BatchMixer":
        """From the `mix:` config section; `seed` (if given) overrides cfg['seed']."""
        return cls(cfg) if seed is None else cls(cfg, seed=seed)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in self.p.values()) or float(self.config["cutout"]) > 0

    def __repr__(self) -> str:
        return f"BatchMixer({self.config})"

    def _ops(self) -> list[tuple[str, float, _Op]]:
        """(name, probability, op) of each op this mixer may run, in the policy's order."""
        c = self.config
        center = tuple(float(v) for v in c["mosaic_center"])
        table = {
            "mosaic_crop": _mosaic_op("crop", center),
            "mosaic_resize": _mosaic_op("resize", center, bool(c["mosaic_random_split"])),
            "mixup": _mixup_op(float(c["mixup_alpha"])),
            "cutmix": _cutmix_op(float(c["cutmix_alpha"])),
        }
        probs = {"mosaic_crop": self.p["mosaic"] * self.variants.get("crop", 0.0),
                 "mosaic_resize": self.p["mosaic"] * self.variants.get("resize", 0.0),
                 "mixup": self.p["mixup"], "cutmix": self.p["cutmix"]}
        return [(name, probs[name], table[name]) for name in table if probs[name] > 0]

    def choose(self, seed) -> tf.Tensor:
        """Exclusive policy: the index of the chosen op in `_ops()` plus 1, or 0 for no mix."""
        ops = self._ops()
        u = tf.random.stateless_uniform([], seed)
        bounds = tf.constant(list(_cumsum([p for _, p, _ in ops])), tf.float32)
        return tf.where(u < bounds[-1], tf.reduce_sum(tf.cast(u >= bounds, tf.int32)) + 1, 0)

    def apply(self, images, labels, seed, rows=None, source: Source | None = None):
        """Mix one batch with an explicit stateless seed [2]: (images, labels) of the mixed batch.

        rows (int [n], optional): compute only these outputs of the batch; the draws are the whole batch's,
        so the rows are exactly those rows of the full result. source (optional, with images None): read
        the batch's images through it (`Source`) instead of from a tensor. Both together are how every
        replica mixes the global batch and keeps its own rows (`pipeline.device_preprocess`)."""
        if source is None:
            images, labels = _prepare(images, labels)
            source = Source.of(images)
        else:
            labels = tf.convert_to_tensor(labels)
            labels = labels if labels.dtype.is_floating else tf.cast(labels, tf.float32)
        if labels.shape.rank != 2 or labels.shape[0] != source.count:
            raise ValueError(f"expected labels [{source.count}, C] for the batch, got {labels.shape}")
        rows = None if rows is None else tf.convert_to_tensor(rows)
        n = source.count if rows is None else rows.shape[0]
        out_shape, label_shape = [n, *source.shape], [n, labels.shape[1]]
        if not self.active:
            return source(rows), _at(labels, rows)
        batch, (h, w) = source.count, source.hw
        mode = self.config["label_mode"]
        s_choice, s_ops, s_cut = _split(seed, 3)
        ops = self._ops()

        def mixed(op, seed, source, rows):
            plan = op.plan(batch, h, w, seed)
            return op.pixels(plan, source, rows), _plan_labels(plan, labels, mode)

        if ops and self.config["exclusive"]:
            branches = [lambda: (source(rows), labels)] + [
                (lambda op=op: mixed(op, s_ops, source, rows)) for _, _, op in ops]
            images, labels = tf.switch_case(self.choose(s_choice), branches)
        elif ops:
            images, labels = self._stacked(ops, source, labels, s_choice, s_ops, rows)
        else:
            images = source(rows)
        c = self.config
        if float(c["cutout"]) > 0:
            plan = _cutout_plan(batch, h, w, s_cut, float(c["cutout_size"]), int(c["cutout_holes"]), float(c["cutout"]))
            images = _cutout_pixels(plan, images, rows, float(c["cutout_fill"]))
        return tf.ensure_shape(images, out_shape), tf.ensure_shape(_at(labels, rows), label_shape)

    def _stacked(self, ops, source: Source, labels, s_choice, s_ops, rows):
        """exclusive=False: Mosaic, MixUp, CutMix each with its own probability, each mixing the previous one's
        outputs (read through a Source, so only the outputs the next op uses are computed)."""
        mode, batch, (h, w) = self.config["label_mode"], source.count, source.hw
        draws, op_seeds = _split(s_choice, 3), _split(s_ops, 3)

        def stage(take, op, seed, source, labels):
            plan = op.plan(batch, h, w, seed)
            labels = tf.cond(take, lambda: _plan_labels(plan, labels, mode), lambda: labels)
            read = lambda i, s=source: tf.cond(take, lambda: op.pixels(plan, s, i), lambda: s(i))  # noqa: E731
            return Source(read, batch, source.shape, source.dtype), labels

        mosaic = [op for name, _, op in ops if name.startswith("mosaic")]
        others = [(p, op) for name, p, op in ops if not name.startswith("mosaic")]
        if mosaic:
            take = tf.random.stateless_uniform([], draws[0]) < self.p["mosaic"]
            if len(mosaic) == 1:
                source, labels = stage(take, mosaic[0], op_seeds[0], source, labels)
            else:  # one variant or the other: crop with its share of the probability
                crop = tf.random.stateless_uniform([], _split(draws[0], 1)[0]) < self.variants["crop"]
                source, labels = stage(take & crop, mosaic[0], op_seeds[0], source, labels)
                source, labels = stage(take & ~crop, mosaic[1], op_seeds[0], source, labels)
        for k, (p, op) in enumerate(others, start=1):
            source, labels = stage(tf.random.stateless_uniform([], draws[k]) < p, op, op_seeds[k], source, labels)
        return source(rows), labels

    def __call__(self, step, images, labels):
        """Mix batch number `step` (from `Dataset.enumerate()`); the seed is step_seed(seed, step)."""
        if not self.active:
            return images, labels
        return self.apply(images, labels, step_seed(self.seed, step))


def _cumsum(values):
    total = 0.0
    for v in values:
        total += v
        yield total


# --- Balanced-MixUp in the input pipeline ----------------------------------------------------------------

_BALANCED_SALT = 0x3B1A5C0D  # Balanced-MixUp's lam must not be correlated with BatchMixer's draws of the same step


def balanced_problem(cfg: Mapping) -> str | None:
    """What is wrong with the Balanced-MixUp keys of a `mix:` section (a message naming the key), or None."""
    alpha, mode, q = (cfg.get(k, MIXER_DEFAULTS[k]) for k in BALANCED_KEYS)
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        return f"mix.balanced_mixup is the alpha of Beta(alpha, 1), >= 0 (0 = off), got {alpha!r}"
    if mode not in LABEL_MODES:
        return f"mix.balanced_mixup_labels must be one of {LABEL_MODES}, got {mode!r}"
    if not isinstance(q, (int, float)) or not math.isfinite(q):
        return f"mix.balanced_mixup_q must be a finite number (0 = class-balanced), got {q!r}"
    return None


class BalancedMixer:
    """Balanced-MixUp (seed 003) of one instance-sampled batch and one class-sampled batch per step.

    The pipeline draws two batches per step (`cxrlt.pipeline.train_dataset`): x_I from the training
    sampler (`sampling:`, instance by default) and x_C from class-first sampling with q =
    `balanced_mixup_q`, and calls ``mixer(step, (x_I, y_I), (x_C, y_C))``:
    x = (1 - lam) x_I + lam x_C, lam ~ Beta(alpha, 1), one lam per batch (the authors' code, erratum
    E5), labels `convex` (the paper) or `clip_sum`. The seed of step `step` is fixed by (seed, step),
    so `lam(step)` is the lam that `__call__` used for that step.
    """

    def __init__(self, alpha: float, label_mode: str = "convex", q: float = 0.0, seed: int = 0):
        problem = balanced_problem({"balanced_mixup": alpha, "balanced_mixup_labels": label_mode,
                                    "balanced_mixup_q": q})
        if problem or alpha == 0:
            raise ValueError(problem or "Balanced-MixUp needs alpha > 0")
        self.alpha, self.label_mode, self.q, self.seed = float(alpha), label_mode, float(q), int(seed)

    @classmethod
    def from_config(cls, cfg: Mapping, seed: int = 0) -> "BalancedMixer | None":
        """From the `mix:` section; None when `balanced_mixup` is 0 (off)."""
        alpha = cfg.get("balanced_mixup", 0.0)
        if not alpha:
            return None
        return cls(alpha, cfg.get("balanced_mixup_labels", "convex"), cfg.get("balanced_mixup_q", 0.0), seed)

    def step_seed(self, step) -> tf.Tensor:
        return step_seed(self.seed ^ _BALANCED_SALT, step)

    def lam(self, step) -> tf.Tensor:
        """The lam of batch `step` (the same draw `balanced_mixup` makes inside `__call__`)."""
        return _beta([], self.alpha, 1.0, self.step_seed(step))

    def __call__(self, step, instance_batch, class_batch):
        (x_i, y_i), (x_c, y_c) = instance_batch, class_batch
        return balanced_mixup(x_i, y_i, x_c, y_c, self.step_seed(step), self.alpha, self.label_mode)

    def __repr__(self) -> str:
        return f"BalancedMixer(alpha={self.alpha}, label_mode={self.label_mode!r}, q={self.q}, seed={self.seed})"


def mixer_from_config(cfg: dict, seed: int) -> BatchMixer | None:
    """The batch mixer of a resolved config, or None when it would mix nothing."""
    m = cfg["mix"]
    if not any(m[k] for k in ("mosaic", "mixup", "cutmix", "cutout")):
        return None
    return BatchMixer.from_config(m, seed=seed)


def images_needed(mix_cfg: Mapping) -> tuple[int, str | None]:
    """The fewest images a mixed batch needs for the configured mixers to combine different images, and the
    mixer that needs them: Mosaic tiles four images, MixUp and CutMix pair two, so with fewer a mixer
    combines an image with itself. The batch mixed is the whole update (every replica's micro-batches,
    `kfold.check_mix_group`), so seed 002's batch 8 on 8 GPUs (one image per replica) mixes 8."""
    if mix_cfg.get("mosaic", 0) > 0:
        return 4, "mix.mosaic"
    for key in ("mixup", "cutmix"):
        if mix_cfg.get(key, 0) > 0:
            return 2, f"mix.{key}"
    return 1, None
