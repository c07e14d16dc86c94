"""Per-image augmentation: seed 002's basic set in TensorFlow ops; seed 000's weak/strong
albumentations pipelines, chosen per image (majority vs minority), with random oversampling.

Images are float32 [H, W, 3] in 0..255 (grey replicated to 3 channels); seeds are stateless int
tensors of shape [2], e.g. (base seed, element index) from `cxrlt.pipeline`: the same seed gives the
same augmented image, in graph mode inside `tf.data` `map`.

Seed 002 basic set (`basic_augment`, `make_basic_augment`; config section `augment:`):
    hflip       bool, default True: flip left-right with p = 0.5. Laterality matters for some findings
                and seed 001 warns against flips; seed 002 flips (train and TTA), so it stays on by
                default and can be switched off (G20).
    scale       s, default 0: random zoom, factor uniform in [1 - s, 1 + s] (> 1 zooms in).
    rotate_deg  r, default 0: rotation uniform in [-r, r] degrees. Scale and rotation are one affine
                warp about the image centre (bilinear; tf.raw_ops.ImageProjectiveTransformV3).
    fill_mode   reflect (default, as Keras' RandomRotation/RandomZoom: no artificial black corners)
                | constant (black, as seed 000) | nearest | wrap: what the warp shows outside the image.
    brightness  b, default 0: add uniform [-b, b] * 255.
    contrast    c, default 0: scale the deviation from the image mean by a factor uniform in [1-c, 1+c].
    saturation  accepted and ignored: seed 002 lists random saturation, but on a grey radiograph
                replicated to 3 identical channels a saturation change does nothing, so it is skipped.
The output is clipped to 0..255. The keys of seed 000's strategies (strategy, tail_quantile,
minority_share) may sit in the same section and are ignored here; any other key is a ValueError.

Seed 000 (inventory §4.2.2, reconstructed from the authors' code) on albumentations 2.0.8:
    weak           Affine(translate +-10 %, scale 0.5..1.5, rotate +-10 deg, bilinear, black border),
                   i.e. ShiftScaleRotate(0.1, 0.5, 10, border_mode=0), which 2.x deprecates. One scale
                   factor for both axes (keep_ratio=True), as ShiftScaleRotate: Affine's default draws
                   x and y scale separately, which would stretch the anatomy by up to 3:1.
    strong         weak + three OneOf groups, each p = 0.9 (G29):
                   {CLAHE(clip 4, tiles 8x8), RandomBrightnessContrast(0.2, 0.2), RandomGamma(80..120)},
                   {Sharpen(alpha 0.2..0.5, lightness 0.5..1), Blur(3), MotionBlur(3)},
                   {RandomBrightnessContrast(0.2, 0.2), HueSaturationValue(0, 0, 20)}
                   (the authors' HueSaturationValue(20, 30, 20): on grey only the value shift exists).
    strong_no_ssr  strong without the Affine (the majority pipeline of Strong-weak and Strong-strong).
    Resize and Normalize of the original are left out: the input pipeline resizes, the Keras
    backbones normalise.
Strategies (`STRATEGIES`), named Majority-Minority as the seed 000 text does (inventory §4.2.1):
    baseline (weak/weak, no oversampling), weak-weak, strong-weak (strong_no_ssr/weak),
    strong-strong (strong_no_ssr/strong), weak-strong (weak/strong), all four with oversampling.
    As in the authors' scripts, the weak pipeline of baseline and weak-weak does not rotate (E12).
Minority (G10, `minority_mask`): an image carrying any tail class; tail = classes whose training
count is at or below the `tail_quantile` quantile of the class counts (0.5: the rarer half; 0: the
rarest class or classes); "No Finding" is never tail.

Cost of leaving the graph: the albumentations pipelines run on uint8 grey images behind
tf.numpy_function. Each call holds the Python GIL for its Python part (albumentations' parameter
sampling and dispatch; OpenCV releases it inside its kernels), so tf.data's parallel map gains little
from more threads, the op cannot be placed on an accelerator, and the graph cannot be exported with
it. Measured at 224 px on random uint8 grey images, 2 shared CPU cores (TF 2.21, albumentations
2.0.8, OpenCV 5.0; images/s, no decoding):
    albumentations strong, plain Python loop                      1,230-1,310
    albumentations weak, plain Python loop                        3,750-4,400
    albumentations strong, tf.data map + numpy_function, 1 / AUTOTUNE threads   600-640 / 790-830
    albumentations weak,   tf.data map + numpy_function, 1 / AUTOTUNE threads   575-780 / 1,050-1,100
    TF basic set (hflip, scale 0.1, rotate 10, brightness 0.1, contrast 0.1), 1 / AUTOTUNE  290-300 / 730-750
    (the affine warp is 90 % of the TF basic set: ImageProjectiveTransformV3 on 3 channels)
So at 224 px on CPU the albumentations path is not the bottleneck (JPEG decoding of full-size
radiographs caps a pipeline near 70-95 images/s on 2 cores); numpy_function costs about half of
the pipeline's own speed (GIL hand-offs, copies) and gains only about 1.3x from a second thread,
where the TF ops scale with the cores. Pipelines are pooled, not rebuilt per call: tf.data runs
numpy_function on changing threads, and building the strong pipeline per call (as a thread-local
cache did) cut it to about 100 images/s.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import random
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from ..config import defaults
from ..config.schema import STRATEGIES  # name -> (minority, majority, oversample?)

log = logging.getLogger(__name__)

# Called without a config, the basic set does nothing but flip: the per-image keys of the `augment:` section of
# defaults.yaml (the one copy of the settings) at strength 0, plus two a library caller may set.
_STRATEGY_KEYS = {"strategy", "tail_quantile", "minority_share", "device", "majority_classes"}  # same section, not ours
BASIC_DEFAULTS = {
    **{k: (v if isinstance(v, bool) else 0.0) for k, v in defaults()["augment"].items() if k not in _STRATEGY_KEYS},
    "fill_mode": "reflect",
    "saturation": 0.0,  # accepted, no effect on replicated grey images
}
FILL_MODES = ("reflect", "constant", "nearest", "wrap")
_SALT = 0x4A7D0C31  # decorrelates augmentation draws from other streams seeded with (seed, index)


# --- seed 002: basic set in TensorFlow ----------------------------------------------------------------

def _basic_config(cfg: Mapping | None) -> dict:
    cfg = dict(cfg or {})
    unknown = [k for k in cfg if k not in BASIC_DEFAULTS and k not in _STRATEGY_KEYS]
    if unknown:
        raise ValueError(f"unknown augment setting {unknown[0]!r}; known: {sorted(BASIC_DEFAULTS)}")
    cfg = {**BASIC_DEFAULTS, **{k: v for k, v in cfg.items() if k in BASIC_DEFAULTS}}
    if not isinstance(cfg["hflip"], (bool, np.bool_)):
        raise ValueError(f"augment.hflip must be true or false, got {cfg['hflip']!r}")
    for key in ("scale", "brightness", "contrast"):
        if not 0.0 <= float(cfg[key]) < 1.0:
            raise ValueError(f"augment.{key} must be in [0, 1), got {cfg[key]!r}")
    if not 0.0 <= float(cfg["rotate_deg"]) <= 180.0:
        raise ValueError(f"augment.rotate_deg must be in [0, 180], got {cfg['rotate_deg']!r}")
    if cfg["fill_mode"] not in FILL_MODES:
        raise ValueError(f"augment.fill_mode must be one of {FILL_MODES}, got {cfg['fill_mode']!r}")
    return cfg


def _salted(seed) -> tf.Tensor:
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    seed = tf.ensure_shape(seed, [2])
    return tf.stack([tf.bitwise.bitwise_xor(seed[0], tf.constant(_SALT, tf.int64)), seed[1]])


def _affine(image: tf.Tensor, zoom, angle, fill_mode: str) -> tf.Tensor:
    """Rotate by `angle` (radians) and zoom by `zoom` about the image centre, one bilinear warp."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    a, b = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # maps each output pixel (x, y) to the input point it samples
    transform = tf.stack([a, -b, cx - a * cx + b * cy, b, a, cy - b * cx - a * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=shape[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=fill_mode.upper())
    return out[0]


def _draws(seed, cfg: dict):
    """One image's random parameters from its stateless seed [2]: (flip?, zoom, angle in radians, brightness
    shift, contrast factor). Shared by the per-image (host) and the batched (accelerator) forms, so both
    draw the same numbers for the same seed."""
    s_flip, s_zoom, s_rot, s_bright, s_contrast = tf.unstack(
        tf.random.experimental.stateless_split(_salted(seed), 5))
    flip = tf.random.stateless_uniform([], s_flip) < 0.5 if cfg["hflip"] else tf.constant(False)
    scale, rotate = float(cfg["scale"]), float(cfg["rotate_deg"])
    zoom = 1.0 + tf.random.stateless_uniform([], s_zoom, -scale, scale) if scale > 0 else tf.constant(1.0)
    angle = (tf.random.stateless_uniform([], s_rot, -rotate, rotate) * (math.pi / 180.0)
             if rotate > 0 else tf.constant(0.0))
    b, c = float(cfg["brightness"]), float(cfg["contrast"])
    shift = tf.random.stateless_uniform([], s_bright, -b, b) * 255.0 if b > 0 else tf.constant(0.0)
    factor = tf.random.stateless_uniform([], s_contrast, 1.0 - c, 1.0 + c) if c > 0 else tf.constant(1.0)
    return flip, zoom, angle, shift, factor


def _basic(image, seed, cfg: dict) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    static = image.shape
    dtype = image.dtype
    image = tf.cast(image, tf.float32)
    flip, zoom, angle, shift, factor = _draws(seed, cfg)
    if cfg["hflip"]:
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    if float(cfg["scale"]) > 0 or float(cfg["rotate_deg"]) > 0:
        image = _affine(image, zoom, angle, cfg["fill_mode"])
    if cfg["brightness"] > 0:
        image = image + shift
    if cfg["contrast"] > 0:
        mean = tf.reduce_mean(image)
        image = (image - mean) * factor + mean
    image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.ensure_shape(tf.cast(image, dtype), static)


DRAWS = ("flip", "zoom", "angle", "shift", "factor")  # the columns of `batch_draws`


def batch_draws(seeds, cfg: Mapping | None = None) -> tf.Tensor:
    """float32 [B, 5]: each image's random numbers (`DRAWS`, flip as 0/1) from its stateless seed [B, 2], the
    same numbers the per-image form draws. Drawn where the seeds are made, in tf.data on the host: TensorFlow
    draws one stateless stream per op call, so B seeds take a loop of B draws, which the train step on an
    accelerator should not run (a few scalars per image; the images stay on the device)."""
    checked = _basic_config(cfg)
    draws = tf.map_fn(lambda seed: tf.stack([tf.cast(d, tf.float32) for d in _draws(seed, checked)]),
                      tf.cast(seeds, tf.int64), fn_output_signature=tf.TensorSpec([len(DRAWS)], tf.float32))
    return tf.ensure_shape(draws, [seeds.shape[0], len(DRAWS)])


def batch_basic(images, draws, cfg: dict) -> tf.Tensor:
    """Seed 002's basic set on a batch float [B, H, W, C] with each image's draws [B, 5] (`batch_draws`): the
    result of the per-image form for the same seeds, but the flip, zoom and rotation are one projective
    transform per image applied to the whole batch in one op, and brightness and contrast are batch
    arithmetic: the form that runs inside the train step on an accelerator (no loop, no host round trip)."""
    images = tf.cast(images, tf.float32)
    flip, zoom, angle, shift, factor = tf.unstack(tf.cast(draws, tf.float32), axis=1)
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    a, b = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # the output pixel (x, y) samples the rotated/zoomed point (x', y') of the flipped image, i.e. the
    # input at (w - 1 - x', y') when flipped: compose the flip into the transform's x row
    x_row = tf.stack([a, -b, cx - a * cx + b * cy], axis=1)
    x_row = tf.where(flip[:, None] > 0.5, tf.constant([0.0, 0.0, 1.0])[None] * (w - 1.0) - x_row, x_row)
    y_row = tf.stack([b, a, cy - b * cx - a * cy], axis=1)
    transforms = tf.concat([x_row, y_row, tf.zeros_like(x_row[:, :2])], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=cfg["fill_mode"].upper())
    images = images + shift[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * factor[:, None, None, None] + mean
    return tf.clip_by_value(images, 0.0, 255.0)


def make_batch_augment(cfg: Mapping | None = None):
    """(images [B, H, W, C], draws [B, 5]) -> images, the settings checked once (see `batch_basic`)."""
    checked = _basic_config(cfg)
    return lambda images, draws: batch_basic(images, draws, checked)


def basic_augment(image, seed, cfg: Mapping | None = None) -> tf.Tensor:
    """Seed 002's basic set on one image float [H, W, 3] 0..255 with a stateless seed [2]."""
    return _basic(image, seed, _basic_config(cfg))


def make_basic_augment(cfg: Mapping | None = None):
    """(image, seed) -> image with the settings checked once (see the module docstring)."""
    checked = _basic_config(cfg)

    def augment(image, seed):
        return _basic(image, seed, checked)

    return augment


# --- seed 000: albumentations pipelines ----------------------------------------------------------------

# strategy -> (majority pipeline, minority pipeline, random oversampling of minority images)
PIPELINE_KINDS = ("weak", "strong", "strong_no_ssr")


def make_albu_pipeline(kind: str, seed: int = 0, rotate_limit: float = 10.0):
    """An albumentations Compose for uint8 grey images [H, W] (see the module docstring)."""
    import albumentations as A
    import cv2

    if kind not in PIPELINE_KINDS:
        raise ValueError(f"albumentations pipeline must be one of {PIPELINE_KINDS}, got {kind!r}")
    ssr = A.Affine(translate_percent=(-0.1, 0.1), scale=(0.5, 1.5), rotate=(-rotate_limit, rotate_limit),
                   keep_ratio=True, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)
    strong = [
        A.OneOf([A.CLAHE(clip_limit=4.0, tile_grid_size=(8, 8), p=1.0),
                 A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
                 A.RandomGamma(gamma_limit=(80, 120), p=1.0)], p=0.9),
        A.OneOf([A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=1.0),
                 A.Blur(blur_limit=3, p=1.0),
                 A.MotionBlur(blur_limit=3, p=1.0)], p=0.9),
        A.OneOf([A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
                 A.HueSaturationValue(hue_shift_limit=0, sat_shift_limit=0, val_shift_limit=20, p=1.0)], p=0.9),
    ]
    steps = {"weak": [ssr], "strong": [ssr, *strong], "strong_no_ssr": strong}[kind]
    pipeline = A.Compose(steps)
    _reseed(pipeline, seed)
    return pipeline


albu_pipeline = make_albu_pipeline  # the name cxrlt.preview uses


def _reseed(pipeline, entropy) -> None:
    """One numpy and one Python generator shared by every transform of the pipeline.

    (albumentations' own Compose(seed=...) gives every transform an identically seeded generator, so
    the draws of different transforms are correlated; set_random_state shares one stream instead.)
    """
    rng = np.random.default_rng(entropy)
    py = random.Random(int(rng.integers(2**63)))
    if hasattr(pipeline, "set_random_state"):
        pipeline.set_random_state(rng, py)


def _unsigned(values) -> list[int]:
    return [int(v) % 2**64 for v in np.asarray(values).ravel()]


class _Router:
    """A pool of (majority, minority) pipeline pairs: tf.data calls numpy_function from several
    threads (often fresh ones, so thread-local caches would rebuild the pipelines on every call) and
    albumentations objects hold their random state. A call borrows a pair, reseeds the pipeline it
    uses from (base seed, per-image seed) and gives the pair back, so the output does not depend on
    the thread or on the order of the calls."""

    def __init__(self, majority: str, minority: str, seed: int, rotate_limit: float):
        self.kinds = {False: majority, True: minority}
        self.seed, self.rotate_limit = int(seed), float(rotate_limit)
        self.free = queue.SimpleQueue()
        self.counter = itertools.count()

    def _borrow(self) -> dict:
        try:
            return self.free.get_nowait()
        except queue.Empty:  # looked up at call time: tests replace make_albu_pipeline with markers
            return {m: make_albu_pipeline(k, self.seed, self.rotate_limit) for m, k in self.kinds.items()}

    def __call__(self, grey: np.ndarray, is_minority, seed=None) -> np.ndarray:
        if seed is None:  # library callers without a per-image seed: a fresh stream per call (reproducible
            # only in call order; cxrlt.data.pipeline always passes the element seed)
            entropy = [self.seed % 2**64, 2**32 + next(self.counter)]
        else:
            entropy = [self.seed % 2**64, *_unsigned(seed)]
        pipes = self._borrow()
        try:
            pipe = pipes[bool(is_minority)]
            _reseed(pipe, entropy)
            out = pipe(image=np.ascontiguousarray(grey))["image"]
        finally:
            self.free.put(pipes)
        return np.asarray(out, dtype=np.float32).reshape(grey.shape[:2])


def make_strategy_augment(strategy: str, seed: int = 0):
    """Seed 000 strategy as a TF function (image, is_minority, seed=None) -> image.

    image float [H, W, 3] 0..255 (channel 0 is used: grey), is_minority a bool scalar, seed an
    optional stateless seed [2] per image (with it the output depends only on (seed, image)).
    The majority image goes through the strategy's majority pipeline, the minority image through its
    minority pipeline, inside one tf.numpy_function (uint8 grey in, float32 0..255 out, tiled back
    to 3 channels). The oversampling flag is STRATEGIES[strategy][2] (the pipeline draws minority images at that share; sampling.random_oversample_indices is the epoch form).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"augment.strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    majority, minority, _ = STRATEGIES[strategy]
    rotate = 0.0 if strategy in ("baseline", "weak-weak") else 10.0  # as the authors' scripts (E12)
    router = _Router(majority, minority, seed, rotate)

    def augment(image, is_minority, seed=None):
        image = tf.convert_to_tensor(image)
        static = image.shape
        grey = tf.cast(tf.round(tf.clip_by_value(image[..., 0], 0.0, 255.0)), tf.uint8)
        flag = tf.cast(is_minority, tf.bool)
        if seed is None:
            out = tf.numpy_function(lambda g, m: router(g, m), [grey, flag], tf.float32, stateful=True)
        else:
            seed = tf.cast(seed, tf.int64)
            out = tf.numpy_function(router, [grey, flag, seed], tf.float32, stateful=False)
        out = tf.ensure_shape(out, static[:2])
        out = tf.tile(out[..., None], tf.stack([1, 1, tf.shape(image)[2]]))
        return tf.ensure_shape(tf.cast(out, image.dtype), static)

    augment.strategy, augment.router = strategy, router
    return augment


# --- minority images and oversampling -----------------------------------------------------------------

def minority_mask(labels: np.ndarray, class_counts, tail_quantile: float = 0.5, classes=None) -> np.ndarray:
    """bool [N]: True for images that carry any tail class (G10).

    Tail = the classes whose training count is at or below the `tail_quantile` quantile of the
    class counts (inventory G10: 0.5 is the rarer half of the classes). "At or below", not "below":
    with tied counts (common in small or filtered label sets) a strict comparison would drop every
    class tied at the quantile, and quantile 0 would give an empty tail instead of the rarest class.
    With `classes` given, "No Finding" is never tail, so No-Finding-only images are majority
    whatever its count.
    """
    labels = np.asarray(labels)
    counts = np.asarray(class_counts, dtype=np.float64).ravel()
    if labels.ndim != 2 or labels.shape[1] != counts.size:
        raise ValueError(f"labels must be [N, {counts.size}] to match class_counts, got {labels.shape}")
    if not 0.0 <= tail_quantile <= 1.0:
        raise ValueError(f"tail_quantile must be in [0, 1], got {tail_quantile}")
    tail = counts <= np.quantile(counts, tail_quantile)
    if classes is not None:
        for j, name in enumerate(classes):
            if str(name).strip().lower().replace("_", " ") == "no finding":
                tail[j] = False
    return (labels[:, tail] > 0).any(axis=1)


def resolve_device(cfg: dict) -> tuple[str, str]:
    """augment.device resolved to host | accelerator, and why (for the log). Seed 000's albumentations
    strategies (NumPy on the host) and Balanced-MixUp (a second input stream) stay on the host."""
    setting = cfg["augment"].get("device", "auto")
    host_only = None
    if cfg["augment"]["strategy"] != "none":
        host_only = f"augment.strategy {cfg['augment']['strategy']} runs albumentations on the host"
    elif (cfg.get("mix") or {}).get("balanced_mixup", 0):
        host_only = "mix.balanced_mixup draws a second stream on the host"
    if setting == "accelerator":
        if host_only:
            raise ValueError(f"augment.device accelerator: {host_only}; set augment.device host (or auto)")
        return "accelerator", "augment.device accelerator"
    if setting == "host":
        return "host", "augment.device host"
    if not tf.config.list_physical_devices("GPU"):
        return "host", "augment.device auto, no GPU visible"
    if host_only:
        return "host", f"augment.device auto, {host_only}"
    return "accelerator", "augment.device auto, a GPU is visible"


def options_from_config(cfg: dict, train, seed: int) -> dict:
    """The per-image augmentation arguments of pipeline.train_dataset for a training LabelTable: the basic set, or a
    seed 000 strategy with its minority mask and (if the strategy oversamples) the minority share."""
    a = cfg["augment"]
    if a["strategy"] == "none":
        return {"augment_fn": make_basic_augment(a)}
    oversample = STRATEGIES[a["strategy"]][2] if a["strategy"] in STRATEGIES else False
    if getattr(train, "task", "multilabel") != "multilabel":  # one class per image: routed by class (seed 000)
        from . import single_label

        minority, majority = single_label.majority_flags(train, a.get("majority_classes"))
        log.info("augment strategy %s: majority class(es) %s take the majority pipeline, %d of %d training images "
                 "the minority one%s", a["strategy"], ", ".join(majority), int(minority.sum()), len(minority),
                 ", every class drawn equally often (the COVID-19 severity paper's inverse class weights)" if oversample else "")
        return {"strategy_fn": make_strategy_augment(a["strategy"], seed), "minority": minority,
                "minority_share": a["minority_share"] if oversample else None}
    minority = minority_mask(train.labels, train.class_counts(), a["tail_quantile"], train.classes)
    log.info("augment strategy %s: %d of %d training images are minority%s", a["strategy"], int(minority.sum()),
             len(minority), f", oversampled to {a['minority_share']:.0%}" if oversample else "")
    return {"strategy_fn": make_strategy_augment(a["strategy"], seed), "minority": minority,
            "minority_share": a["minority_share"] if oversample else None}
