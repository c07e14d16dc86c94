"""Reading a folder made by `python -m cxrlt.prepare` (the writer is prepare.py): its plan, manifest, bad-file
list and TFRecord record format, as the input pipeline sees them. Kept apart from the writer so the pipeline
reads prepared folders without importing what writes them."""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import dataset

FORMAT_VERSION = 1


class PreparedError(dataset.LabelFileError):
    """A prepared folder that cannot be used or made as asked; the message says what to do."""


# ------------------------------------------------------------------------------------ record format

def _features():
    import tensorflow as tf

    string, int64 = tf.io.FixedLenFeature([], tf.string), tf.io.FixedLenFeature([], tf.int64)
    return {"id": string, "image": string, "height": int64, "width": int64, "orig_height": int64, "orig_width": int64}


def parse_record(serialized):
    """One TFRecord -> dict of id, image (encoded bytes), height, width, orig_height, orig_width."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, _features())


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside a prepared folder."""

    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "prepare.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def bad(self) -> Path:
        return self.root / "bad.csv"

    def marker(self, k: int) -> Path:
        return self.root / "done" / f"shard-{k:05d}.json"

    def shard_file(self, k: int, n: int) -> Path:
        return self.root / "shards" / f"shard-{k:05d}-of-{n:05d}.tfrecord"

    def image_file(self, k: int, row: int, ext: str) -> str:
        return f"images/{k:05d}/{row:07d}{ext}"


@dataclass
class Prepared:
    """A finished prepared folder, as the input pipeline sees it."""

    root: Path
    plan: dict
    manifest: pd.DataFrame
    bad: pd.DataFrame

    @functools.cached_property
    def _row_of_source(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.manifest["source"])}

    @functools.cached_property
    def _row_of_real_source(self) -> dict[str, int]:
        return {os.path.realpath(p): i for i, p in enumerate(self.manifest["source"])}

    @property
    def long_side(self) -> int:
        return int(self.plan["long_side"])

    @property
    def has_shards(self) -> bool:
        return self.plan["format"] == "both"

    def rows_for(self, paths) -> np.ndarray:
        """Manifest row of each raw path (-1 where absent); symlinked roots are matched by real path."""
        direct = self._row_of_source
        rows = np.array([direct.get(p, -1) for p in paths], dtype=np.int64)
        if (rows < 0).any():
            real = self._row_of_real_source
            for i in np.flatnonzero(rows < 0):
                rows[i] = real.get(os.path.realpath(paths[i]), -1)
        return rows

    def files_for(self, paths) -> tuple[np.ndarray, np.ndarray]:
        """(prepared file of each path, or the path itself where missing; missing mask)."""
        paths = np.asarray(paths, dtype=str)
        rows = self.rows_for(paths)
        missing = rows < 0
        files = np.array([str(self.root / f) for f in self.manifest["file"].to_numpy()[np.maximum(rows, 0)]], dtype=str)
        return np.where(missing, paths, files), missing

    def ids_for(self, paths) -> np.ndarray:
        paths = np.asarray(paths, dtype=str)
        rows = self.rows_for(paths)
        if (rows < 0).any():
            raise PreparedError(self.explain_missing(paths[rows < 0], len(paths)))
        return self.manifest["id"].to_numpy(dtype=str)[rows]

    def shard_paths(self, ids) -> list[str]:
        """The TFRecord files that hold any of these ids, in shard order, each checked by
        `check_record_lengths` before TensorFlow reads it."""
        wanted = self.manifest["shard"][self.manifest["id"].isin(set(ids))].unique()
        n = int(self.plan["n_shards"])
        paths = [str(Layout(self.root).shard_file(int(k), n)) for k in sorted(wanted)]
        for path in paths:
            check_record_lengths(path)
        return paths

    def check_size(self, size: int) -> None:
        if size > self.long_side:
            raise PreparedError(f"{self.root} was prepared at a long side of {self.long_side} px, smaller than "
                                f"input.size {size}: training would upscale. Prepare again with --long-side >= {size}, "
                                "or unset data.prepared")

    def check_dicom_window(self, window: str) -> None:
        """A folder prepared from DICOM files holds them windowed by its --dicom-window: the run must ask for the
        same input.dicom_window, or training would read other pixels than a raw-file run."""
        used = self.plan.get("dicom_window")
        if used is not None and used != window:
            raise PreparedError(f"{self.root} holds DICOM images prepared with --dicom-window {used}, but "
                                f"input.dicom_window is {window}: prepare again with --dicom-window {window} "
                                "(into another --out), or set input.dicom_window to match")

    def explain_missing(self, missing, total: int) -> str:
        bad = set(self.bad["path"]) if len(self.bad) else set()
        n_bad = sum(p in bad for p in missing)
        return (f"{len(missing)} of {total} images are not in the prepared folder {self.root} (e.g. {list(missing[:2])}): "
                f"{n_bad} were undecodable when it was prepared (listed in {self.root / 'bad.csv'}: remove them from "
                f"the label CSV), {len(missing) - n_bad} are not in the list it was prepared from "
                f"({self.plan['labels']}). Prepare this list (python -m cxrlt.prepare), or unset data.prepared")


def open_prepared(folder) -> Prepared:
    """Read a finished prepared folder (cached per manifest version: the pipeline asks several times)."""
    layout = Layout(Path(folder).expanduser().resolve())
    if not layout.plan.exists():
        raise PreparedError(f"data.prepared {folder}: not a prepared folder (no prepare.json); make one with "
                            "python -m cxrlt.prepare --labels X.csv --out DIR")
    if not layout.manifest.exists():
        raise PreparedError(f"data.prepared {folder}: no manifest.csv, so python -m cxrlt.prepare has not finished "
                            f"there (rerun it: it resumes; if it stopped on bad images, see {layout.bad} and --skip-bad)")
    stat = layout.manifest.stat()
    return _open(str(layout.root), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _open(root: str, _mtime: int, _size: int) -> Prepared:
    layout = Layout(Path(root))
    plan = json.loads(layout.plan.read_text())
    if plan.get("format_version") != FORMAT_VERSION:
        raise PreparedError(f"{root} was prepared by another cxrlt version (format {plan.get('format_version')}); "
                            "prepare it again")
    manifest = pd.read_csv(layout.manifest, dtype={"id": str, "source": str, "file": str})
    _confine(layout, manifest)
    bad = pd.read_csv(layout.bad, dtype=str) if layout.bad.exists() else pd.DataFrame(columns=["path"])
    return Prepared(Path(root), plan, manifest, bad)


def _confine(layout: Layout, manifest: pd.DataFrame) -> None:
    """Refuse a manifest whose `file` entries lead outside the prepared folder.

    prepare.py only writes relative names under images/, but a folder copied from elsewhere is input
    like any other: an entry `../../home/x/.ssh/id_rsa` or a symlinked file would be read (and, with
    a JPEG or PNG there, trained on) silently. Names are resolved against the folder's real path;
    directories are resolved once each and files only lstat'ed, so a 264,849-row manifest costs
    about one system call per row.
    """
    if "file" not in manifest.columns:
        raise PreparedError(f"{layout.manifest} has no 'file' column: prepare the folder again")
    root = os.path.realpath(layout.root)
    real_dirs: dict[str, str] = {}
    outside = []
    for i, name in enumerate(manifest["file"].to_numpy()):
        if not isinstance(name, str) or not name.strip() or os.path.isabs(name):
            outside.append((i + 2, name, "an empty or absolute name"))
            continue
        joined = os.path.normpath(os.path.join(root, name))
        folder, base = os.path.split(joined)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        target = os.path.join(real_dirs[folder], base)
        if os.path.islink(target):
            target = os.path.realpath(target)
        if os.path.commonpath([root, target]) != root:
            outside.append((i + 2, name, target))
        if len(outside) >= 3:
            break
    if outside:
        listed = "; ".join(f"line {line} file {name!r} (-> {target})" for line, name, target in outside)
        raise PreparedError(f"{layout.manifest}: {listed} lies outside the prepared folder {layout.root}. "
                            "python -m cxrlt.prepare only writes files inside it, so this manifest was edited or "
                            "the folder comes from elsewhere: prepare the folder again from your label CSV")


_RECORD_HEADER = struct.Struct("<QI")  # TFRecord: uint64 length, masked CRC-32C of it, data, masked CRC-32C


@functools.lru_cache(maxsize=4096)
def _record_lengths_ok(path: str, _mtime: int, size: int) -> str | None:
    offset, n = 0, 0
    with open(path, "rb") as fh:
        while offset < size:
            header = fh.read(_RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                return f"record {n} at byte {offset} is cut off (file size {size})"
            length, _ = _RECORD_HEADER.unpack(header)
            end = offset + _RECORD_HEADER.size + length + 4
            if end > size:
                return f"record {n} at byte {offset} claims {length:,} bytes, more than the file holds ({size:,})"
            fh.seek(end)
            offset, n = end, n + 1
    return None


def check_record_lengths(path) -> None:
    """Refuse a TFRecord file whose record length fields run past its end, before TensorFlow reads it.

    TensorFlow's reader checks a length's CRC and then allocates that many bytes: a shard from
    elsewhere with a 1 TiB length and a valid CRC kills the process (std::bad_alloc), with no
    Python exception. Walking the 12-byte record headers with seeks reads one page per record,
    cached per file version (mtime, size).
    """
    stat = os.stat(path)
    problem = _record_lengths_ok(str(path), stat.st_mtime_ns, stat.st_size)
    if problem:
        raise PreparedError(f"TFRecord shard {path}: {problem}; the shard is damaged or was not written by "
                            "python -m cxrlt.prepare: prepare the folder again")
