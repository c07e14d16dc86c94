"""Pre-flight image check: find every image a label CSV names that training cannot use, before a long run.

    python -m cxrlt.check --labels train.csv --image-root mimic-cxr-jpg/2.0.0 [--deep] [--out image_check.csv]

Default (header mode): per file, a stat, the first 64 KiB (format, size, colour mode) and the last
1 KiB (the end marker a truncated download lacks); no pixel is decoded, so 264,849 CXR-LT images
take a minute, not the ~100 CPU-minutes of decoding them. `--deep` decodes every image with the
training pipeline's own `pipeline.decode_image` (JPEGs above `warn_pixels` with a 1/8 DCT-scaled
decode and PNGs with a streaming inflate instead: a 10,000 x 10,000 image is never held whole).

Each file gets a status: `bad` (training cannot read it, or it holds no usable image: it must be
fixed or left out), `warning` (usable; the reason says what happens to it) or `ok`. The verdicts
follow what `tf.io.decode_image(channels=1)` in the pipeline actually does (tests/test_check.py
holds each rule against the decoder): it reads 8-bit and 16-bit JPEG/PNG in grey, RGB, palette
or with alpha; it refuses CMYK JPEGs, 12-bit JPEGs, BMP/GIF/WebP in grey mode and TIFF; it
fails on a truncated file. Training runs this check (data.check_images) and stops with the list,
or with --skip-bad leaves the bad files out and records them (check.screen_table).

DICOM files (the "DICM" marker, or a .dcm name) are read by pydicom (cxrlt/data/dicom.py): the header mode
reads the attributes up to the pixel data and checks that the file holds all of it; every DICOM file gets a
row in the report with its photometric interpretation, transfer syntax, size and what decoding will do
(`action`: rescale, window, MONOCHROME1 inversion), whatever its status. Nothing else from the header
(no patient, study or UID) is written.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import math
import os
import re
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.schema import MAX_IMAGE_PIXELS
from . import dicom
from .dataset import LabelFileError

log = logging.getLogger("cxrlt.check")

STATUSES = ("ok", "warning", "bad")
COLUMNS = ["path", "status", "reason", "format", "width", "height", "photometric", "transfer_syntax", "action"]
TAIL_BYTES = 1024
DEEP_SIZE = 8  # deep mode decodes with pipeline.decode_image at this output size (the decode is what is checked)


@dataclass(frozen=True)
class Limits:
    """Thresholds of the image rules (module defaults in LIMITS)."""

    min_side: int = 16                 # smaller: no usable image content (a failed export)
    max_aspect: float = 4.0            # radiographs run 0.26..2.72; beyond 4:1 a warning
    warn_pixels: int = 50_000_000      # a warning above: the pipeline decodes whole, ~5 bytes/pixel
    max_pixels: int = MAX_IMAGE_PIXELS  # bad above (2**28, 268 MP): ~1.3 GB per image in flight in tf.data;
    #                                    the pipeline's decoder refuses the same from the header (pipeline.pixel_guard)


LIMITS = Limits()


class ImageCheckError(LabelFileError):
    """Bad images stop training; the message lists them and says where the full list is.
    (A LabelFileError: the label file names images that cannot be used.)"""


def _sniff(head: bytes) -> str | None:
    if head[128:132] == b"DICM":  # first: a DICOM preamble may hold anything, a TIFF header included
        return "DICOM"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    return None


_OTHER_FORMATS = {
    "GIF": "GIF: the pipeline's grey decode does not read GIF (convert to PNG)",
    "BMP": "BMP: the pipeline's grey decode does not read BMP (convert to PNG)",
    "WEBP": "WebP: the pipeline's grey decode does not read WebP (convert to PNG)",
    "TIFF": "TIFF: tf.io.decode_image does not read TIFF (convert to PNG, 16-bit is fine)",
    "JPEG2000": "JPEG 2000: tf.io.decode_image does not read it (convert to PNG)",
}
_EXTENSIONS = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}}


@dataclass
class Finding:
    status: str = "ok"
    reasons: list | None = None
    format: str = ""
    width: int = 0
    height: int = 0
    photometric: str = ""      # DICOM only: the pixel encoding and what decoding does to it
    transfer_syntax: str = ""
    action: str = ""

    def add(self, status: str, reason: str) -> "Finding":
        self.reasons = [*(self.reasons or []), reason]
        if STATUSES.index(status) > STATUSES.index(self.status):
            self.status = status
        return self

    def row(self, path: str) -> dict:
        return {"path": path, "status": self.status, "reason": "; ".join(self.reasons or []), "format": self.format,
                "width": self.width, "height": self.height, "photometric": self.photometric,
                "transfer_syntax": self.transfer_syntax, "action": self.action}


def inspect_header(path: str, limits: Limits = LIMITS, dicom_window: str = "stored") -> Finding:
    """Everything that can be told without decoding pixels (`dicom_window`: what a DICOM's `action` says)."""
    found = Finding()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return found.add("bad", "missing: no such file")
    except OSError as err:
        return found.add("bad", f"cannot be read ({err.strerror})")
    if not os.path.isfile(path):
        return found.add("bad", "not a regular file (a folder?)")
    if st.st_size == 0:
        return found.add("bad", "empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            kind = _sniff(fh.read(132))
            found.format = kind or ""
            if kind == "DICOM" or (kind is None and os.path.splitext(path)[1].lower() in dicom.SUFFIXES):
                return _inspect_dicom(path, found, limits, dicom_window)
            if kind is None:
                return found.add("bad", "not an image: neither JPEG nor PNG (unknown content)")
            if kind in _OTHER_FORMATS:
                return found.add("bad", _OTHER_FORMATS[kind])
            fh.seek(max(0, st.st_size - TAIL_BYTES))
            tail = fh.read(TAIL_BYTES)
            fh.seek(0)
            try:
                mode, (found.width, found.height), bits, transparent = _header_fields(kind, fh)
            except Exception as err:  # noqa: BLE001 - PIL raises SyntaxError/OSError/struct errors on broken headers
                precision = re.search(r"(\d+)-bit", str(err)) if kind == "JPEG" else None
                if precision:  # PIL refuses what TensorFlow refuses too: name it as such
                    return found.add("bad", f"{precision.group(1)}-bit JPEG: tf.io.decode_jpeg reads 8-bit JPEGs "
                                            "only (convert to a 16-bit PNG)")
                return found.add("bad", f"corrupt {kind} header ({type(err).__name__}: {str(err)[:120]})")
    except OSError as err:
        return found.add("bad", f"cannot be read ({err.strerror})")
    if kind == "JPEG" and b"\xff\xd9" not in tail:
        found.add("bad", "truncated: the JPEG has no end-of-image marker (re-copy it)")
    if kind == "PNG" and b"IEND" not in tail:
        found.add("bad", "truncated: the PNG has no IEND chunk (re-copy it)")
    if kind == "JPEG" and mode == "CMYK":
        found.add("bad", "CMYK JPEG: the pipeline's grey decode cannot convert it (re-save it as grey or RGB)")
    if kind == "JPEG" and bits != 8:
        found.add("bad", f"{bits}-bit JPEG: tf.io.decode_jpeg reads 8-bit JPEGs only (convert to a 16-bit PNG)")
    _size_rules(found, limits)
    if mode in ("RGBA", "LA", "PA") or transparent:
        found.add("warning", f"{mode} with transparency: the grey decode ignores the alpha channel "
                             "(harmless when the image is opaque, as radiographs are)")
    ext = os.path.splitext(path)[1].lower()
    if ext and ext not in _EXTENSIONS[kind] and ext in {e for v in _EXTENSIONS.values() for e in v}:
        found.add("warning", f"{kind} content in a {ext} file: decoded by its content (rename it)")
    return found


def _inspect_dicom(path: str, found: Finding, limits: Limits, window: str) -> Finding:
    """A DICOM file's header verdict (dicom.inspect), with the size rules every image gets."""
    info = dicom.inspect(path, window)
    found.format = "DICOM"
    found.width, found.height = info.width, info.height
    found.photometric, found.transfer_syntax, found.action = info.photometric, info.transfer_syntax, info.action
    if info.problem:
        return found.add("bad", info.problem)
    if info.warning:
        found.add("warning", info.warning)
    _size_rules(found, limits)
    return found


def _header_fields(kind: str, fh) -> tuple[str, tuple[int, int], int, bool]:
    """(PIL mode, (width, height), bits, has transparency) from the header alone (PIL reads no pixels
    until asked). PIL's plugin classes are used directly: Image.open adds a decompression-bomb check
    that refuses exactly the huge images this check is meant to report by size."""
    from PIL import JpegImagePlugin, PngImagePlugin

    plugin = JpegImagePlugin.JpegImageFile if kind == "JPEG" else PngImagePlugin.PngImageFile
    image = plugin(fh)
    bits = getattr(image, "bits", 8) if kind == "JPEG" else (16 if image.mode.startswith("I") else 8)
    return image.mode, image.size, bits, "transparency" in image.info


def _size_rules(found: Finding, limits: Limits) -> None:
    w, h = found.width, found.height
    if min(w, h) < limits.min_side:
        found.add("bad", f"{w} x {h} px: too small to hold an image (under {limits.min_side} px a side)")
        return
    pixels = w * h
    if pixels > limits.max_pixels:
        found.add("bad", f"{w} x {h} px ({pixels / 1e6:.0f} MP): decoding it whole would take "
                         f"~{pixels * 5 / 2 ** 30:.1f} GiB per image; downscale it first")
    elif pixels > limits.warn_pixels:
        found.add("warning", f"{w} x {h} px ({pixels / 1e6:.0f} MP): decoded whole by the pipeline "
                             f"(~{pixels * 5 / 2 ** 20:.0f} MiB per image in flight); pre-resizing saves time")
    aspect = max(w, h) / min(w, h)
    if aspect > limits.max_aspect:
        found.add("warning", f"aspect ratio {aspect:.1f}:1 ({w} x {h}): stretched {aspect:.0f}x to a square "
                             "(input.resize: letterbox pads it instead)")


# --- deep mode ------------------------------------------------------------------------------------

_decode_fns: dict = {}


def _pipeline_decode(path: str, dicom_window: str = "stored"):
    """pipeline.decode_image (with its DICOM step), traced once per window and shared by the worker threads."""
    import tensorflow as tf

    if dicom_window not in _decode_fns:
        from .pipeline import decode_image

        _decode_fns[dicom_window] = tf.function(lambda p: decode_image(p, DEEP_SIZE, dicom=dicom_window),
                                                input_signature=[tf.TensorSpec([], tf.string)])
    return _decode_fns[dicom_window](tf.constant(path)).numpy()


def inspect_deep(path: str, limits: Limits = LIMITS, dicom_window: str = "stored") -> Finding:
    """Header rules, then a real decode of what the header did not already condemn."""
    found = inspect_header(path, limits, dicom_window)
    if found.status == "bad":
        return found
    try:
        if found.width * found.height > limits.warn_pixels and found.format != "DICOM":
            _verify_huge(path, found.format)
            return found
        image = _pipeline_decode(path, dicom_window)
    except Exception as err:  # noqa: BLE001 - TF raises InvalidArgumentError & co. with the decoder's words
        return found.add("bad", f"cannot be decoded ({_decoder_words(err)})")
    if float(image.max()) - float(image.min()) < 1.0:  # one grey level (resampling may add float dust)
        found.add("warning", f"uniform image: every pixel is {float(image.min()):.0f} after decoding")
    return found


def _decoder_words(err: Exception) -> str:
    """The decoder's own sentence from a TensorFlow error, without the graph-node decoration."""
    text = (getattr(err, "message", None) or str(err)).strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text.splitlines()[0] if text else type(err).__name__)
    text = re.sub(r"^DicomError: \S+: ", "", text)  # the report's row names the file already
    return text[:240] or type(err).__name__


def _verify_huge(path: str, kind: str) -> None:
    """Check a huge image's whole pixel stream without holding the image."""
    if kind == "JPEG":
        import tensorflow as tf

        data = tf.io.read_file(path)
        tf.io.decode_jpeg(data, channels=1, ratio=8)  # every entropy-coded block is read, 1/64 of the pixels kept
        return
    _verify_png_stream(path)


def _verify_png_stream(path: str) -> None:
    """Every chunk's CRC, and the image data inflated in 1 MiB pieces to its full expected length."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            raise ValueError("not a PNG")
        inflater, produced, expected, seen_end = zlib.decompressobj(), 0, None, False
        while not seen_end:
            header = fh.read(8)
            if len(header) < 8:
                raise ValueError("PNG data ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", header)
            data = fh.read(length)
            crc = fh.read(4)
            if len(data) < length or len(crc) < 4 or zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
                raise ValueError(f"PNG chunk {kind.decode('latin-1')!r} is cut short or corrupt (CRC)")
            if kind == b"IHDR":
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data)
                channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
                expected = None if interlace else height * (1 + math.ceil(width * channels * depth / 8))
            elif kind == b"IDAT":
                chunk = data
                while chunk:
                    produced += len(inflater.decompress(chunk, 1 << 20))
                    chunk = inflater.unconsumed_tail
            seen_end = kind == b"IEND"
        produced += len(inflater.flush())
        if not inflater.eof or (expected is not None and produced != expected):
            raise ValueError(f"PNG image data holds {produced} bytes, the header promises {expected}")


# --- scanning many files --------------------------------------------------------------------------

def scan(paths, deep: bool = False, *, limits: Limits = LIMITS, workers: int | None = None,
         progress: str | None = None, dicom_window: str = "stored") -> pd.DataFrame:
    """One row per path, in the given order: path, status (ok|warning|bad), reason, format, width, height,
    and for DICOM files photometric, transfer_syntax and action (`dicom_window`: input.dicom_window).

    Threads, not processes: the work is file reads (header mode) or TensorFlow/zlib calls that
    release the GIL (deep mode). `progress` labels a progress bar (None: silent).
    """
    paths = [str(p) for p in paths]
    inspect = inspect_deep if deep else inspect_header
    workers = workers or (os.cpu_count() or 2) * (1 if deep else 8)
    bar = None
    if progress:
        from ..utils.progress import Progress

        bar = Progress(len(paths), progress)
    rows = []
    with futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), 1024):  # in chunks: 264,849 pending futures would cost ~0.3 GB
            chunk = paths[start:start + 1024]
            rows.extend(found.row(p) for p, found in
                        zip(chunk, pool.map(lambda p: inspect(p, limits, dicom_window), chunk)))
            if bar is not None:
                bar.add(len(chunk))
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(report: pd.DataFrame) -> str:
    counts = report["status"].value_counts()
    return (f"{len(report)} images: {counts.get('ok', 0)} ok, {counts.get('warning', 0)} with warnings, "
            f"{counts.get('bad', 0)} bad")


def reported_rows(report: pd.DataFrame) -> pd.DataFrame:
    """The rows a report file keeps: every bad or warning image, and every DICOM file (what decoding does to it)."""
    return report[(report["status"] != "ok") | (report["format"] == "DICOM")]


def dicom_summary(report: pd.DataFrame, limit: int = 10) -> str:
    """DICOM files counted by (photometric interpretation, transfer syntax, action): what the check found and
    what decoding will do, one line per kind."""
    rows = report[(report["format"] == "DICOM") & (report["status"] != "bad")]
    if rows.empty:
        return "  (none usable)"
    kinds = rows.groupby(["photometric", "transfer_syntax", "action"], dropna=False).size().sort_values(ascending=False)
    lines = [f"  {n} x {p or '?'}, {t or '?'}: {a or 'as stored'}" for (p, t, a), n in kinds.head(limit).items()]
    if len(kinds) > limit:
        lines.append(f"  ... and {len(kinds) - limit} more kinds")
    return "\n".join(lines)


def listing(report: pd.DataFrame, status: str = "bad", limit: int = 10) -> str:
    rows = report[report["status"] == status]
    lines = [f"  {r.path}: {r.reason}" for r in rows.head(limit).itertuples()]
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more")
    return "\n".join(lines)


# --- training integration ------------------------------------------------------------------------

def upscaling_note(report: pd.DataFrame, size: int, what: str = "training") -> str | None:
    """A sentence when the model input is larger than most images' long side: upscaled pixels add no
    detail and cost (size / side)^2 the compute (a 128 px demo trained at --size 767 did so silently)."""
    sides = report.loc[report["status"] != "bad", ["width", "height"]].max(axis=1).dropna()
    if sides.empty:
        return None
    share = float((sides < size).mean())
    if share <= 0.5:
        return None
    median = int(sides.median())
    return (f"input.size {size} is larger than the long side of {share:.0%} of the {what} images (median {median} px): "
            f"they are upscaled, which adds no detail and costs about {(size / median) ** 2:.1f}x the compute of "
            f"--size {median}")


def screen_table(table, *, deep: bool = False, skip_bad: bool = False, record_dir: str | os.PathLike | None = None,
                 limits: Limits = LIMITS, what: str = "training", can_skip: bool = True, input_size: int | None = None,
                 dicom_window: str = "stored"):
    """Scan a LabelTable's images; return the table without bad images, or stop.

    Every problem is recorded in `record_dir`: image_check.csv (all bad and warning rows, and every DICOM
    file with what its decoding does) and, with skip_bad, excluded_images.csv (the images left out).
    Without skip_bad any bad image raises ImageCheckError listing them: nothing is dropped silently.
    can_skip=False (a test list: the submission needs every image) always raises on a bad image.
    """
    skip_bad = skip_bad and can_skip
    from ..utils import atomic

    report = scan(table.paths, deep, limits=limits, progress=f"{what} image check", dicom_window=dicom_window)
    report.insert(0, "id", table.ids)
    problems = reported_rows(report)
    bad = report["status"].to_numpy() == "bad"
    log.info("%s image check (%s): %s", what, "deep" if deep else "header", summary(report))
    if (report["format"] == "DICOM").any():
        log.info("%s DICOM files:\n%s", what, dicom_summary(report))
    note = upscaling_note(report, input_size, what) if input_size else None
    if note:
        log.warning(note)
    record = Path(record_dir) if record_dir is not None else None
    if record is not None:
        atomic.write_csv(record / "image_check.csv", problems)
    if (report["status"] == "warning").any():
        log.warning("%d %s images with warnings (usable), e.g.\n%s", int((report["status"] == "warning").sum()),
                    what, listing(report, "warning", 5))
    if not bad.any():
        if record is not None and skip_bad:
            atomic.write_csv(record / "excluded_images.csv", report[bad])
        return table
    where = f"; the full list is in {record / 'image_check.csv'}" if record is not None else ""
    if not skip_bad:
        fix = ("Fix or re-copy them, or pass --skip-bad (data.skip_bad) to train without them (they are then "
               "listed in excluded_images.csv in the run directory)." if can_skip else
               "Fix or re-copy them: a submission needs a prediction for every listed image.")
        raise ImageCheckError(f"{int(bad.sum())} of {len(report)} {what} images cannot be used{where}:\n"
                              f"{listing(report)}\n{fix}")
    if record is not None:
        atomic.write_csv(record / "excluded_images.csv", report[bad])
    log.warning("left out %d bad %s images (--skip-bad)%s:\n%s", int(bad.sum()), what,
                f", listed in {record / 'excluded_images.csv'}" if record is not None else "", listing(report))
    if bad.all():
        raise ImageCheckError(f"every one of the {len(report)} {what} images is bad{where}:\n{listing(report)}")
    return table.subset(np.flatnonzero(~bad))


# --- command line ---------------------------------------------------------------------------------

def benchmark(paths, workers: int | None = None) -> str:
    """Header vs deep check on the same files in one run (the deep pass is traced once beforehand).

    The files are read once before timing, so both passes see a warm page cache: the ratio is the
    cost of decoding, not of the disk."""
    scan(paths[:1], deep=True)  # trace the decoder
    scan(paths)  # warm the page cache for both passes
    rates = {}
    for deep in (False, True):
        started = time.perf_counter()
        scan(paths, deep, workers=workers)
        rates["deep" if deep else "header"] = len(paths) / (time.perf_counter() - started)
    return (f"{len(paths)} images, {os.cpu_count()} CPUs: header {rates['header']:.0f} images/s, deep "
            f"{rates['deep']:.1f} images/s; header is {rates['header'] / rates['deep']:.0f}x faster")


def main(argv=None) -> int:
    from ..utils import cli
    from . import dataset

    parser = cli.parser("python -m cxrlt.check", __doc__)
    parser.add_argument("--labels", required=True, type=Path, help="label CSV or image list")
    parser.add_argument("--image-root", type=Path, help="folder the CSV's paths are relative to (default: its folder)")
    from .. import config

    data_defaults = config.defaults()["data"]  # the same reading of the CSV as `train`'s, so check passes what train accepts
    parser.add_argument("--classes", default=data_defaults["classes"],
                        help="class schema/list, as for training (data.classes)")
    parser.add_argument("--edition", default=data_defaults["edition"], choices=config.schema.EDITION_NAMES,
                        help="the CXR-LT edition the CSV is read as, as for training (data.edition)")
    parser.add_argument("--uncertain", default="error", choices=dataset.UNCERTAIN_POLICIES,
                        help="how -1/blank labels are read, as for training")
    parser.add_argument("--allow-outside-root", action="store_true", help="accept paths outside the image root")
    parser.add_argument("--deep", action="store_true", help="decode every image with the training decoder")
    parser.add_argument("--dicom-window", default="stored", choices=dicom.WINDOWS,
                        help="input.dicom_window for DICOM files: what the report's action column says (default stored)")
    parser.add_argument("--workers", type=int, help="threads (default: 8 per core, 1 per core with --deep)")
    parser.add_argument("--out", type=Path, default=Path("image_check.csv"),
                        help="CSV of every bad or warning image (default: image_check.csv)")
    parser.add_argument("--bench", action="store_true",
                        help="time the header and the deep check on the same files and print images/s (writes nothing)")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        table = dataset.read_labels(args.labels, image_root=args.image_root, classes=args.classes,
                                    require_labels=False, uncertain=args.uncertain, edition=args.edition,
                                    allow_outside_root=args.allow_outside_root)
        if args.bench:
            print(benchmark(table.paths, workers=args.workers))
            return 0
        import tensorflow  # noqa: F401 - the deep check decodes with TensorFlow: its import is not part of the timing

        started = time.perf_counter()
        report = scan(table.paths, args.deep, workers=args.workers, progress="image check",
                      dicom_window=args.dicom_window)
        seconds = time.perf_counter() - started
        report.insert(0, "id", table.ids)
        from ..utils import atomic

        atomic.write_csv(args.out, reported_rows(report))
        has_dicom = (report["format"] == "DICOM").any()
        print(f"{summary(report)} ({'deep' if args.deep else 'header'} check, {seconds:.1f} s, "
              f"{len(report) / max(seconds, 1e-9):.0f} images/s); problems"
              f"{' and every DICOM file' if has_dicom else ''} listed in {args.out}")
        if has_dicom:
            print(f"DICOM (photometric interpretation, transfer syntax: what decoding does):\n{dicom_summary(report)}")
        for status in ("bad", "warning"):
            if (report["status"] == status).any():
                print(f"{status}:\n{listing(report, status, 20)}")
    return 1 if (report["status"] == "bad").any() else 0


if __name__ == "__main__":
    sys.exit(main())
