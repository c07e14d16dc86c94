"""Batch mixers in plain TensorFlow ops: Mosaic (random-crop and full-resize), MixUp, CutMix, CutOut.

Seed 002's label rule is `clip_sum`: the mixed image carries every finding of its sources,
y = clip(y_a + y_b [+ y_c + y_d], 0, 1), the element-wise union ("averaging is ineffective").
`convex` weights the labels by lambda or by visible area, as the classic papers do. Partners come
from the same shuffled batch (no second pass over the files). Randomness is stateless, from
(seed, batch index): the same seed gives the same batches, in any tf.data worker.
"""

from __future__ import annotations

import tensorflow as tf

LABEL_MODES = ("clip_sum", "convex")
MOSAIC_VARIANTS = ("both", "crop", "resize")


def combine_labels(labels: list[tf.Tensor], weights: list[tf.Tensor], mode: str) -> tf.Tensor:
    """Union (clip_sum) or weighted mean (convex; weights per sample, summing to 1) of source labels."""
    if mode == "clip_sum":
        return tf.clip_by_value(tf.add_n(labels), 0.0, 1.0)
    if mode == "convex":
        return tf.add_n([tf.reshape(w, [-1, 1]) * y for y, w in zip(labels, weights)])
    raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {mode!r}")


def _seeds(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


def _permutation(batch: int, seed) -> tf.Tensor:
    return tf.argsort(tf.random.stateless_uniform([batch], seed))


def _beta(shape, alpha: float, beta: float, seed) -> tf.Tensor:
    s1, s2 = _seeds(seed, 2)
    x = tf.random.stateless_gamma(shape, s1, alpha=alpha)
    y = tf.random.stateless_gamma(shape, s2, alpha=beta)
    return x / (x + y + 1e-12)


def _split_point(size: int, low: float, high: float, seed) -> tf.Tensor:
    lo, hi = max(1, int(round(size * low))), min(size - 1, int(round(size * high)))
    return tf.random.stateless_uniform([], seed, lo, hi + 1, dtype=tf.int32)


def _partners(images, labels, seed, n: int):
    """The batch and n-1 shuffled copies of it: the sources of each mixed image."""
    batch = tf.shape(images)[0]
    perms = [tf.range(batch)] + [_permutation(batch, s) for s in _seeds(seed, n - 1)]
    return [tf.gather(images, p) for p in perms], [tf.gather(labels, p) for p in perms]


def _quadrant_sizes(cy, cx, h: int, w: int):
    return [(cy, cx), (cy, w - cx), (h - cy, cx), (h - cy, w - cx)]


def _assemble(tiles, h: int, w: int) -> tf.Tensor:
    top = tf.concat([tiles[0], tiles[1]], axis=2)
    bottom = tf.concat([tiles[2], tiles[3]], axis=2)
    out = tf.concat([top, bottom], axis=1)
    return tf.ensure_shape(out, [None, h, w, None])


def mosaic_crop(images, labels, seed, center_range=(0.25, 0.75), label_mode="clip_sum"):
    """4 images per output: a random centre splits it, each quadrant a random crop of one source."""
    h, w = images.shape[1], images.shape[2]
    s_src, s_y, s_x, s_off = _seeds(seed, 4)
    sources, ys = _partners(images, labels, s_src, 4)
    cy, cx = _split_point(h, *center_range, s_y), _split_point(w, *center_range, s_x)
    tiles = []
    for src, (th, tw), s in zip(sources, _quadrant_sizes(cy, cx, h, w), _seeds(s_off, 4)):
        sy, sx = _seeds(s, 2)
        oy = tf.random.stateless_uniform([], sy, 0, h - th + 1, dtype=tf.int32)
        ox = tf.random.stateless_uniform([], sx, 0, w - tw + 1, dtype=tf.int32)
        tiles.append(src[:, oy:oy + th, ox:ox + tw, :])
    areas = [tf.cast(th * tw, tf.float32) / float(h * w) for th, tw in _quadrant_sizes(cy, cx, h, w)]
    batch = tf.shape(images)[0]
    weights = [tf.fill([batch], a) for a in areas]
    return _assemble(tiles, h, w), combine_labels(ys, weights, label_mode)


def mosaic_resize(images, labels, seed, center_range=(0.25, 0.75), random_split=True, label_mode="clip_sum"):
    """4 images per output, each resized whole into its quadrant: no finding is cropped away."""
    h, w = images.shape[1], images.shape[2]
    s_src, s_y, s_x = _seeds(seed, 3)
    sources, ys = _partners(images, labels, s_src, 4)
    if random_split:
        cy, cx = _split_point(h, *center_range, s_y), _split_point(w, *center_range, s_x)
    else:
        cy, cx = tf.constant(h // 2), tf.constant(w // 2)
    sizes = _quadrant_sizes(cy, cx, h, w)
    tiles = [tf.image.resize(src, tf.stack([th, tw]), antialias=True) for src, (th, tw) in zip(sources, sizes)]
    batch = tf.shape(images)[0]
    weights = [tf.fill([batch], tf.cast(th * tw, tf.float32) / float(h * w)) for th, tw in sizes]
    return _assemble(tiles, h, w), combine_labels(ys, weights, label_mode)


def mixup(images, labels, seed, alpha=0.4, label_mode="clip_sum"):
    """x = lam x_a + (1 - lam) x_b, lam ~ Beta(alpha, alpha) per sample."""
    s_src, s_lam = _seeds(seed, 2)
    (xa, xb), (ya, yb) = _partners(images, labels, s_src, 2)
    lam = _beta(tf.shape(images)[:1], alpha, alpha, s_lam)
    mixed = lam[:, None, None, None] * xa + (1.0 - lam[:, None, None, None]) * xb
    return mixed, combine_labels([ya, yb], [lam, 1.0 - lam], label_mode)


def _boxes(shape, h: int, w: int, area_fraction, seed) -> tf.Tensor:
    """Per-sample rectangular masks [B, h, w, 1] covering about `area_fraction` of the image."""
    sy, sx = _seeds(seed, 2)
    ratio = tf.sqrt(tf.clip_by_value(area_fraction, 0.0, 1.0))
    bh, bw = ratio * h, ratio * w
    cy = tf.random.stateless_uniform(shape, sy) * h
    cx = tf.random.stateless_uniform(shape, sx) * w
    y0, y1 = tf.clip_by_value(cy - bh / 2, 0, h), tf.clip_by_value(cy + bh / 2, 0, h)
    x0, x1 = tf.clip_by_value(cx - bw / 2, 0, w), tf.clip_by_value(cx + bw / 2, 0, w)
    yy = tf.range(h, dtype=tf.float32)[None, :, None] + 0.5
    xx = tf.range(w, dtype=tf.float32)[None, None, :] + 0.5
    inside = ((yy >= y0[:, None, None]) & (yy < y1[:, None, None]) & (xx >= x0[:, None, None]) & (xx < x1[:, None, None]))
    return tf.cast(inside, tf.float32)[..., None]


def cutmix(images, labels, seed, alpha=1.0, label_mode="clip_sum"):
    """Paste a box of x_b into x_a; box area ~ 1 - Beta(alpha, alpha); convex weights = visible areas."""
    h, w = images.shape[1], images.shape[2]
    s_src, s_lam, s_box = _seeds(seed, 3)
    (xa, xb), (ya, yb) = _partners(images, labels, s_src, 2)
    lam = _beta(tf.shape(images)[:1], alpha, alpha, s_lam)
    mask = _boxes(tf.shape(images)[:1], h, w, 1.0 - lam, s_box)
    pasted = tf.reduce_mean(mask, axis=[1, 2, 3])
    return xa * (1.0 - mask) + xb * mask, combine_labels([ya, yb], [1.0 - pasted, pasted], label_mode)


def cutout(images, labels, seed, size_fraction=0.25, fill=0.0):
    """Erase one random box per image (DeVries & Taylor); labels unchanged."""
    h, w = images.shape[1], images.shape[2]
    shape = tf.shape(images)[:1]
    mask = _boxes(shape, h, w, tf.fill(shape, size_fraction ** 2), seed)
    return images * (1.0 - mask) + fill * mask, labels


class BatchMixer:
    """Per-batch policy: at most one of Mosaic / MixUp / CutMix (by their probabilities), then CutOut.

    Use as `ds.batch(B).enumerate().map(mixer)`; `mixer(step, images, labels)`.
    """

    def __init__(self, *, mosaic=0.0, mixup=0.0, cutmix=0.0, cutout=0.0, label_mode="clip_sum",
                 mosaic_variant="both", mosaic_center=(0.25, 0.75), mixup_alpha=0.4, cutmix_alpha=1.0,
                 cutout_size=0.25, seed=0):
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        if mosaic_variant not in MOSAIC_VARIANTS:
            raise ValueError(f"mosaic_variant must be one of {MOSAIC_VARIANTS}, got {mosaic_variant!r}")
        if min(mosaic, mixup, cutmix, cutout) < 0 or mosaic + mixup + cutmix > 1 + 1e-9 or cutout > 1:
            raise ValueError("mix probabilities must be >= 0, with mosaic + mixup + cutmix <= 1 and cutout <= 1")
        self.p = (mosaic, mixup, cutmix)
        self.cutout_p, self.label_mode, self.variant = cutout, label_mode, mosaic_variant
        self.center, self.mixup_alpha, self.cutmix_alpha = tuple(mosaic_center), mixup_alpha, cutmix_alpha
        self.cutout_size, self.seed = cutout_size, seed

    @classmethod
    def from_config(cls, cfg: dict, seed: int = 0) -> "BatchMixer":
        return cls(**cfg, seed=seed)

    def _mosaic(self, images, labels, seed):
        s_pick, s_op = _seeds(seed, 2)
        crop = lambda: mosaic_crop(images, labels, s_op, self.center, self.label_mode)  # noqa: E731
        resize = lambda: mosaic_resize(images, labels, s_op, self.center, True, self.label_mode)  # noqa: E731
        if self.variant == "crop":
            return crop()
        if self.variant == "resize":
            return resize()
        return tf.cond(tf.random.stateless_uniform([], s_pick) < 0.5, crop, resize)

    def __call__(self, step, images, labels):
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        s_choice, s_op, s_cut_p, s_cut = _seeds(seed, 4)
        u = tf.random.stateless_uniform([], s_choice)
        bounds = tf.constant([self.p[0], self.p[0] + self.p[1], sum(self.p)], tf.float32)
        branch = tf.where(u < bounds[2], tf.reduce_sum(tf.cast(u >= bounds, tf.int32)) + 1, 0)
        images, labels = tf.switch_case(branch, [
            lambda: (images, labels),
            lambda: self._mosaic(images, labels, s_op),
            lambda: mixup(images, labels, s_op, self.mixup_alpha, self.label_mode),
            lambda: cutmix(images, labels, s_op, self.cutmix_alpha, self.label_mode),
        ])
        if self.cutout_p > 0:
            images, labels = tf.cond(tf.random.stateless_uniform([], s_cut_p) < self.cutout_p,
                                     lambda: cutout(images, labels, s_cut, self.cutout_size),
                                     lambda: (images, labels))
        return images, labels


def balanced_mixup(images_instance, labels_instance, images_class, labels_class, seed, alpha=0.2,
                   label_mode="convex"):
    """Balanced-MixUp (seed 003): x = (1 - lam) x_I + lam x_C, lam ~ Beta(alpha, 1), one lam per batch."""
    lam = _beta([], alpha, 1.0, seed)
    batch = tf.shape(images_instance)[0]
    mixed = (1.0 - lam) * images_instance + lam * images_class
    return mixed, combine_labels([labels_instance, labels_class], [tf.fill([batch], 1.0 - lam), tf.fill([batch], lam)],
                                 label_mode)
