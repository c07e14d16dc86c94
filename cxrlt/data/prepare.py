"""Pre-resize a label CSV's images once, so training stops decoding full-size radiographs every epoch.

    python -m cxrlt.prepare --labels train.csv --image-root mimic-cxr-jpg/2.0.0 --long-side 1024 --out cache/train1024
    python -m cxrlt.train ... --prepared cache/train1024        # or data.prepared in the config

A CXR-LT radiograph is about 2,500 x 3,000 px; decoding and shrinking it costs far more than the
whole rest of the input pipeline. This writes each image shrunk to a long side (aspect ratio
kept, never upscaled), grey, 8-bit JPEG quality 95 by default, in two forms tf.data reads
natively:

    DIR/images/<shard>/<row>.jpg   one file per image (random access: evaluation order, class
                                   samplers, oversampling, Balanced-MixUp)
    DIR/shards/*.tfrecord          the same bytes as TFRecord shards (sequential reads for the
                                   instance-sampled training stream; one shard file per worker)
                                   records: id, image (encoded), height, width, orig_height, orig_width
    DIR/manifest.csv               id, source (the CSV's path), file, shard, sizes; in CSV order
    DIR/bad.csv                    images that could not be read or decoded, with the reason
    DIR/prepare.json               the settings; a rerun with other settings is refused

Labels stay in the CSV: the trainer looks images up by path (files) or by id (records).

DICOM sources (cxrlt/data/dicom.py) are decoded once here, by pydicom, windowed per --dicom-window (the
run's input.dicom_window; recorded in prepare.json and held against the run's setting) and MONOCHROME1
inverted, and written as the same JPEG files and shards: after this pass a DICOM archive trains at the cost
of a JPEG one, and nothing from the DICOM headers is copied (ids are the CSV's).

Why 8-bit JPEG: MIMIC-CXR-JPG is itself 8-bit JPEG, the model input is 8-bit-derived after the
resize anyway, and a 1024 px JPEG decodes ~5x faster than a PNG of the same image. `--encoding
png` stores lossless 8-bit PNG, `png16` 16-bit PNG (for 16-bit sources, e.g. DICOM exports, when
their extra grey levels should survive).

Work is split into shards, assigned by a seeded permutation of the CSV rows (deterministic), and
shards are processed in order with a thread pool (TensorFlow's decoders release the GIL). Each
shard's files are written atomically and then a done marker; a killed run (even kill -9) rerun
with the same command redoes only unfinished shards, and the result is bit-identical to an
uninterrupted run. Every image is verified by the decoder the trainer uses; undecodable or missing
files go to bad.csv with the reason, and the command fails (exit 2) listing them unless
--skip-bad, in which case they are left out of the manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic
from ..utils.hashing import file_sha256
from . import dataset, dicom
from .prepared import FORMAT_VERSION, Layout, Prepared, PreparedError, open_prepared, parse_record  # noqa: F401

log = logging.getLogger("cxrlt.prepare")

ENCODINGS = {"jpeg": ".jpg", "png": ".png", "png16": ".png"}
# Settings that define the output: a rerun must use the same ones (the worker count may change).
PLAN_KEYS = ("format_version", "labels_sha256", "image_root", "n_images", "long_side", "encoding", "quality",
             "shard_size", "seed", "format", "dicom_window")
KILL_AFTER_ENV = "CXRLT_PREPARE_KILL_AFTER"  # tests: SIGKILL self after writing this many image files


# ------------------------------------------------------------------------------------ record format

def _example(image_id: str, encoded: bytes, hw, orig_hw) -> bytes:
    import tensorflow as tf

    b = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))  # noqa: E731
    i = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))  # noqa: E731
    feature = {"id": b(image_id.encode()), "image": b(encoded), "height": i(hw[0]), "width": i(hw[1]),
               "orig_height": i(orig_hw[0]), "orig_width": i(orig_hw[1])}
    # deterministic: the feature map is serialised in key order, not in a per-process hash order
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


# ------------------------------------------------------------------------------------ image shrinking

def make_shrinker(long_side: int, encoding: str = "jpeg", quality: int = 95, dicom_window: str | None = None):
    """A function: encoded source bytes -> (encoded shrunk bytes, (h, w), (orig_h, orig_w)).

    The decoder is the trainer's (pipeline.decode_grey: DCT-scaled JPEG decoding, 16-bit PNGs
    scaled; DICOM through pydicom with `dicom_window`, None: no DICOM step), so a file that passes here
    also decodes in training. Raises tf.errors.OpError on an undecodable file.
    """
    import tensorflow as tf

    from .pipeline import decode_grey

    def encode(image):  # float 0..1 [h, w, 1]
        if encoding == "png16":
            return tf.io.encode_png(tf.cast(tf.round(image * 65535.0), tf.uint16))
        pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
        if encoding == "png":
            return tf.io.encode_png(pixels)
        return tf.io.encode_jpeg(pixels, format="grayscale", quality=quality)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def shrink(data):
        image = decode_grey(data, long_side, fit="long", dicom=dicom_window)
        orig = tf.cond(tf.io.is_jpeg(data), lambda: tf.io.extract_jpeg_shape(data)[:2], lambda: tf.shape(image)[:2])
        scale = tf.minimum(1.0, long_side / tf.cast(tf.reduce_max(orig), tf.float32))
        new = tf.maximum(1, tf.cast(tf.round(tf.cast(orig, tf.float32) * scale), tf.int32))
        image = tf.cond(tf.reduce_all(tf.shape(image)[:2] == new), lambda: image,
                        lambda: tf.image.resize(image, new, antialias=True))
        image = tf.clip_by_value(image, 0.0, 1.0)
        return encode(image), tf.shape(image)[:2], orig

    def run(data: bytes):
        encoded, hw, orig = shrink(tf.constant(data))
        return encoded.numpy(), tuple(int(v) for v in hw.numpy()), tuple(int(v) for v in orig.numpy())

    return run


def _process(shrink, path: str):
    """(encoded, hw, orig_hw, None) or (None, None, None, reason) for one source file."""
    import tensorflow as tf

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, None, None, "file not found"
    except OSError as err:
        return None, None, None, f"cannot read: {err.strerror or err}"
    if not data:
        return None, None, None, "empty file (0 bytes)"
    try:
        encoded, hw, orig = shrink(data)
    except tf.errors.OpError as err:
        words = (err.message or type(err).__name__).strip().splitlines()[0]
        words = re.sub(r"^\{\{function_node [^}]*\}\}\s*(DicomError: DICOM bytes: )?", "", words)
        return None, None, None, "cannot decode: " + words
    return encoded, hw, orig, None


# ------------------------------------------------------------------------------------------ the job

def plan_shards(n_images: int, shard_size: int, seed: int) -> list[np.ndarray]:
    """CSV rows per shard: a seeded permutation cut into pieces (mixed findings and patients per shard)."""
    order = np.random.default_rng(seed).permutation(n_images)
    return [order[i:i + shard_size] for i in range(0, n_images, shard_size)]


def _check_plan(layout: Layout, plan: dict) -> None:
    if layout.plan.exists():
        old = json.loads(layout.plan.read_text())
        changed = [f"{k}: {old.get(k)!r} -> {plan.get(k)!r}" for k in PLAN_KEYS if old.get(k) != plan.get(k)]
        if changed:
            raise PreparedError(f"{layout.root} holds images prepared from another CSV or with other settings "
                                f"({'; '.join(changed[:3])}); use another --out, or delete that folder")
    atomic.write_json(layout.plan, plan)


def _remove_stale_temporaries(root: Path) -> None:
    """Half-written files of a killed run (atomic.atomic_path's '.<name>.*.tmp'): only inside our folder."""
    for path in root.rglob(".*.tmp"):
        if path.is_file():
            path.unlink()


@contextlib.contextmanager
def _lock(root: Path):
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreparedError(f"another cxrlt.prepare is writing {root}; wait for it or use another --out") from None
        yield


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _kill_countdown():
    """Fault injection for the resume test: SIGKILL this process after N image files (no cleanup runs)."""
    left = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)

    def tick():
        nonlocal left
        if left:
            left -= 1
            if not left:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
    return tick


def _run_shard(layout: Layout, k: int, n_shards: int, rows: np.ndarray, table: dataset.LabelTable, shrink,
               pool: ThreadPoolExecutor, ext: str, write_shards: bool, progress, tick) -> dict:
    import tensorflow as tf

    done, bad, records = [], [], []
    results = pool.map(lambda row: _process(shrink, table.paths[row]), rows.tolist())
    for row, (encoded, hw, orig, reason) in zip(rows.tolist(), results):
        if reason is not None:
            bad.append([row, reason])
        else:
            rel = layout.image_file(k, row, ext)
            _write_bytes(layout.root / rel, encoded)
            tick()
            done.append([row, rel, hw[0], hw[1], orig[0], orig[1]])
            if write_shards:
                records.append(_example(str(table.ids[row]), encoded, hw, orig))
        progress.add(1)
    if write_shards:
        with atomic.atomic_path(layout.shard_file(k, n_shards)) as tmp:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for record in records:
                    writer.write(record)
    marker = {"shard": k, "images": done, "bad": bad}
    atomic.write_json(layout.marker(k), marker)
    return marker


def _shard_is_done(layout: Layout, k: int, n_shards: int, write_shards: bool) -> dict | None:
    if not layout.marker(k).exists():
        return None
    marker = json.loads(layout.marker(k).read_text())
    files_ok = all((layout.root / rel).exists() for _, rel, *_ in marker["images"])
    if not files_ok or (write_shards and not layout.shard_file(k, n_shards).exists()):
        return None  # a file was deleted after the marker: redo the shard
    return marker


def prepare(labels: str | os.PathLike, out: str | os.PathLike, *, image_root=None, long_side: int = 1024,
            encoding: str = "jpeg", quality: int = 95, shard_size: int = 1000, seed: int = 0, fmt: str = "both",
            workers: int | None = None, skip_bad: bool = False, allow_outside_root: bool = False,
            dicom_window: str = "stored") -> dict:
    """Prepare (or finish preparing) `out` from the images of `labels`; returns a summary dict.
    `dicom_window` (input.dicom_window) windows the DICOM files among them.

    Raises PreparedError listing the bad images unless skip_bad (the manifest is written only then,
    so a folder with unacknowledged bad images cannot be trained on by accident).
    """
    if long_side < 32:
        raise PreparedError(f"--long-side must be >= 32, got {long_side}")
    if encoding not in ENCODINGS:
        raise PreparedError(f"--encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    if fmt not in ("both", "files"):
        raise PreparedError(f"--format must be both or files, got {fmt!r}")
    if not 1 <= quality <= 100 or shard_size < 1:
        raise PreparedError("--quality must be in 1..100 and --shard-size >= 1")
    labels = Path(labels).resolve()
    table = dataset.read_labels(labels, image_root=image_root, classes=[], require_labels=False,
                                allow_outside_root=allow_outside_root)
    root_dir = Path(image_root).resolve() if image_root is not None else labels.parent
    layout = Layout(Path(out))
    shards = plan_shards(len(table), shard_size, seed)
    window = dicom.check_window(dicom_window) if dicom.list_has_dicom(table.paths) else None
    plan = {"format_version": FORMAT_VERSION, "labels": str(labels), "labels_sha256": file_sha256(labels),
            "image_root": str(root_dir), "n_images": len(table), "long_side": long_side, "encoding": encoding,
            "quality": quality if encoding == "jpeg" else None, "shard_size": shard_size, "seed": seed,
            "format": fmt, "n_shards": len(shards), "dicom_window": window}
    write_shards = fmt == "both"
    with _lock(layout.root):
        _check_plan(layout, plan)
        _remove_stale_temporaries(layout.root)
        markers = {k: _shard_is_done(layout, k, len(shards), write_shards) for k in range(len(shards))}
        todo = [k for k, m in markers.items() if m is None]
        if len(todo) < len(shards):
            log.info("%s: %d of %d shards already done; resuming", layout.root, len(shards) - len(todo), len(shards))
        if todo:
            from ..utils.progress import Progress

            shrink = make_shrinker(long_side, encoding, quality, window)
            progress = Progress(sum(len(shards[k]) for k in todo), "prepare")
            tick = _kill_countdown()
            with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
                for k in todo:
                    markers[k] = _run_shard(layout, k, len(shards), shards[k], table, shrink, pool,
                                            ENCODINGS[encoding], write_shards, progress, tick)
        return _finish(layout, table, markers, skip_bad)


def _finish(layout: Layout, table: dataset.LabelTable, markers: dict, skip_bad: bool) -> dict:
    images = sorted((row, rel, k, h, w, oh, ow) for k, m in markers.items() for row, rel, h, w, oh, ow in m["images"])
    bad = sorted((row, reason) for m in markers.values() for row, reason in m["bad"])
    bad_frame = pd.DataFrame({"line": [r + 2 for r, _ in bad], "id": [table.ids[r] for r, _ in bad],
                              "path": [table.paths[r] for r, _ in bad], "reason": [why for _, why in bad]})
    atomic.write_csv(layout.bad, bad_frame)
    summary = {"out": str(layout.root), "images": len(images), "bad": len(bad), "shards": len(markers)}
    if bad and not skip_bad:
        listing = "; ".join(f"line {row + 2} {table.paths[row]}: {why}" for row, why in bad[:5])
        raise PreparedError(
            f"{len(bad)} of {len(table)} images in {table.source} cannot be used ({listing}"
            f"{'; ...' if len(bad) > 5 else ''}); all are listed in {layout.bad}. Fix or remove them from the CSV, "
            "or rerun with --skip-bad to leave them out (the finished shards are kept)"
        )
    rows = [r[0] for r in images]
    manifest = pd.DataFrame({
        "id": table.ids[rows], "source": table.paths[rows], "file": [r[1] for r in images],
        "shard": [r[2] for r in images], "height": [r[3] for r in images], "width": [r[4] for r in images],
        "orig_height": [r[5] for r in images], "orig_width": [r[6] for r in images],
    })
    atomic.write_csv(layout.manifest, manifest)
    if bad:
        log.warning("left out %d undecodable images (listed in %s)", len(bad), layout.bad)
    return summary


# ---------------------------------------------------------------------------- reading a prepared folder

# ---------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    from ..utils import cli

    parser = cli.parser("python -m cxrlt.prepare", __doc__)
    parser.add_argument("--labels", required=True, help="label CSV (or image list) whose images to prepare")
    parser.add_argument("--image-root", help="folder the CSV's paths are relative to (default: the CSV's folder)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (resumed if it exists)")
    parser.add_argument("--long-side", type=int, default=1024, help="shrink the long side to this (never upscale); "
                        ">= the training size, e.g. 1024 for 768")
    parser.add_argument("--encoding", choices=sorted(ENCODINGS), default="jpeg",
                        help="jpeg (8-bit grey, default), png (8-bit, lossless), png16 (16-bit sources)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--format", dest="fmt", choices=["both", "files"], default="both",
                        help="both: files + TFRecord shards (default); files: the files only (half the disk)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (~250 MB at 1024 px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image-to-shard assignment")
    parser.add_argument("--workers", type=int, help="decoding threads (default: one per CPU core)")
    parser.add_argument("--skip-bad", action="store_true", help="leave undecodable images out instead of failing")
    parser.add_argument("--dicom-window", choices=dicom.WINDOWS, default="stored",
                        help="DICOM files: the run's input.dicom_window (default stored: the file's own window)")
    parser.add_argument("--allow-outside-root", action="store_true")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        summary = prepare(args.labels, args.out, image_root=args.image_root, long_side=args.long_side,
                          encoding=args.encoding, quality=args.quality, shard_size=args.shard_size, seed=args.seed,
                          fmt=args.fmt, workers=args.workers, skip_bad=args.skip_bad,
                          allow_outside_root=args.allow_outside_root, dicom_window=args.dicom_window)
        print(f"prepared {summary['images']} images in {summary['shards']} shards under {summary['out']}"
              + (f"; {summary['bad']} undecodable images left out (see {Path(summary['out']) / 'bad.csv'})"
                 if summary["bad"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
