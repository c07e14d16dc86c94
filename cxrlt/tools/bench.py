"""Throughput and memory benchmarks that print numbers (ratios against a baseline measured in the same run).

    python -m cxrlt.bench pipeline [--sizes 224 512 768] [--images ../shared/data/cxr_fullres/images.csv] [--json out.json]
    python -m cxrlt.bench predict  [--backbones efficientnetv2-b0 efficientnetv2-s] [--size 224] [--json out.json]
    python -m cxrlt.bench memory   [--n 48 --factor 4] [--json out.json]
    python -m cxrlt.bench ops      [--sizes 768] [--json out.json]
    python -m cxrlt.bench step     [--backbones efficientnetv2-b0] [--size 224] [--json out.json]   (cxrlt/bench_step.py)
    python -m cxrlt.bench loop     [--ks 1 16] [--size 32] [--backbone NAME] [--json out.json]  (k steps per call)

pipeline: images/s of the training input pipeline on full-resolution radiographs, for
decode+resize only (the ceiling any variant can reach), the naive per-image Python/PIL generator a
user might write, the decoding as it was before DCT-scaled JPEG decoding, seed 002's basic
augmentations, each batch mixer, seed 002's full recipe (basic + one mixer per batch), seed 000's
albumentations strong pipeline (outside the TF graph), and the same read from pre-resized data
(`cxrlt.prepare`: files and TFRecord shards), plus the one-time cost of preparing.
predict: inference images/s through predict.predict_images with and without flip TTA.
memory: peak RSS of prediction and of the training input pipeline on N and factor x N images,
each in a fresh subprocess (flat = streaming, nothing loaded per image).
ops: CPU milliseconds per image of each step (decode, resize, channels, augs, mixers) on one
thread: where the pipeline's time goes, to read the ratios above.

The machine may be shared: variants are measured in interleaved rounds (median over rounds), and
next to wall-clock images/s each entry has images per CPU-second of this process, which moves much
less when other processes take cores. Ratios use the wall-clock figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..utils import atomic
from ..data import augment, mix, pipeline
from . import bench_step
from .. import config

DEFAULT_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr_fullres" / "images.csv"
CXRLT_TRAIN_IMAGES = 264_849  # CXR-LT 2023 train.csv: the epoch the per-epoch figures are scaled to
CEILING = "decode+resize (ceiling)"
SEED002 = "seed 002 full (basic + mosaic p=0.5)"
SHARDS = "prepared shards: decode+resize"
SHARDS_SEED002 = "prepared shards: seed 002 full"


# --------------------------------------------------------------------------------------- measuring

def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(make, images: int, batch: int) -> tuple[float, float]:
    """(images/s wall, images per CPU-second) over `images` images, after one warm-up batch
    (tracing, thread start). A fresh iterator per call, so no buffer filled earlier is counted."""
    it = iter(make())
    next(it)
    steps = max(1, images // batch)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(steps):
        next(it)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    del it
    return steps * batch / wall, steps * batch / max(cpu, 1e-9)


def measure_round_robin(variants: dict, images: int, batch: int, rounds: int) -> dict:
    """Each variant measured `rounds` times on images/rounds images, the variants interleaved, so
    a change in the machine's load hits all of them alike; the median round is reported."""
    per_round = max(batch, images // rounds)
    walls = {name: [] for name in variants}
    cpus = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            wall, cpu = _measure(make, per_round, batch)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {name: {"images_per_s": round(float(np.median(walls[name])), 2),
                   "images_per_cpu_s": round(float(np.median(cpus[name])), 2),
                   "rounds_images_per_s": [round(v, 2) for v in walls[name]]} for name in variants}


# ------------------------------------------------------------------------------------------ baselines

def _naive(paths, size: int, batch: int) -> tf.data.Dataset:
    """What many first scripts do: PIL in a Python generator, one image at a time."""
    from PIL import Image

    def gen():
        i = 0
        while True:
            image = Image.open(paths[i % len(paths)]).convert("L").resize((size, size), Image.BILINEAR)
            x = np.repeat(np.asarray(image, np.float32)[..., None], 3, -1)
            yield x, np.zeros(1, np.float32)
            i += 1

    spec = (tf.TensorSpec((size, size, 3), tf.float32), tf.TensorSpec((1,), tf.float32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec).batch(batch).prefetch(2)


def _before_dct(paths, size: int, batch: int) -> tf.data.Dataset:
    """The decode_image of the first version: whole-image decode, antialiased resize, 3 channels per
    image; otherwise the same stream as the ceiling (shuffled paths, parallel map, batch)."""
    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=1, dtype=tf.float32, expand_animations=False)
        image = tf.image.resize(tf.ensure_shape(image, [None, None, 1]), (size, size), antialias=True)
        return tf.tile(tf.clip_by_value(image * 255.0, 0.0, 255.0), (1, 1, 3))

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, str)).shuffle(len(paths), seed=0).repeat()
    return ds.map(decode, num_parallel_calls=pipeline.AUTOTUNE).batch(batch, drop_remainder=True).prefetch(
        pipeline.AUTOTUNE)


# ------------------------------------------------------------------------------------------- pipeline

def prepare_for_bench(images_csv: Path, out: Path, long_side: int, max_images: int | None = None) -> dict:
    """Prepare the benchmark images once; images/s of cxrlt.prepare itself (the one-time cost)."""
    import pandas as pd

    from ..data import prepare

    if max_images:  # a shortened copy of the list, its paths made absolute
        frame = pd.read_csv(images_csv, dtype=str).head(max_images)
        frame["path"] = [os.path.normpath(os.path.abspath(images_csv.parent / p)) for p in frame["path"]]
        images_csv = out.parent / "images.csv"
        frame.to_csv(images_csv, index=False)
    started, cpu = time.perf_counter(), _cpu_seconds()
    summary = prepare.prepare(images_csv, out, long_side=long_side, shard_size=16, workers=os.cpu_count())
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    rate = summary["images"] / wall
    return {"dir": str(out), "long_side": long_side, "images": summary["images"], "seconds": round(wall, 1),
            "images_per_s": round(rate, 2), "images_per_cpu_s": round(summary["images"] / max(cpu, 1e-9), 2),
            "cxrlt_train_hours": round(CXRLT_TRAIN_IMAGES / rate / 3600, 2)}


def pipeline_variants(paths: np.ndarray, size: int, batch: int, prepared: str | None) -> dict:
    labels = np.zeros((len(paths), 26), np.float32)
    labels[np.arange(len(paths)), np.arange(len(paths)) % 26] = 1
    cfg = config.load(overrides={"input": {"size": size}})
    basic = augment.make_basic_augment(cfg["augment"])
    seed002 = mix.BatchMixer.from_config(cfg["mix"])

    def train(cfg=cfg, **kw):
        return pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=batch, **kw)

    variants = {
        CEILING: lambda: train(),
        "naive PIL generator": lambda: _naive(paths, size, batch),
        "before DCT scaling (whole decode, antialias)": lambda: _before_dct(paths, size, batch),
        "+ basic augs": lambda: train(augment_fn=basic),
        "+ basic + Mosaic": lambda: train(augment_fn=basic, mixer=mix.BatchMixer(mosaic=1.0)),
        "+ basic + MixUp": lambda: train(augment_fn=basic, mixer=mix.BatchMixer(mixup=1.0)),
        "+ basic + CutMix": lambda: train(augment_fn=basic, mixer=mix.BatchMixer(cutmix=1.0)),
        SEED002: lambda: train(augment_fn=basic, mixer=seed002),
        "albumentations strong (seed 000)": lambda: train(
            strategy_fn=augment.make_strategy_augment("strong-strong"), minority=np.ones(len(paths), bool)),
    }
    if prepared:
        files = config.load(overrides={"input": {"size": size}, "data": {"prepared": prepared, "prepared_reader": "files"}})
        shards = config.load(overrides={"input": {"size": size}, "data": {"prepared": prepared, "prepared_reader": "tfrecord"}})
        variants.update({
            "prepared files: decode+resize": lambda: train(files),
            SHARDS: lambda: train(shards),
            SHARDS_SEED002: lambda: train(shards, augment_fn=basic, mixer=seed002),
        })
    return variants


def pipeline_bench(paths: np.ndarray, sizes, batch: int, images: int, rounds: int = 3,
                   prepared: str | None = None) -> dict:
    results = {}
    for size in sizes:
        row = measure_round_robin(pipeline_variants(paths, size, batch, prepared), images, batch, rounds)
        ceiling = row[CEILING]["images_per_s"]
        cpu_ceiling = row[CEILING]["images_per_cpu_s"]
        for entry in row.values():
            entry["ratio_to_ceiling"] = round(entry["images_per_s"] / ceiling, 3)
            entry["cpu_ratio_to_ceiling"] = round(entry["images_per_cpu_s"] / cpu_ceiling, 3)
        raw_of = {"prepared files: decode+resize": CEILING, SHARDS: CEILING, SHARDS_SEED002: SEED002}
        for name, raw in raw_of.items():
            if name in row:
                row[name]["ratio"] = round(row[name]["images_per_s"] / row[raw]["images_per_s"], 3)
                row[name]["cpu_ratio"] = round(row[name]["images_per_cpu_s"] / row[raw]["images_per_cpu_s"], 3)
                row[name]["ratio_vs"] = raw
        results[str(size)] = row
        _print(size, row)
    return results


def per_epoch(results: dict) -> dict:
    """One CXR-LT epoch (264,849 images) of the full seed 002 input pipeline, raw files vs shards:
    wall seconds on this machine, and CPU-hours (what a quiet machine divides by its cores)."""
    out = {}
    for size, row in results.items():
        if SHARDS_SEED002 in row:
            raw, shards = row[SEED002], row[SHARDS_SEED002]
            out[size] = {"raw_s": round(CXRLT_TRAIN_IMAGES / raw["images_per_s"]),
                         "shards_s": round(CXRLT_TRAIN_IMAGES / shards["images_per_s"]),
                         "speedup": round(shards["images_per_s"] / raw["images_per_s"], 2),
                         "raw_cpu_h": round(CXRLT_TRAIN_IMAGES / raw["images_per_cpu_s"] / 3600, 2),
                         "shards_cpu_h": round(CXRLT_TRAIN_IMAGES / shards["images_per_cpu_s"] / 3600, 2),
                         "cpu_speedup": round(shards["images_per_cpu_s"] / raw["images_per_cpu_s"], 2)}
    return out


def targets(results: dict) -> dict:
    """The issues' targets at 768 px (issue 3: seed 002 full >= 80 % of the ceiling; issue 6: shards >= 3x raw)."""
    row = results.get("768")
    if not row:
        return {}
    out = {"issue3_seed002_full_vs_ceiling": {"value": row[SEED002]["ratio_to_ceiling"],
                                              "cpu_value": row[SEED002]["cpu_ratio_to_ceiling"], "target": 0.8}}
    if SHARDS in row:
        out["issue6_shards_vs_raw_decode"] = {"value": row[SHARDS]["ratio"], "cpu_value": row[SHARDS]["cpu_ratio"],
                                              "target": 3.0}
    for entry in out.values():
        entry["met"] = entry["value"] >= entry["target"]
    return out


def _print(size: int, row: dict) -> None:
    print(f"\n{size} px{'':<47}{'images/s':>10}{'per CPU-s':>11}{'x ceiling':>11}{'x raw':>8}")
    for name, e in row.items():
        raw = f"{e['ratio']:>8.2f}" if "ratio" in e else ""
        print(f"  {name:<53}{e['images_per_s']:>10.1f}{e['images_per_cpu_s']:>11.1f}{e['ratio_to_ceiling']:>11.2f}{raw}",
              flush=True)


# -------------------------------------------------------------------------------------------- predict

def _predict_rate(model, paths, cfg: dict, tta, batch: int) -> tuple[float, float]:
    """The predict step every caller uses (`predict.step.Predictor`: the TTA views averaged in one
    tf.function) over pipeline.eval_dataset, timed after a warm-up batch that pays for the tracing
    (once per fold in prediction, which would swamp a short measurement)."""
    from ..predict.step import Predictor

    step = Predictor(model, tta).step
    it = iter(pipeline.eval_dataset(paths, cfg, batch_size=batch))
    step(next(it)).numpy()
    count, wall, cpu = 0, time.perf_counter(), _cpu_seconds()
    for images in it:
        step(images).numpy()
        count += int(images.shape[0])
    return count / (time.perf_counter() - wall), count / max(_cpu_seconds() - cpu, 1e-9)


def predict_bench(paths: np.ndarray, backbones, size: int, batch: int, images: int) -> dict:
    """Inference images/s (decode + model) without and with flip TTA."""
    from ..model import models

    cfg = config.load(overrides={"input": {"size": size}})
    paths = np.resize(np.asarray(paths, str), images + batch)
    results = {}
    for backbone in backbones:
        model = models.build(backbone, 26, size, weights="none").model
        row = {}
        for name, tta in (("no TTA", ("identity",)), ("flip TTA", ("identity", "hflip"))):
            wall, cpu = _predict_rate(model, paths, cfg, tta, batch)
            row[name] = {"images_per_s": round(wall, 2), "images_per_cpu_s": round(cpu, 2)}
        row["flip TTA"]["ratio"] = round(row["flip TTA"]["images_per_s"] / row["no TTA"]["images_per_s"], 3)
        row["flip TTA"]["cpu_ratio"] = round(row["flip TTA"]["images_per_cpu_s"] / row["no TTA"]["images_per_cpu_s"], 3)
        row["flip TTA"]["ratio_vs"] = "no TTA"
        results[backbone] = row
        print(f"{backbone} {size} px batch {batch}: no TTA {row['no TTA']['images_per_s']:.1f} images/s, "
              f"flip TTA {row['flip TTA']['images_per_s']:.1f} images/s (x{row['flip TTA']['ratio']:.2f}); "
              f"per CPU-s {row['no TTA']['images_per_cpu_s']:.1f} / {row['flip TTA']['images_per_cpu_s']:.1f} "
              f"(x{row['flip TTA']['cpu_ratio']:.2f})", flush=True)
        del model
    return results


# --------------------------------------------------------------------------------------------- memory

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_child(kind: str, paths: np.ndarray, n: int, backbone: str, size: int, batch: int) -> dict:
    """Run once in a fresh process: predict, iterate the training input, or train, over n images."""
    from ..model import models
    from ..predict import inference as predict

    cfg = config.load(overrides={"input": {"size": size}})
    paths = np.resize(np.asarray(paths, str), n)
    before = _peak_rss_mb()
    if kind == "predict":
        model = models.build(backbone, 26, size, weights="none").model
        probs = predict.predict_images(model, paths, cfg, batch_size=batch)
        assert probs.shape == (n, 26)
    else:  # seed 002's full training input over the n images (n is the epoch): iterated, or trained on
        labels = np.zeros((n, 26), np.float32)
        ds = pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=batch,
                                    augment_fn=augment.make_basic_augment(cfg["augment"]),
                                    mixer=mix.BatchMixer.from_config(cfg["mix"]))
        if kind == "train":  # the engine's train step (focal loss, Adam), as cxrlt.train runs it
            import keras

            from ..train import engine
            from ..model import losses

            model = models.build(backbone, 26, size, weights="none").train_model
            trainer = engine.Trainer(tf.distribute.get_strategy(), model, keras.optimizers.Adam(1e-4),
                                     losses.get_loss("focal"))
            trainer.fit(ds, epochs=1, steps_per_epoch=n // batch, verbose=0)
        else:
            for _ in ds.take(n // batch):
                pass
    return {"kind": kind, "n": n, "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_mb": round(before, 1)}


def memory_bench(images_csv: Path, n: int, factor: int, backbone: str, size: int, batch: int,
                 kinds=("predict", "train-input")) -> dict:
    results = {}
    for kind in kinds:
        row = {}
        for count in (n, n * factor):
            cmd = [sys.executable, "-m", "cxrlt.bench", "memory-child", "--kind", kind, "--n", str(count),
                   "--images", str(images_csv), "--backbone", backbone, "--size", str(size), "--batch-size", str(batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            row[str(count)] = json.loads(done.stdout.strip().splitlines()[-1])
        small, large = row[str(n)]["peak_rss_mb"], row[str(n * factor)]["peak_rss_mb"]
        row["ratio"] = round(large / small, 3)
        row["ratio_vs"] = f"peak RSS with {n * factor} images / with {n}"
        results[kind] = row
        print(f"{kind}: peak RSS {small:.0f} MB for {n} images, {large:.0f} MB for {n * factor} images "
              f"(x{row['ratio']:.2f}); {backbone} {size} px batch {batch}", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ ops

def _cpu_ms(fn, args, repeat: int = 1) -> float:
    """CPU milliseconds per call of fn over args (after two warm-up calls: tracing)."""
    fn(args[0])
    fn(args[-1])
    started = _cpu_seconds()
    for _ in range(repeat):
        for a in args:
            fn(a)
    return 1000 * (_cpu_seconds() - started) / (repeat * len(args))


def ops_bench(paths: np.ndarray, size: int, batch: int, long_side: int, count: int) -> dict:
    """CPU ms per image of each step of the input pipeline, one thread (where the time goes)."""
    from ..data import prepare

    jpegs = [p for p in paths if str(p).lower().endswith((".jpg", ".jpeg"))][:count]
    raw = [tf.constant(open(p, "rb").read()) for p in jpegs]
    shrink = prepare.make_shrinker(long_side)
    small = [tf.constant(shrink(r.numpy())[0]) for r in raw]
    f = lambda fn: tf.function(fn, reduce_retracing=True)  # noqa: E731
    whole = [tf.image.convert_image_dtype(tf.io.decode_jpeg(r, channels=1), tf.float32) for r in raw]
    scaled = [pipeline.decode_grey(r, size) for r in raw]
    prepared = [pipeline.decode_grey(r, size) for r in small]
    cfg = config.load(overrides={"input": {"size": size}})
    basic = augment.make_basic_augment(cfg["augment"])
    seed = tf.constant([1, 2], tf.int64)
    grey = tf.random.uniform([size, size, 1], 0, 255)
    batch_grey = tf.random.uniform([batch, size, size, 1], 0, 255)
    labels = tf.one_hot(tf.range(batch) % 26, 26)
    row = {
        "decode raw JPEG, whole": _cpu_ms(f(lambda d: tf.io.decode_jpeg(d, channels=1)), raw),
        "decode raw JPEG, DCT-scaled (decode_grey)": _cpu_ms(f(lambda d: pipeline.decode_grey(d, size)), raw),
        f"decode prepared JPEG (long side {long_side})": _cpu_ms(f(lambda d: pipeline.decode_grey(d, size)), small),
        "resize whole decode, antialias (before)": _cpu_ms(f(lambda x: tf.image.resize(x, (size, size), antialias=True)), whole),
        "resize DCT-scaled, antialias": _cpu_ms(f(lambda x: tf.image.resize(x, (size, size), antialias=True)), scaled),
        "resize DCT-scaled, auto (resize_grey)": _cpu_ms(f(lambda x: pipeline.resize_grey(x, size)), scaled),
        "resize prepared, auto (resize_grey)": _cpu_ms(f(lambda x: pipeline.resize_grey(x, size)), prepared),
        "scale to 0..255 + clip": _cpu_ms(f(lambda x: tf.clip_by_value(x * 255.0, 0.0, 255.0)), [grey] * 8),
        "grey -> 3 channels (to_rgb, per image of a batch)": _cpu_ms(f(pipeline.to_rgb), [batch_grey] * 4) / batch,
        "basic augs, 1 channel": _cpu_ms(f(lambda x: basic(x, seed)), [grey] * 8),
        "basic augs, 3 channels": _cpu_ms(f(lambda x: basic(x, seed)), [tf.tile(grey, (1, 1, 3))] * 8),
    }
    for name, mixer in (("Mosaic crop", mix.BatchMixer(mosaic=1.0, mosaic_variant="crop")),
                        ("Mosaic resize", mix.BatchMixer(mosaic=1.0, mosaic_variant="resize")),
                        ("MixUp", mix.BatchMixer(mixup=1.0)), ("CutMix", mix.BatchMixer(cutmix=1.0))):
        row[f"{name} (per image of a batch, 1 channel)"] = _cpu_ms(
            f(lambda x, m=mixer: m.apply(x, labels, seed)), [batch_grey] * 4) / batch
    strong = augment.make_strategy_augment("strong-strong")
    row["albumentations strong (numpy_function)"] = _cpu_ms(f(lambda x: strong(x, True, seed)), [grey] * 8)
    row = {k: round(v, 2) for k, v in row.items()}
    print(f"\n{size} px, CPU ms per image, one thread ({len(raw)} JPEGs)")
    for name, ms in row.items():
        print(f"  {name:<60}{ms:>8.2f}")
    return row


# ------------------------------------------------------------------------------------------------ CLI

def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU")), "load_average": [round(v, 2) for v in os.getloadavg()]}


def _read_paths(csv: Path) -> np.ndarray:
    from ..data.dataset import read_labels

    return read_labels(csv, classes=[], require_labels=False, check_files=True).paths


def _add_pipeline(sub) -> None:
    p = sub.add_parser("pipeline", help="input pipeline images/s against the decode+resize ceiling, raw vs prepared")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="CSV with a path column (full-res radiographs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 768])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=240, help="images timed per variant (split over the rounds)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measuring rounds (median reported)")
    p.add_argument("--long-side", type=int, default=1024, help="long side of the prepared copy")
    p.add_argument("--prepared", type=Path, help="an existing prepared folder of --images (default: prepare one "
                   "in a temporary folder, timed)")
    p.add_argument("--no-prepared", action="store_true", help="skip the prepared-data variants")
    p.add_argument("--max-images", type=int, help="use only the first K images of --images (quick runs)")
    p.add_argument("--json", type=Path)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="inference images/s with and without flip TTA")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--backbones", nargs="+", default=["efficientnetv2-b0", "efficientnetv2-s"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=32, help="images predicted per measurement")
    p.add_argument("--json", type=Path)


MEMORY_KINDS = ("predict", "train-input", "train")


def _add_memory(sub) -> None:
    for name, hidden in (("memory", False), ("memory-child", True)):
        p = sub.add_parser(name, **({} if hidden else {"help": "peak RSS of prediction, training input and "
                                                                  "training on N vs factor x N images (subprocesses)"}))
        p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
        p.add_argument("--n", type=int, default=48)
        p.add_argument("--backbone", default="efficientnetv2-b0")
        p.add_argument("--size", type=int, default=224)
        p.add_argument("--batch-size", type=int, default=8)
        if hidden:
            p.add_argument("--kind", choices=MEMORY_KINDS, required=True)
        else:
            p.add_argument("--factor", type=int, default=4)
            p.add_argument("--kinds", nargs="+", choices=MEMORY_KINDS, default=["predict", "train-input"],
                           help="train = the engine training the backbone on the training input (slow on CPU)")
            p.add_argument("--json", type=Path)


def _add_ops(sub) -> None:
    p = sub.add_parser("ops", help="CPU ms per image of each input-pipeline step, one thread")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--sizes", type=int, nargs="+", default=[768])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--long-side", type=int, default=1024)
    p.add_argument("--count", type=int, default=20, help="JPEGs decoded per measurement")
    p.add_argument("--json", type=Path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrlt.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pipeline(sub)
    _add_predict(sub)
    _add_memory(sub)
    _add_ops(sub)
    bench_step.add_parser(sub, DEFAULT_IMAGES)
    bench_step.add_loop_parser(sub)
    bench_step.add_heads_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "ops":  # before anything starts TensorFlow's thread pools
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.command == "loop":  # from memory: no image list
        print(f"k steps per call, {args.backbone or 'small conv net'} at {args.size} px, batch {args.batch_size}; "
              f"{machine()}", flush=True)
        results = {"machine": machine(), "command": "loop", "size": args.size, "batch_size": args.batch_size,
                   "ks": bench_step.loop_bench(args.ks, args.size, args.batch_size, args.steps, args.rounds, args.backbone)}
        if args.json:
            atomic.write_json(args.json, results)
        return 0
    if args.command == "heads":  # from memory: no image list
        print(f"model.head step cost, {args.backbone} at {args.size} px, batch {args.batch_size}; {machine()}", flush=True)
        results = {"machine": machine(), "command": "heads", "backbone": args.backbone, "size": args.size,
                   "batch_size": args.batch_size,
                   "heads": bench_step.head_bench(args.backbone, args.size, args.batch_size, args.steps, args.warmup,
                                                  args.heads)}
        if args.json:
            atomic.write_json(args.json, results)
        return 0
    if args.command == "memory-child":
        print(json.dumps(memory_child(args.kind, _read_paths(args.images), args.n, args.backbone, args.size,
                                      args.batch_size)))
        return 0
    paths = _read_paths(args.images)
    if getattr(args, "max_images", None):
        paths = paths[:args.max_images]
    print(f"{len(paths)} images from {args.images}; {machine()}", flush=True)
    results = {"machine": machine(), "command": args.command, "argv": sys.argv[1:] if argv is None else list(argv)}
    if args.command == "pipeline":
        results.update(batch_size=args.batch_size, rounds=args.rounds)
        with contextlib.ExitStack() as stack:
            prepared = None if args.no_prepared else args.prepared
            if not args.no_prepared and prepared is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cxrlt-bench-")))
                results["prepare"] = prepare_for_bench(args.images, folder / "prepared", args.long_side, args.max_images)
                prepared = results["prepare"]["dir"]
                print(f"prepared {results['prepare']['images']} images at long side {args.long_side}: "
                      f"{results['prepare']['images_per_s']:.1f} images/s (CXR-LT train set: "
                      f"{results['prepare']['cxrlt_train_hours']:.1f} h)", flush=True)
            results["sizes"] = pipeline_bench(paths, args.sizes, args.batch_size, args.n, args.rounds,
                                              str(prepared) if prepared else None)
        results["per_epoch"] = per_epoch(results["sizes"])
        results["targets"] = targets(results["sizes"])
        for size, e in results["per_epoch"].items():
            print(f"{size} px, one CXR-LT epoch of seed 002 input ({CXRLT_TRAIN_IMAGES} images): raw {e['raw_s']} s, "
                  f"shards {e['shards_s']} s (x{e['speedup']:.2f}); CPU-hours raw {e['raw_cpu_h']}, shards "
                  f"{e['shards_cpu_h']} (x{e['cpu_speedup']:.2f})")
        for name, t in results["targets"].items():
            print(f"target {name}: {t['value']:.2f} wall, {t['cpu_value']:.2f} per CPU-s (target {t['target']}): "
                  f"{'met' if t['met'] else 'MISSED'} on the wall-clock figure")
    elif args.command == "ops":
        results.update(batch_size=args.batch_size, long_side=args.long_side)
        results["sizes"] = {str(size): ops_bench(paths, size, args.batch_size, args.long_side, args.count)
                            for size in args.sizes}
    elif args.command == "step":
        results.update(size=args.size, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup)
        results["backbones"] = bench_step.step_bench(paths, args.backbones, args.size, args.batch_size, args.steps,
                                                     args.warmup, str(args.prepared) if args.prepared else None)
    elif args.command == "predict":
        results.update(size=args.size, batch_size=args.batch_size, n=args.n)
        results["backbones"] = predict_bench(paths, args.backbones, args.size, args.batch_size, args.n)
    else:
        results.update(size=args.size, batch_size=args.batch_size, backbone=args.backbone)
        results["memory"] = memory_bench(args.images, args.n, args.factor, args.backbone, args.size, args.batch_size,
                                         args.kinds)
    results["machine_after"] = machine()
    if args.json:
        atomic.write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
