"""tf.data input pipelines: file -> decoded grey image -> square 0..255 float RGB -> augment -> batch -> mix.

Everything after the file list is TensorFlow ops, so tf.data runs it in parallel and under
tf.distribute. Training streams forever (shuffle the path list, repeat, decode; or, with a
`sampling:` sampler, draw row indices and gather path/label before decoding) and Keras cuts it
into epochs with `steps_per_epoch`; evaluation keeps the CSV order so predictions line up with ids.

Pixels come from the raw files, or from a folder made once by `python -m cxrlt.prepare` (config
`data.prepared`, flag `--prepared`): the same images shrunk to a long side of e.g. 1024, as files
(random access: eval order, samplers, oversampling) and as TFRecord shards (sequential reads: the
instance-sampled training stream). Which one is read is decided here (`source_files`,
`_use_shards`), so the trainer and predictor pass the same raw paths either way.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from ..config.schema import INTENSITIES, MAX_IMAGE_PIXELS, PREPARED_READERS
from . import sampling

AUTOTUNE = tf.data.AUTOTUNE
JPEG_RATIOS = (1, 2, 4, 8)  # the DCT scalings libjpeg offers (tf.io.decode_jpeg's `ratio`)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- decoding

def jpeg_scale_index(height, width, size, fit: str = "square") -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest DCT scaling whose decoded image still covers the target.

    libjpeg decodes at 1/r of each side, rounded up. fit="square" (stretch to size x size): both
    sides must stay >= size; fit="long" (letterbox, prepare): the long side must stay >= size.
    Images already smaller than the target get r = 1 (they are upscaled later, as before).
    """
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    side = tf.minimum(height, width) if fit == "square" else tf.maximum(height, width)
    size = tf.cast(size, tf.int32)
    index = tf.constant(0, tf.int32)
    for r in JPEG_RATIOS[1:]:  # covering at 1/8 implies covering at 1/4 and 1/2: count the ratios that cover
        index += tf.cast((side + r - 1) // r >= size, tf.int32)
    return index


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXEL_LIMIT_MESSAGE = "image header claims more pixels than cxrlt decodes"


def header_dimensions(data: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] from the header of encoded JPEG or PNG bytes, without decoding: the
    JPEG's SOF marker (tf.io.extract_jpeg_shape) or the PNG's IHDR chunk (bytes 16..24, big-endian
    width then height); [0, 0] for anything else (the decoder refuses or handles those)."""
    zero = tf.zeros([2], tf.int64)
    # the first 24 bytes, zero-padded (substr refuses a start beyond the end of a short string)
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 24), b"\0" * 24]), 0, 24)
    is_png = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), _PNG_SIGNATURE),
                            tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"))

    def png():
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.uint8), tf.int64)
        width, height = (((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3] for b in (raw[0:4], raw[4:8]))
        return tf.stack([height, width])

    def jpeg():
        return tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)
    return tf.cond(tf.io.is_jpeg(data), jpeg, lambda: tf.cond(is_png, png, lambda: zero))


def pixel_guard(data: tf.Tensor, name=None, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """The encoded bytes, refused (InvalidArgumentError naming the file and its size) before any
    decoding when the header claims more than `max_pixels` pixels.

    The pre-flight check (check.py) holds raw files to the same limit, but a prepared folder's files
    and TFRecord shards are read without it, and a PNG of 20,000 x 20,000 zeros compresses to a few
    hundred KiB: decoding it would ask for 1.5 GiB per image in flight. Reading the header costs a
    few string ops per image.
    """
    hw = header_dimensions(data)
    pixels = hw[0] * hw[1]
    what = [] if name is None else [name]
    check = tf.debugging.Assert(
        pixels <= max_pixels,
        [(f"{PIXEL_LIMIT_MESSAGE} ({max_pixels:,}, check.Limits.max_pixels): downscale it; in a prepared folder "
          "(data.prepared) the file or shard was damaged or not written by python -m cxrlt.prepare, so prepare "
          "the folder again."), *what, "height x width:", hw[0], hw[1]])
    with tf.control_dependencies([check]):
        return tf.identity(data)


PERCENTILES = (0.5, 99.5)  # input.intensity: percentile


def is_png16(data: tf.Tensor) -> tf.Tensor:
    """True for PNG bytes whose IHDR says 16 bits per sample (byte 24: the bit depth)."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 25), b"\0" * 25]), 0, 25)
    return tf.logical_and(tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), _PNG_SIGNATURE),
                                         tf.equal(tf.strings.substr(head, 12, 4), b"IHDR")),
                          tf.equal(tf.strings.substr(head, 24, 1), b"\x10"))


def stretch16(data: tf.Tensor, intensity: str) -> tf.Tensor:
    """A 16-bit PNG -> float32 [h, w, 1] in 0..1, its own value range stretched (per image).

    PadChest PNGs are 16-bit, but the range used varies per image (many hold 12-bit values, max
    4095): divided by 65535 (full_range) such an image is a near-black picture using 1/16 of the
    grey levels. minmax maps the image's own min..max to 0..1; percentile maps its 0.5..99.5 %
    values (from a 65,536-bin histogram: no sort of millions of pixels) and clips, so a few burned-in
    saturated pixels (labels, markers) do not squeeze the anatomy into a few grey levels.
    A flat image decodes to zeros."""
    pixels = tf.io.decode_png(data, channels=1, dtype=tf.uint16)
    values = tf.cast(pixels, tf.float32)
    if intensity == "minmax":
        lo, hi = tf.reduce_min(values), tf.reduce_max(values)
    else:
        counts = tf.math.bincount(tf.reshape(tf.cast(pixels, tf.int32), [-1]), minlength=65536, maxlength=65536)
        cdf = tf.cast(tf.cumsum(counts), tf.float32) / tf.cast(tf.maximum(tf.size(pixels), 1), tf.float32)
        lo = tf.cast(tf.argmax(tf.cast(cdf >= PERCENTILES[0] / 100.0, tf.int32)), tf.float32)
        hi = tf.cast(tf.argmax(tf.cast(cdf >= PERCENTILES[1] / 100.0, tf.int32)), tf.float32)
    span = hi - lo
    image = tf.where(span > 0, tf.clip_by_value((values - lo) / tf.maximum(span, 1.0), 0.0, 1.0), tf.zeros_like(values))
    return tf.ensure_shape(image, [None, None, 1])


def decode_grey(data: tf.Tensor, size=None, fit: str = "square", name=None,
                intensity: str = "full_range", dicom: str | None = None) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> float32 [h, w, 1] grey in 0..1.

    With a target `size`, a JPEG is decoded at the smallest DCT scale that still covers it
    (`jpeg_scale_index`): a 10,000 x 10,000 JPEG bound for 768 px decodes at 1,250 x 1,250 (64x
    less memory), and the antialiased resize that follows, which costs more than the decoding on
    full-size radiographs, reads 4-64x fewer pixels. The scaled IDCT keeps each 8x8 block's low
    frequencies, a low-pass like the resize's own antialiasing. Other formats decode whole: PNG
    8/16-bit (16-bit scaled to 0..1, not truncated), grey/RGB/RGBA (the decoder's luma weights;
    alpha dropped). Images whose header claims more than MAX_IMAGE_PIXELS are refused before any
    decoding (`pixel_guard`; `name`, e.g. the path, goes into that error). `intensity` (input.intensity)
    changes 16-bit PNGs only (`stretch16`); every other image takes the same ops as before it existed.
    `dicom` (input.dicom_window, or None): DICOM bytes are decoded by pydicom in Python (`dicom_grey`); None
    leaves that step out of the graph (lists without DICOM names: the graph stays pure TensorFlow, which a
    tf.data service worker or a SavedModel needs).
    """
    if intensity not in INTENSITIES:
        raise ValueError(f"input.intensity must be one of {INTENSITIES}, got {intensity!r}")
    data = pixel_guard(data, name)

    def tensorflow_decode():
        if size is None:
            return _decode_whole(data, intensity)
        return tf.cond(tf.io.is_jpeg(data),
                       lambda: tf.image.convert_image_dtype(_scaled_jpeg(data, size, fit), tf.float32),
                       lambda: _decode_whole(data, intensity))
    return _or_dicom(data, tensorflow_decode, dicom, name)


def _or_dicom(data: tf.Tensor, tensorflow_decode, dicom: str | None, name, scale: float = 1.0, resize=None):
    """`tensorflow_decode()`, or for DICOM bytes (checked first: a DICOM preamble may hold anything, a TIFF or
    JPEG header included) `dicom_grey`, optionally resized and scaled like the other branch. No DICOM step
    without `dicom`."""
    if dicom is None:
        return tensorflow_decode()

    def from_dicom():
        image = dicom_grey(data, dicom, name)
        return image if resize is None else resize(image) * scale
    return tf.cond(is_dicom(data), from_dicom, tensorflow_decode)


def _decode_whole(data: tf.Tensor, intensity: str = "full_range") -> tf.Tensor:
    """Any format, whole: float32 [h, w, 1] in 0..1 (16-bit PNGs scaled, not truncated; with another
    `intensity`, a 16-bit PNG's own range stretched by `stretch16`)."""
    def any_image():
        image = tf.io.decode_image(data, channels=1, dtype=tf.float32, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 1])

    if intensity == "full_range":
        return any_image()
    return tf.cond(is_png16(data), lambda: stretch16(data, intensity), any_image)


def is_dicom(data: tf.Tensor) -> tf.Tensor:
    """True for DICOM Part 10 bytes: "DICM" after the 128-byte preamble."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 132), b"\0" * 132]), 0, 132)
    return tf.equal(tf.strings.substr(head, 128, 4), b"DICM")


def dicom_grey(data: tf.Tensor, window: str, name=None) -> tf.Tensor:
    """DICOM bytes -> float32 [h, w, 1] in 0..1 by pydicom (cxrlt.data.dicom.decode), in tf.numpy_function:
    Python on the host (it holds the GIL while it runs), which a tf.data service worker cannot run. A file
    it refuses raises InvalidArgumentError naming the file (`name`)."""
    from . import dicom as dicom_mod

    dicom_mod.check_window(window)
    name = tf.constant("", tf.string) if name is None else tf.convert_to_tensor(name, tf.string)
    image = tf.numpy_function(lambda d, n: dicom_mod.decode(d, window, n), [data, name], tf.float32,
                              stateful=False, name="dicom_decode")
    return tf.ensure_shape(image, [None, None, 1])


def _scaled_jpeg(data: tf.Tensor, size, fit: str) -> tf.Tensor:
    """A JPEG at its largest DCT scaling that covers the target (`jpeg_scale_index`): uint8 [h, w, 1]."""
    shape = tf.io.extract_jpeg_shape(data)
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=1, ratio=r) for r in JPEG_RATIOS]
    image = tf.switch_case(jpeg_scale_index(shape[0], shape[1], size, fit), branches)
    return tf.ensure_shape(image, [None, None, 1])


def decode_uint8(data: tf.Tensor, size: int, resize: str = "stretch", antialias: str = "auto", name=None,
                 intensity: str = "full_range", dicom: str | None = None) -> tf.Tensor:
    """Encoded image bytes -> uint8 grey [size, size, 1]: decode_bytes(channels=1) rounded to integers, the
    wire format of augment.device accelerator, in fewer passes over the pixels.

    A JPEG's decoded 0..255 integers go to the resize as they are (which computes in float anyway)
    instead of being converted to 0..1 floats and scaled back after the resize: two full-image passes
    less, and one rounding at the end. Other formats keep decode_image's float decode (16-bit PNGs, with
    input.intensity as in decode_grey).
    The result equals rounding decode_bytes(..., channels=1) up to float rounding at exact half levels.
    """
    data = pixel_guard(data, name)
    fit = "long" if resize == "letterbox" else "square"
    image = _or_dicom(data, lambda: tf.cond(
        tf.io.is_jpeg(data), lambda: resize_grey(_scaled_jpeg(data, size, fit), size, resize, antialias),
        lambda: resize_grey(_decode_whole(data, intensity), size, resize, antialias) * 255.0),
        dicom, name, 255.0, lambda grey: resize_grey(grey, size, resize, antialias))
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize_grey(image: tf.Tensor, size: int, resize: str = "stretch", antialias: str = "auto") -> tf.Tensor:
    """float [h, w, 1] -> [size, size, 1]: stretch to the square (the seeds) or letterbox (keep aspect, pad).

    antialias="auto": antialias only where the shrink left after the DCT-scaled decode is 2x or
    more. Below 2x, bilinear interpolation still reads every input pixel, and TF's antialiased
    resize (ScaleAndTranslate) costs 4-6x more than bilinear: at 768 px it was the largest single
    cost of the input pipeline. Measured on 25 full-size radiographs against a full decode +
    antialiased resize: mean |difference| 0.7 (768 px), 1.1 (512), 0.8 (224) grey levels of 255,
    vs 0.5-0.8 with antialiasing. "always": tf.image.resize(antialias=True) on every shrink.
    """
    if antialias not in ("auto", "always"):
        raise ValueError(f"input.antialias must be auto or always, got {antialias!r}")
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    shrink = tf.reduce_max(hw) / size if resize == "letterbox" else tf.reduce_max(hw / size)

    def run(aa: bool):
        if resize == "letterbox":
            return tf.image.resize_with_pad(image, size, size, antialias=aa)
        return tf.image.resize(image, (size, size), antialias=aa)

    out = run(True) if antialias == "always" else tf.cond(shrink >= 2.0, lambda: run(True), lambda: run(False))
    return tf.ensure_shape(out, [size, size, 1])


def decode_bytes(data: tf.Tensor, size: int, resize: str = "stretch", antialias: str = "auto",
                 channels: int = 3, name=None, intensity: str = "full_range", dicom: str | None = None) -> tf.Tensor:
    """Encoded image bytes -> float32 [size, size, channels] in 0..255 (3: decode_image's contract).

    channels=1 keeps the grey image: the training stream augments and mixes one channel and
    replicates it once per batch (`to_rgb`), a third of the work of every per-image op.
    """
    image = decode_grey(data, size, "long" if resize == "letterbox" else "square", name, intensity, dicom)
    image = tf.clip_by_value(resize_grey(image, size, resize, antialias) * 255.0, 0.0, 255.0)
    return image if channels == 1 else tf.tile(image, (1, 1, channels))


def decode_image(path: tf.Tensor, size: int, resize: str = "stretch", antialias: str = "auto",
                 channels: int = 3, intensity: str = "full_range", dicom: str | None = None) -> tf.Tensor:
    """Any JPEG/PNG (8/16-bit, grey/RGB/RGBA), or DICOM with `dicom` set -> float32 [size, size, 3] in 0..255.

    Radiographs are grey: decode to one channel (16-bit PNGs are scaled, not truncated) and
    replicate it to the 3 channels ImageNet backbones expect (G33). Large JPEGs are decoded at a
    reduced DCT scale (`decode_grey`), and resized as `resize_grey` says.
    """
    return decode_bytes(tf.io.read_file(path), size, resize, antialias, channels, name=path, intensity=intensity,
                        dicom=dicom)


def to_rgb(images: tf.Tensor) -> tf.Tensor:
    """Replicate a grey image or batch [..., 1] to 3 channels; 3-channel input passes unchanged."""
    if images.shape[-1] == 1:
        return tf.tile(images, [1] * (images.shape.rank - 1) + [3])
    return images


def dicom_setting(paths, cfg: dict) -> str | None:
    """input.dicom_window when the list may hold DICOM files (`dicom.list_has_dicom`), else None: the decoder
    then has no Python step."""
    from . import dicom

    return (cfg.get("input") or {}).get("dicom_window", "stored") if dicom.list_has_dicom(paths) else None


def _decoder(cfg: dict, uint8: bool = False, dicom: str | None = None):
    """bytes or path -> grey float [size, size, 1] 0..255 (uint8=True: `decode_uint8`, accelerator mode's
    wire format), with the input section's settings; `dicom`: `dicom_setting` of the list."""
    i = cfg["input"]
    intensity = i.get("intensity", "full_range")  # a run made before input.intensity existed: as it decoded then
    if uint8:
        args = (i["size"], i["resize"], i.get("antialias", "auto"))
        return ((lambda data, name=None: decode_uint8(data, *args, name=name, intensity=intensity, dicom=dicom)),
                (lambda path: decode_uint8(tf.io.read_file(path), *args, name=path, intensity=intensity, dicom=dicom)))
    args = (i["size"], i["resize"], i.get("antialias", "auto"), 1)
    return ((lambda data, name=None: decode_bytes(data, *args, name=name, intensity=intensity, dicom=dicom)),
            (lambda path: decode_image(path, *args, intensity=intensity, dicom=dicom)))


# ------------------------------------------------------------------------------ raw vs prepared data

def source_files(paths, cfg: dict, *, required: bool = True) -> np.ndarray:
    """The files to read for these raw image paths: the prepared copies when data.prepared is set.

    required=True (training): every path must be in the prepared folder. required=False (evaluation,
    prediction of another image list): a list the folder does not cover at all is read from the raw
    files (logged); a list it covers partly is an error, so one list is never read half and half.
    """
    paths = np.asarray(paths, dtype=str)
    folder = (cfg.get("data") or {}).get("prepared")
    if not folder:
        return paths
    from .prepared import PreparedError, open_prepared

    prepared = open_prepared(folder)
    prepared.check_size(cfg["input"]["size"])
    prepared.check_dicom_window(cfg["input"].get("dicom_window", "stored"))
    files, missing = prepared.files_for(paths)
    if not missing.any():
        return files
    if not required and missing.all():
        log.warning("%d images are not in the prepared folder %s: reading the raw files", len(paths), folder)
        return paths
    raise PreparedError(prepared.explain_missing(paths[missing], len(paths)))


def _use_shards(cfg: dict, minority_share) -> bool:
    """TFRecord shards feed the instance-sampled stream; everything needing random access reads files."""
    folder = (cfg.get("data") or {}).get("prepared")
    reader = (cfg.get("data") or {}).get("prepared_reader", "auto")
    sampler = (cfg.get("sampling") or {}).get("sampler", "instance")
    balanced_mixup = (cfg.get("mix") or {}).get("balanced_mixup") or 0
    if reader not in PREPARED_READERS:
        raise ValueError(f"data.prepared_reader must be auto, files or tfrecord, got {reader!r}")
    if not folder or reader == "files" or cfg["input"]["cache"] or minority_share is not None or sampler != "instance" \
            or balanced_mixup > 0:
        return False
    from .prepared import PreparedError, open_prepared

    has = open_prepared(folder).has_shards
    if reader == "tfrecord" and not has:
        raise PreparedError(f"data.prepared_reader is tfrecord but {folder} has no TFRecord shards; "
                                    "prepare it with --format both")
    return has


def _shard_stream(paths, labels, flags, cfg: dict, seed: int, shard, skip: int = 0,
                  uint8: bool = False) -> tf.data.Dataset:
    """Instance sampling from TFRecord shards: interleave the shard files in a shuffled order, keep
    the records of these images (a fold's training part), shuffle them in a buffer, decode.

    Labels stay in the CSV: a record carries its id, looked up here to the row of `labels`.
    With `shard=(n, i)`, pipeline i reads every n-th shard file (or every n-th record when the
    folder has fewer files than pipelines).
    """
    from .prepared import open_prepared, parse_record

    prepared = open_prepared(cfg["data"]["prepared"])
    ids = prepared.ids_for(paths)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), default_value=-1)
    files = prepared.shard_paths(ids)
    n, i = shard or (1, 0)
    by_file = len(files) >= n
    if by_file:
        files = files[i::n]
    decode, _ = _decoder(cfg, uint8)
    labels, flags = tf.constant(labels, tf.float32), tf.constant(flags, tf.bool)
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1,
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(parse_record, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda r: (table.lookup(r["id"]), r["image"], r["id"]))
    ds = ds.filter(lambda row, *_: row >= 0)
    if not by_file and n > 1:
        ds = ds.shard(n, i)
    ds = ds.shuffle(cfg["input"]["shuffle_buffer"], seed=seed, reshuffle_each_iteration=True).skip(skip)
    return ds.map(lambda row, data, rid: (decode(data, tf.strings.join(["TFRecord id ", rid])),
                                          tf.gather(labels, row), tf.gather(flags, row)),
                  num_parallel_calls=AUTOTUNE)


def _check_shard(shard) -> None:
    if shard is None:
        return
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(isinstance(v, (int, np.integer)) for v in shard)
    if not ok or not 0 <= shard[1] < shard[0]:
        raise ValueError(f"shard must be (number of input pipelines, this pipeline's index in 0..n-1), got {shard!r}")


def _shard_arrays(shard, *arrays):
    """Pipeline i of n keeps every n-th element (before any decoding)."""
    if shard is None:
        return arrays
    n, i = shard
    return tuple(a[i::n] for a in arrays)


# ------------------------------------------------------------------------------------------ streams

def _element_seed(base_seed: int, index: tf.Tensor) -> tf.Tensor:
    """The stateless seed (base, index) of element `index`; a vector of indices gives one row per element."""
    index = tf.cast(index, tf.int64)
    return tf.stack([tf.fill(tf.shape(index), tf.constant(base_seed, tf.int64)), index], axis=-1)


def _global_index(index: tf.Tensor, shard) -> tf.Tensor:
    """Element/batch i of pipeline p of n is number i*n + p overall: distinct random draws per pipeline."""
    if shard is None:
        return index
    n, p = shard
    return index * n + p


def _stream(paths, labels, flags, cfg: dict, seed: int, skip: int = 0, uint8: bool = False) -> tf.data.Dataset:
    """One infinite shuffled stream of (grey image [size, size, 1], label, is_minority), from its
    `skip`-th element on (skipped before decoding where the images are not cached)."""
    _, read = _decoder(cfg, uint8, dicom_setting(paths, cfg))
    n = len(paths)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), labels.astype(np.float32), flags))
    decode = lambda p, y, m: (read(p), y, m)  # noqa: E731
    if cfg["input"]["cache"]:
        # Decode once, keep the resized images in RAM, shuffle the decoded images.
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE).cache()
        return ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().skip(skip)
    # Shuffling the path list is cheap even for 264,849 images; decode after it.
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().skip(skip)
    return ds.map(decode, num_parallel_calls=AUTOTUNE)


def train_dataset(paths: np.ndarray, labels: np.ndarray, cfg: dict, *, seed: int, batch_size: int,
                  augment_fn=None, mixer=None, minority: np.ndarray | None = None,
                  minority_share: float | None = None, strategy_fn=None, mask: np.ndarray | None = None,
                  shard: tuple[int, int] | None = None, start_batch: int = 0,
                  on_device: bool = False, mix_group: int = 1) -> tf.data.Dataset:
    """Infinite, sampled, augmented and mixed batches of (images, labels) for `fit`.

    `augment_fn(image, seed) -> image` runs per image; `mixer(step, images, labels)` per batch.
    Both take stateless seeds derived from `seed` and the element/batch index: the same seed
    gives the same stream. With `minority` flags, `strategy_fn(image, is_minority, seed)` replaces
    `augment_fn` (seed 000), and `minority_share` oversamples minority images (the `ros` sampler's
    epochs of `sampling.random_oversample_indices`: row indices, no repeated copies are materialised).

    Which images are drawn is `cfg["sampling"]` (see `sampled_images`); Balanced-MixUp
    (`cfg["mix"]["balanced_mixup"]` > 0) draws a second, class-sampled batch per step and blends it
    into the first (`balanced_batches`) before `mixer` runs.

    With a label `mask` ([N, C], 0 = ignore, from --uncertain ignore) the batches are
    (images, labels, mask). The mask travels through the mixers as C extra "uncertain" label
    columns, so every mix op combines it with its own rule: a mixed label is ignored when any
    source that shows in the image had it uncertain. Samplers only look at the C class columns.

    `shard=(n, i)`: this is input pipeline i of n (multi-worker training with
    `strategy.distribute_datasets_from_function`: n = num_input_pipelines, i = input_pipeline_id).
    The input is split before decoding (every n-th path, or every n-th TFRecord shard file) and
    the per-element/per-batch seeds are offset by i, so the n pipelines see disjoint images and
    draw different augmentations. `batch_size` is then this pipeline's batch.

    `start_batch=b`: the stream from its b-th batch on, the same batches an uninterrupted stream gives
    from there (what a resumed fold needs: the stream is a function of the seed and the position).
    Every stage is positioned, not replayed: the image order and the sampler draws skip b x batch
    elements before anything is decoded (with `input.cache` the cache fills on the first pass, as it
    would anyway), and the per-element and per-batch seeds count on from b.
    With data.prepared set, the images come from the prepared folder (`source_files`).

    `mix_group=g`: g consecutive batches form one optimizer update's share of this pipeline (its local
    replicas x train.accumulate, in the order the strategy hands them out), and the mixer's partners come
    from all g x batch_size images: the group is augmented, batched and mixed as one batch (seed: the
    group's index) and then split into g batches. So 8 replicas x 4 images train on the batches one device
    makes from 32. `start_batch` must then be a multiple of g (an update is never split).

    `on_device=True` (augment.device accelerator): tf.data only reads, decodes, resizes and batches; the
    batches are dicts of uint8 grey images [B, H, W, 1] (4x less host-to-device traffic than float grey),
    the labels (+ mask columns), each image's augmentation seed [B, 2] and the random numbers drawn from it
    [B, 5] (`augment.batch_draws`), and the update's index (the group's), and `device_preprocess` turns them
    into what the host path yields, inside the train step, mixing over the whole update. Pass no
    augment_fn / mixer then.

    With `input.data_service` set (grpc://HOST:PORT), the stream is `service_streams`' round-robin of
    `input.data_service_streams` sub-streams, each produced by a tf.data service worker.
    Accelerator mode decodes straight to uint8 (`decode_uint8`; input.cache then holds uint8, 4x less
    RAM), and the decoding map is its only per-image stage (`_raw_batches`).
    """
    group = int(mix_group)
    if group < 1 or int(start_batch) % group:
        raise ValueError(f"mix_group must be >= 1 and divide start_batch, got {mix_group} and {start_batch}")
    if on_device and (augment_fn is not None or mixer is not None or strategy_fn is not None):
        raise ValueError("on_device batches carry the raw images: give the augmentation and the mixer to "
                         "device_preprocess, not to train_dataset")
    args = dict(paths=paths, labels=labels, seed=seed, batch_size=batch_size * group, augment_fn=augment_fn,
                mixer=mixer, minority=minority, minority_share=minority_share, strategy_fn=strategy_fn, mask=mask,
                on_device=on_device)
    service = (cfg.get("input") or {}).get("data_service")
    start = int(start_batch) // group
    if service:
        if not (cfg.get("data") or {}).get("prepared") and dicom_setting(paths, cfg) is not None:
            from .dicom import DicomError

            raise DicomError(
                f"input.data_service ({service}) cannot decode DICOM: pydicom runs in Python in this process "
                "(tf.numpy_function), which a tf.data service worker cannot run. Prepare the images once "
                "(python -m cxrlt.prepare --labels ... --out DIR: the same JPEG shards as from JPEG/PNG) and train "
                "with --prepared DIR, or leave input.data_service unset")
        local = {**cfg, "input": {**cfg["input"], "data_service": None}}
        ds = service_streams(lambda sub_shard, sub_start: _groups(cfg=local, shard=sub_shard, start=sub_start, **args),
                             int(cfg["input"].get("data_service_streams", 4)), shard, start, service)
    else:
        ds = _groups(cfg=cfg, shard=shard, start=start, **args)
    if on_device:  # every replica of every worker mixes update g with the same seed (device_preprocess)
        ds = ds.enumerate(start=start).map(lambda g, b: {**b, "update": tf.fill([batch_size * group], g)})
    return (ds.rebatch(batch_size) if group > 1 else ds).prefetch(AUTOTUNE)


def _groups(paths, labels, cfg: dict, *, seed: int, batch_size: int, augment_fn, mixer, minority, minority_share,
            strategy_fn, mask, shard, start: int, on_device: bool) -> tf.data.Dataset:
    """`train_dataset`'s stream of this input pipeline (or tf.data service sub-stream) in batches of
    `batch_size` = one mix group, from its `start`-th batch on: mixed on the host, or (on_device) raw."""
    paths, labels = np.asarray(paths, dtype=str), np.asarray(labels, dtype=np.float32)
    n_classes = labels.shape[1]
    if mask is not None:
        labels = np.concatenate([labels, 1.0 - np.asarray(mask, dtype=np.float32)], axis=1)
    flags = np.zeros(len(paths), bool) if minority is None else np.asarray(minority, bool)
    _check_shard(shard)
    skip = int(start) * int(batch_size)
    from_shards = _use_shards(cfg, minority_share)
    if from_shards:
        ds = _shard_stream(paths, labels, flags, cfg, seed, shard, skip, uint8=on_device)
    else:
        paths = source_files(paths, cfg)
        whole = (paths, labels, flags)
        sample_seed = seed
        if _samples_by_statistics(cfg, minority_share) and shard is not None and shard[0] > 1:
            # Class-aware sampling needs the whole table's class statistics (a worker's share would change
            # them with the number of workers, and a rare class could vanish from a worker): every pipeline
            # samples the whole table, with its own seed.
            sample_seed = seed + PIPELINE_SEED_OFFSET * shard[1]
        else:
            paths, labels, flags = _shard_arrays(shard, paths, labels, flags)
        if len(paths) == 0:
            raise ValueError(f"input pipeline {shard} has no images: fewer images than input pipelines")
        if minority_share is not None:
            if flags.all() or not flags.any():
                raise ValueError(f"oversampling needs both minority and majority images; found {int(flags.sum())} "
                                 f"minority of {len(flags)} (change augment.tail_quantile)")
            _check_single_sampler(cfg)
            # Seed 000's oversampling (G28: len(train) draws with replacement, the minority share of them
            # minority images) is the `ros` sampler's epoch, so there is one oversampler.
            ros = {"name": "ros", "target_share": minority_share, "epoch_size": len(paths)}
            if _single_label(cfg):  # seed 000 itself: every class equally often (inverse class weights)
                from . import sampling_single

                index = sampling_single.index_dataset("ros", labels[:, :n_classes], sample_seed, epoch_size=len(paths))
            else:
                index = sampling.make_index_dataset(labels, ros, sample_seed, minority_mask=flags)
            ds = images_at(index, paths, labels, flags, cfg, skip, uint8=on_device)
        else:
            ds = sampled_images(paths, labels, flags, cfg, sample_seed, n_classes, skip, uint8=on_device)
    if on_device:
        if (cfg.get("mix") or {}).get("balanced_mixup", 0):
            raise ValueError("mix.balanced_mixup runs on the host only: set augment.device host")
        return _raw_batches(ds, seed, shard, batch_size, start, cfg.get("augment"))
    augment = lambda d, s: _augmented(d, s, augment_fn, strategy_fn, shard, start=skip)  # noqa: E731
    ds = augment(ds, seed).batch(batch_size, drop_remainder=True)
    if not from_shards:
        pipeline_seed = seed + PIPELINE_SEED_OFFSET * (shard[1] if shard else 0)
        ds = balanced_batches(ds, *whole, cfg, pipeline_seed, batch_size, augment, n_classes, start)
    if mixer is not None:
        ds = ds.enumerate(start=start).map(lambda i, xy: mixer(_global_index(i, shard), xy[0], xy[1]),
                                           num_parallel_calls=AUTOTUNE)
    if mask is not None:
        return ds.map(lambda x, y: (to_rgb(x), y[:, :n_classes], tf.cast(y[:, n_classes:] <= 0.0, tf.float32)),
                      num_parallel_calls=AUTOTUNE)
    return ds.map(lambda x, y: (to_rgb(x), y), num_parallel_calls=AUTOTUNE)


def service_streams(build, streams: int, shard=None, start_batch: int = 0, service: str | None = None) -> tf.data.Dataset:
    """Input scale-out on tf.data service: this input pipeline's batches as a round-robin of `streams`
    sub-streams, sub-stream s run by one tf.data service worker (or locally with service=None, the same
    batches: what the tests compare against).

    `build(shard, start_batch)` makes one sub-stream: pipeline i of n is split once more into shards
    (n x streams, i x streams + s), so the sub-streams read disjoint images and draw their own augmentation
    and mixing seeds (cxrlt's global element/batch indices), like the input pipelines of several workers.

    Why not one job over the whole pipeline: with ShardingPolicy.OFF every worker would produce the same
    seeded stream (each batch W times), and DYNAMIC sharding of the path list would give each worker its own
    element count (duplicate augmentation seeds, a nondeterministic order, nothing to resume from). Here
    each sub-stream is its own job whose source is `range(1)` under DYNAMIC sharding: the dispatcher gives
    that one split, i.e. the whole infinite sub-stream, to exactly one worker; the other workers get none.
    The trainer reads batch g from sub-stream g mod streams, so the batches are a function of (seed, streams,
    position) whatever the number of workers or their speed, and a resumed fold positions each sub-stream
    at its share of the batches already used (exact resume). The price: `streams` bounds the number of
    workers doing useful work (more streams than workers is fine, a worker runs several), the slowest
    sub-stream sets the pace (round-robin waits for it), and a lost worker's sub-streams are not moved
    to another worker (DYNAMIC visits a split at most once): reading stalls (seen with 2 workers on
    127.0.0.1) until input.data_service_timeout_s ends the run with a message saying so (cxrlt.runtime.watchdog);
    the rerun resumes from its last checkpoint.
    """
    if int(streams) < 1:
        raise ValueError(f"input.data_service_streams must be >= 1, got {streams}")
    _check_shard(shard)
    n, i = shard or (1, 0)
    subs = []
    for s in range(streams):
        ds = build((n * streams, i * streams + s), (int(start_batch) - s + streams - 1) // streams)
        if service:
            ds = tf.data.Dataset.range(1).flat_map(lambda _, ds=ds: ds).apply(tf.data.experimental.service.distribute(
                processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=service))
        subs.append(ds)
    if streams == 1:
        return service_probe(subs[0], service)
    order = tf.data.Dataset.range(int(start_batch), 2 ** 62).map(lambda g: g % streams)
    return service_probe(tf.data.Dataset.choose_from_datasets(subs, order), service).prefetch(AUTOTUNE)


def service_probe(ds: tf.data.Dataset, service: str | None) -> tf.data.Dataset:
    """Batches read from the service tick this process's delivery clock (the step watchdog's evidence of a
    lost service worker, input.data_service_timeout_s); a local stream is left as it is."""
    if not service:
        return ds
    from . import service as service_lib

    return service_lib.probe_deliveries(ds)


def _raw_batches(ds: tf.data.Dataset, seed: int, shard, batch_size: int, start_batch: int,
                 augment_cfg=None) -> tf.data.Dataset:
    """(uint8 grey image, label, flag) -> dicts of batches with the seeds the host path would use and the
    augmentation's random numbers drawn from them (`augment.batch_draws`: a few scalars per image, drawn here
    on the host so that the train step runs no per-image loop).

    The decoding map is the only per-image stage (as in a bare read-decode-resize pipeline): element j
    of batch i is this pipeline's element i x batch_size + j, so its seed (`_element_seed`, what the host
    path's per-image enumerate gives) is computed per batch, not by a second map over every image."""
    from . import augment

    def as_dict(i, b):
        index = _global_index(i * batch_size + tf.range(batch_size, dtype=tf.int64), shard)
        seeds = _element_seed(seed, index)
        return {"images": b[0], "labels": b[1], "seeds": seeds, "draws": augment.batch_draws(seeds, augment_cfg)}

    return ds.batch(batch_size, drop_remainder=True).enumerate(start=start_batch).map(as_dict,
                                                                                       num_parallel_calls=AUTOTUNE)


def device_preprocess(augment_cfg, mixer, n_classes: int, masked: bool = False):
    """The accelerator half of `train_dataset(on_device=True)`, run by the train step on each replica: the
    replica's micro-batches of one update (batch dicts; one dict alone is fine too) -> (images, labels[, mask])
    for each, augmented (`augment.batch_basic` with the draws made on the host) and mixed, grey -> RGB.

    The mixer's partners come from the global batch of the update, as on one device: the uint8 grey images,
    their draws and labels are all-gathered over the replicas (and the micro-batches put one after the
    other), every replica mixes that batch with the update's seed and keeps its own rows. Beyond two
    replicas it augments only the images its rows show (Mosaic: up to 4 per row), and nothing is copied to
    the host: gathers, multiply-adds and ImageProjectiveTransformV3, no per-image loop.
    For the same seed it gives the host path's batch (to float rounding; the decoded image is rounded to
    uint8 for the trip, which the host path does not do: at most half a grey level before augmentation)."""
    from . import augment, mix

    batch_augment = augment.make_batch_augment(augment_cfg)
    mixing = mixer is not None and mixer.active

    def finish(images, labels):
        images = to_rgb(images)
        if masked:
            return images, labels[:, :n_classes], tf.cast(labels[:, n_classes:] <= 0.0, tf.float32)
        return images, labels

    def preprocess(batches):
        one = isinstance(batches, dict)
        batches = [batches] if one else list(batches)
        if not mixing:
            out = [finish(batch_augment(b["images"], b["draws"]), b["labels"]) for b in batches]
            return out[0] if one else out
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        size = batches[0]["images"].shape[0]
        images, draws, labels = _gather_update(context if replicas > 1 else None, batches)
        rows = None  # one replica: every row is its own; else micro-batch a of replica r: rows a*R*b + r*b + 0..b-1
        if replicas > 1:
            first = tf.range(len(batches))[:, None] * (replicas * size) + context.replica_id_in_sync_group * size
            rows = tf.reshape(first + tf.range(size)[None, :], [-1])
        if replicas <= 2:  # augment the whole update once: no more images than a Mosaic of the own rows reads
            source = mix.Source.of(batch_augment(images, draws))
        else:  # augment only the images the own rows show (Mosaic: 4 per row, whatever the number of replicas)
            source = mix.Source(lambda i: batch_augment(tf.gather(images, i), tf.gather(draws, i)), images.shape[0],
                                images.shape[1:])
        x, y = mixer.apply(None, labels, mix.step_seed(mixer.seed, batches[0]["update"][0]), rows=rows, source=source)
        out = [finish(x[a * size:(a + 1) * size], y[a * size:(a + 1) * size]) for a in range(len(batches))]
        return out[0] if one else out

    return preprocess


def _gather_update(context, batches) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(uint8 images, draws, labels) of the whole update: micro-batch a of replica r at rows a*R*b + r*b + j,
    the order one device would see them in. One all-gather per update (context None: this replica's own):
    everything travels as one int32 tensor, the images packed four bytes to an int32 (the collectives take
    no 8-bit types, and the images should cross the links as bytes), the floats bit for bit."""
    images = tf.concat([b["images"] for b in batches], 0)
    draws = tf.concat([b["draws"] for b in batches], 0)
    labels = tf.concat([b["labels"] for b in batches], 0)
    if context is None:
        return images, draws, labels
    local, shape = images.shape[0], images.shape[1:]
    count = shape.num_elements()
    pad = -count % 4
    flat = tf.pad(tf.reshape(images, [local, count]), [[0, 0], [0, pad]])
    packed = tf.concat([tf.bitcast(tf.reshape(flat, [local, -1, 4]), tf.int32),
                        tf.bitcast(tf.cast(draws, tf.float32), tf.int32), tf.bitcast(labels, tf.int32)], axis=1)
    replicas, micro = context.num_replicas_in_sync, len(batches)
    gathered = tf.ensure_shape(context.all_gather(packed, axis=0), [replicas * local, packed.shape[1]])
    # all_gather puts replica r's rows (its micro-batches one after the other) at r*N*b + a*b + j
    b = local // micro
    order = [r * local + a * b + j for a in range(micro) for r in range(replicas) for j in range(b)]
    gathered = tf.gather(gathered, order)
    width = (count + pad) // 4
    images = tf.reshape(tf.reshape(tf.bitcast(gathered[:, :width], tf.uint8), [-1, count + pad])[:, :count],
                        [-1, *shape])
    draws = tf.bitcast(gathered[:, width:width + draws.shape[1]], tf.float32)
    labels = tf.bitcast(gathered[:, width + draws.shape[1]:], labels.dtype)
    return images, draws, labels


def _augmented(ds: tf.data.Dataset, seed: int, augment_fn, strategy_fn, shard=None, start: int = 0) -> tf.data.Dataset:
    """(image, label, is_minority) -> (augmented image, label).

    Both paths give each element its own stateless seed (base seed, global element index): the
    parallel map calls the augmentation in whatever order its threads run, so a seed drawn from a
    shared stream in call order would make each image's augmentation depend on thread timing, and
    a second pass over the dataset would not repeat the first."""
    if strategy_fn is not None:
        return ds.enumerate(start=start).map(
            lambda i, xym: (strategy_fn(xym[0], xym[2], _element_seed(seed, _global_index(i, shard))), xym[1]),
            num_parallel_calls=AUTOTUNE)
    if augment_fn is not None:
        return ds.enumerate(start=start).map(
            lambda i, xym: (augment_fn(xym[0], _element_seed(seed, _global_index(i, shard))), xym[1]),
            num_parallel_calls=AUTOTUNE)
    return ds.map(lambda x, y, m: (x, y))


# --- training samplers (`sampling:`) and Balanced-MixUp's second stream -------------------------------
# The sampler yields row indices (cxrlt.sampling); each index is gathered into (path, label, flag) and
# decoded, so nothing is copied per draw: the path/label tables are held once (about 30 MB for CXR-LT's
# 264,849 images x 26 classes) and an oversampled image is decoded again each time it is drawn.

def _sampling_section(cfg: dict) -> dict:
    return {**sampling.SECTION_DEFAULTS, **(cfg.get("sampling") or {})}


PIPELINE_SEED_OFFSET = 7919  # input pipeline i of n samples the whole table with seed + this x i


def _samples_by_statistics(cfg: dict, minority_share) -> bool:
    """Whether the training images are drawn from class statistics (any sampler but instance, or seed 000's
    oversampling), which a worker's share of the table would distort."""
    return minority_share is not None or _sampling_section(cfg)["sampler"] != "instance"


def _single_label(cfg: dict) -> bool:
    """One class per image (data.task multiclass / ordinal, one-hot label rows)."""
    return (cfg.get("data") or {}).get("task", "multilabel") in ("multiclass", "ordinal")


def _check_single_sampler(cfg: dict) -> None:
    problem = sampling.oversampling_conflict(_sampling_section(cfg)["sampler"], (cfg.get("augment") or {}).get("strategy"))
    if problem:
        raise ValueError(problem)


def sampled_index_stream(labels: np.ndarray, cfg: dict, seed: int) -> tf.data.Dataset | None:
    """Infinite int64 row indices drawn by `cfg["sampling"]`, or None for `instance` (shuffled epochs,
    which `_stream` does without an index stream). ros/rus: minority = images with any tail class
    (`sampling.tail_quantile`, as `augment.minority_mask`), majority = every other image."""
    from . import augment

    section = _sampling_section(cfg)
    spec = sampling.spec_from_config(section)
    if spec["name"] == "instance":
        return None
    labels = np.asarray(labels)
    masks = {}
    if spec["name"] in ("ros", "rus") and _single_label(cfg):  # resampled by class: no tail quantile, no share
        from . import sampling_single

        return sampling_single.index_dataset(spec["name"], labels, seed, epoch_size=spec.get("epoch_size"))
    if spec["name"] in ("ros", "rus"):
        minority = augment.minority_mask(labels, labels.sum(axis=0), section["tail_quantile"])
        if minority.all() or not minority.any():
            raise ValueError(f"sampling.sampler {spec['name']} needs minority and majority images; found "
                             f"{int(minority.sum())} minority of {len(minority)} (change sampling.tail_quantile)")
        masks = {"minority_mask": minority} if spec["name"] == "ros" else {"majority_mask": ~minority}
    return sampling.make_index_dataset(labels, spec, seed, **masks)


def sampled_images(paths, labels, flags, cfg: dict, seed: int, n_classes: int | None = None,
                   skip: int = 0, uint8: bool = False) -> tf.data.Dataset:
    """Infinite (grey image, label, is_minority) drawn by the configured sampler.

    The sampler sees the first `n_classes` label columns (the rest carry the uncertainty mask)."""
    index = sampled_index_stream(np.asarray(labels)[:, :n_classes], cfg, seed)
    if index is None:
        return _stream(paths, labels, flags, cfg, seed, skip, uint8)
    return images_at(index, paths, labels, flags, cfg, skip, uint8)


def images_at(index: tf.data.Dataset, paths, labels, flags, cfg: dict, skip: int = 0,
              uint8: bool = False) -> tf.data.Dataset:
    """(grey image, label, is_minority) for each row index of `index`: gather the row, then decode it.

    With `input.cache` the images are decoded once into one in-memory tensor [N, size, size, 1] (small
    data sets only, like the cache of `_stream`) and gathered by index."""
    _, read = _decoder(cfg, uint8, dicom_setting(paths, cfg))
    index = index.skip(skip)  # positioned on the row indices: nothing skipped is decoded
    labels_t = tf.constant(np.asarray(labels, np.float32))
    flags_t = tf.constant(np.asarray(flags, bool))
    if cfg["input"]["cache"]:
        decoded = _decoded_table(paths, read)
        return index.map(lambda i: (tf.gather(decoded, i), tf.gather(labels_t, i), tf.gather(flags_t, i)))
    paths_t = tf.constant(np.asarray(paths, dtype=str))
    rows = index.map(lambda i: (tf.gather(paths_t, i), tf.gather(labels_t, i), tf.gather(flags_t, i)))
    return rows.map(lambda p, y, m: (read(p), y, m), num_parallel_calls=AUTOTUNE)


def _decoded_table(paths, read) -> tf.Tensor:
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
    return ds.map(read, num_parallel_calls=AUTOTUNE).batch(len(paths)).get_single_element()


def balanced_batches(batches: tf.data.Dataset, paths, labels, flags, cfg: dict, seed: int, batch_size: int,
                     augment, n_classes: int | None = None, start_batch: int = 0) -> tf.data.Dataset:
    """Balanced-MixUp (seed 003): zip each batch of the training stream with a batch of a class-sampled
    stream (q = mix.balanced_mixup_q) and blend them with `mix.BalancedMixer`; unchanged when off.

    Combined with the other mixers by stacking: Balanced-MixUp forms every batch first, then the
    BatchMixer op (Mosaic/MixUp/CutMix, by its probabilities) and CutOut run on the blended batch, their
    label rule applied to the blended (soft) labels. Seed 003 uses Balanced-MixUp alone (mosaic, mixup,
    cutmix 0), as the ablation grids do."""
    from . import mix

    mixer = mix.BalancedMixer.from_config(cfg.get("mix") or {}, seed=seed)
    if mixer is None:
        return batches
    class_seed = seed + sampling.BALANCED_SEED_OFFSET
    index = sampling.class_sampled_indices(np.asarray(labels)[:, :n_classes], mixer.q, class_seed)
    others = images_at(index, paths, labels, flags, cfg, start_batch * batch_size)
    others = augment(others, class_seed).batch(batch_size, drop_remainder=True)
    pairs = tf.data.Dataset.zip((batches, others)).enumerate(start=start_batch)
    return pairs.map(lambda i, pair: mixer(i, pair[0], pair[1]), num_parallel_calls=AUTOTUNE)


def eval_dataset(paths: np.ndarray, cfg: dict, *, batch_size: int) -> tf.data.Dataset:
    """Batches of images in file-list order (no randomness), for validation and prediction.

    With data.prepared, the prepared files of these images are read (still in list order); a list
    the folder does not hold (e.g. the test list) is read from the raw files.
    """
    files = source_files(paths, cfg, required=False)
    _, read = _decoder(cfg, dicom=dicom_setting(files, cfg))
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.map(read, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).map(to_rgb, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
