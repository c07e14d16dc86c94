"""Study stacks and predictions of a fused run (python -m cxrlt.fuse; the model is cxrlt.model.fusion).

A fused run's fold model is a fusion head over FROZEN feature maps, not an image model, so predicting an
image list takes two steps per fold k: the SOURCE run's fold-k model (its backbone, frozen) turns every image
into a feature map, written once to a float16 .npy on disk (atomically, read back memory-mapped, so memory
stays flat in the number of images); then the images are grouped into study stacks and the fused fold-k head
scores each stack, and every image gets its study's scores. `cxrlt.predict.inference.predict_run` sends a
fused run here, so `python -m cxrlt.predict` and `python -m cxrlt.ensemble` take a fused run like any run
(folds averaged, TTA views averaged: each view flips every image of the study, then fuses; per-fold
results cached under <run>/predictions/ as for any run).

Study stacks: a study's images are sorted by view group (PA, AP, lateral, other) then id; a study with more
than `max_images` images is dealt round-robin into ceil(n / max_images) chunks of near-equal size, each
chunk is scored, and the study's score is the mean over its chunks. Images without a study id are their own
study (cxrlt.data.dataset). The view embedding's groups are PA, AP, LATERAL_VIEWS and every other view.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..data import pipeline
from ..model import fusion as fusion_model, models
from ..runtime import runs
from ..utils import atomic
from ..utils.hashing import file_sha256
from ..utils.progress import Progress
from .step import TTA

log = logging.getLogger(__name__)

# View group ids of the fusion model's view embedding (cxrlt.model.fusion.NUM_VIEWS of them).
LATERAL_VIEWS = frozenset({"LATERAL", "LL", "RL", "XTABLE LATERAL"})  # upper-cased MIMIC ViewPosition values
VIEW_GROUPS = {"PA": 0, "AP": 1, **dict.fromkeys(LATERAL_VIEWS, 2)}
OTHER_VIEW = 3


def view_ids(views) -> np.ndarray:
    """ViewPosition names -> view group ids (0 PA, 1 AP, 2 lateral, 3 anything else, unknown or empty)."""
    return np.array([VIEW_GROUPS.get(str(v).strip().upper(), OTHER_VIEW) for v in views], dtype=np.int32)


@dataclass(frozen=True)
class Stacks:
    """The study stacks of an image list: `slots` [M, S] row numbers (-1 = empty slot) of M stacks, `views`
    [M, S] their view ids, `owner` [M] each stack's study number, `study_of` [N] each image's study number."""

    slots: np.ndarray
    views: np.ndarray
    owner: np.ndarray
    study_of: np.ndarray

    @property
    def n_studies(self) -> int:
        return int(self.study_of.max()) + 1 if len(self.study_of) else 0

    def rows(self, rows: np.ndarray) -> "Stacks":
        """The same stacks with slot numbers mapped through `rows` (a subset's positions -> rows of a bigger
        feature file)."""
        rows = np.asarray(rows)
        return Stacks(np.where(self.slots >= 0, rows[np.maximum(self.slots, 0)], -1), self.views, self.owner,
                      self.study_of)


def study_stacks(studies, views, ids, max_images: int) -> Stacks:
    """Group images into stacks of at most `max_images` per study (module docstring)."""
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    n = len(ids)
    vids = view_ids(views)
    if n == 0:
        empty = np.zeros((0, max_images), np.int64)
        return Stacks(empty, empty.astype(np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    _, study_of = np.unique(np.asarray(studies).astype(str), return_inverse=True)
    order = np.lexsort((np.asarray(ids).astype(str), vids, study_of))  # by study, then view group, then id
    grouped = study_of[order]
    starts = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    chunks = -(-sizes // max_images)  # per study
    first_chunk = np.r_[0, np.cumsum(chunks)[:-1]]
    per_image_chunks = np.repeat(chunks, sizes)
    chunk = np.repeat(first_chunk, sizes) + rank % per_image_chunks
    position = rank // per_image_chunks
    slots = np.full((int(chunks.sum()), max_images), -1, np.int64)
    slots[chunk, position] = order
    owner = np.repeat(np.arange(len(starts)), chunks)
    views = np.where(slots >= 0, vids[np.maximum(slots, 0)], 0).astype(np.int32)
    return Stacks(slots, views, owner, study_of.astype(np.int64))


def batch_of(features: np.ndarray, stacks: Stacks, pick: np.ndarray):
    """The model inputs (features [B, S, h, w, C] float32, valid [B, S], views [B, S]) of the stacks `pick`;
    empty slots hold zeros (the model replaces and masks them)."""
    slots = stacks.slots[pick]
    valid = slots >= 0
    x = np.zeros((*slots.shape, *features.shape[1:]), np.float32)
    rows = slots[valid]
    order = np.argsort(rows, kind="stable")  # memory-mapped reads in file order
    taken = np.empty((len(rows), *features.shape[1:]), np.float32)
    taken[order] = features[rows[order]]
    x[valid] = taken
    return x, valid.astype(np.float32), stacks.views[pick]


def predict_stacks(model, features: np.ndarray, stacks: Stacks, batch_size: int) -> np.ndarray:
    """[M, C] probabilities of every stack (the fusion model, inference mode; Keras traces its predict
    function once per model, not once per call: this runs every epoch of a fold's fit)."""
    out = np.zeros((len(stacks.slots), int(model.outputs[0].shape[-1])), np.float32)
    for start in range(0, len(out), batch_size):
        pick = np.arange(start, min(start + batch_size, len(out)))
        x, valid, views = batch_of(features, stacks, pick)
        out[pick] = np.asarray(model.predict_on_batch([x, valid, views]), np.float32)
    return out


def to_images(stack_probs: np.ndarray, stacks: Stacks) -> np.ndarray:
    """[N, C]: each image gets its study's score (the mean over the study's stacks)."""
    total = np.zeros((stacks.n_studies, stack_probs.shape[1]), np.float64)
    np.add.at(total, stacks.owner, stack_probs)
    count = np.bincount(stacks.owner, minlength=stacks.n_studies)[:, None]
    return (total / np.maximum(count, 1))[stacks.study_of].astype(np.float32)


def compute_features(extractor, paths, cfg: dict, path: Path, *, view: str = "identity", batch_size: int = 16,
                     label: str = "features") -> np.ndarray:
    """Feature maps of `paths` (the `view` TTA flip applied first) into the float16 .npy `path`, written
    atomically; returned memory-mapped read-only. An existing `path` is reused (the name carries the key)."""
    path = Path(path)
    if path.exists():
        return np.load(path, mmap_mode="r")
    flip, shape = TTA[view], tuple(int(v) for v in extractor.outputs[0].shape[1:])

    @tf.function(reduce_retracing=True)
    def step(images):
        return tf.cast(extractor(flip(images), training=False), tf.float32)

    n = len(paths)
    with Progress(n, label) as bar, atomic.atomic_path(path, suffix=".tmp.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, *shape))
        filled = 0
        for images in pipeline.eval_dataset(np.asarray(paths), cfg, batch_size=batch_size):
            feats = step(images).numpy().astype(np.float16)
            if not np.isfinite(feats).all():
                raise runs.RunError(f"{label}: feature values beyond float16's range (|x| > 65504) in images "
                                    f"{filled}-{filled + len(feats) - 1}; the backbone's features cannot be cached")
            out[filled:filled + len(feats)] = feats
            filled += len(feats)
            bar.add(len(feats))
        if filled != n:
            raise RuntimeError(f"{label}: the input pipeline yielded {filled} images for a list of {n}")
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def info(run: runs.Run) -> dict:
    """fusion.json of a fused run: its source run and the feature map it fuses."""
    if not run.fusion_json.is_file():
        raise runs.RunError(f"{run.root} is not a fused run (no fusion.json); make one with python -m cxrlt.fuse")
    return json.loads(run.fusion_json.read_text())


def source_of(run: runs.Run) -> runs.Run:
    source = runs.Run(info(run)["source"])
    if not source.config_path.exists():
        raise runs.RunError(f"{run.root} fuses the features of {source.root}, which is gone: a fused run predicts "
                            "through its source run's fold models; restore the source run beside it")
    return source


def source_extractor(run: runs.Run, k: int, *, sha256: str | None = None):
    """The source run's fold-k feature extractor (frozen), refused if that model is not the one fold k of the
    fused run was trained on (the sha256 in the fold's done.json, or `sha256`)."""
    source = source_of(run)
    path = source.model_path(k)
    if not path.is_file():
        raise runs.RunError(f"{path} is missing: fold {k} of the fused run {run.root} needs its source fold model")
    expected = sha256 or json.loads(run.done_path(k).read_text()).get("source_model_sha256")
    actual = file_sha256(path)
    if expected != actual:
        raise runs.RunError(f"{path} is not the model fold {k} of {run.root} was trained on (sha256 {actual[:12]} vs "
                            f"{str(expected)[:12]}): the source run was retrained or changed. Refit the fusion: "
                            f"python -m cxrlt.fuse --run {source.root} --name {run.root.name} --force")
    model = models.load(path, num_classes=len(run.classes()))
    return fusion_model.feature_model(model, pool=run.config()["fuse"]["feature_pool"])


def _cache_key(run: runs.Run, table, tta, folds) -> str:
    h = hashlib.sha256()
    h.update("\n".join(table.ids).encode())
    h.update("\n".join(table.paths).encode())
    h.update("\n".join(table.studies.astype(str)).encode())
    h.update("\n".join(table.views.astype(str)).encode())
    h.update(repr(list(tta)).encode())
    cfg = run.config()
    h.update(repr((cfg["data"].get("prepared"), cfg["input"], cfg["fuse"])).encode())
    for k in folds:
        stat = run.model_path(k).stat()
        done = json.loads(run.done_path(k).read_text())
        h.update(f"{k}:{stat.st_size}:{stat.st_mtime_ns}:{done.get('source_model_sha256')}".encode())
    return f"{table.source.stem}-fused-{h.hexdigest()[:12]}"


def predict_run(run: runs.Run, table, *, tta=None, batch_size: int | None = None) -> np.ndarray:
    """A fused run's folds averaged (equal weight), each TTA-averaged: [N, C] probabilities, one row per image,
    equal within a study. Per-fold results are cached like cxrlt.predict.inference's; the feature files are
    temporary (deleted once the fold's scores are written)."""
    cfg = run.config()
    tta = tuple(tta or cfg["predict"]["tta"])
    folds = run.finished_folds()
    if not folds:
        raise runs.RunError(f"{run.root}: no finished fold to predict with; run python -m cxrlt.fuse first")
    classes = run.classes()
    stacks = study_stacks(table.studies, table.views, table.ids, cfg["fuse"]["max_images"])
    cache = run.root / "predictions" / _cache_key(run, table, tta, folds)

    def predict_fold(k):
        extractor = source_extractor(run, k)
        head = models.load(run.model_path(k), num_classes=len(classes))
        probs = np.zeros((len(table), len(classes)), np.float64)
        for view in tta:
            feature_file = cache / f"fold{k}-{view}.features.npy"
            try:
                feats = compute_features(extractor, table.paths, cfg, feature_file, view=view,
                                         batch_size=batch_size or cfg["predict"]["batch_size"],
                                         label=f"{run.root.name} fold {k} {view} features")
                probs += to_images(predict_stacks(head, feats, stacks, cfg["fuse"]["batch_size"]), stacks)
                del feats
            finally:
                feature_file.unlink(missing_ok=True)
        return (probs / len(tta)).astype(np.float32)

    return runs.cached_fold_mean(cache, folds, table, classes, predict_fold)
