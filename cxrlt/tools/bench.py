"""Throughput and memory benchmarks that print numbers (ratios against a baseline measured in the same run).

    python -m cxrlt.bench pipeline [--sizes 224 512 768] [--images ../shared/data/cxr_fullres/images.csv] [--json out.json]
    python -m cxrlt.bench predict  [--backbones efficientnetv2-b0 efficientnetv2-s] [--size 224] [--json out.json]
    python -m cxrlt.bench memory   [--n 48 --factor 4] [--json out.json]
    python -m cxrlt.bench ops      [--sizes 768] [--json out.json]
    python -m cxrlt.bench cpu      [--sizes 224 512 768] [--rates 145 400] [--json out.json]
    python -m cxrlt.bench step     [--backbones efficientnetv2-b0] [--size 224] [--json out.json]   (cxrlt/bench_step.py)
    python -m cxrlt.bench loop     [--ks 1 16] [--size 32] [--backbone NAME] [--json out.json]  (k steps per call)
    python -m cxrlt.bench device   [--size 768] [--batch-size 8] [--json out.json]  (the train step's augmentation
                                   and mixing, before issue 28 vs now, and its share of a B0 step: bench_device.py)
    python -m cxrlt.bench export   --run runs/X [--labels LIST.csv] [--batch-size 16] [--json out.json]

pipeline: images/s of the training input pipeline on full-resolution radiographs, for
decode+resize only (the ceiling any variant can reach), a bare tf.data read-decode-resize-batch
(the baseline of issue 14), the host side of augment.device accelerator (uint8 batches), the naive per-image Python/PIL generator a
user might write, the decoding as it was before DCT-scaled JPEG decoding, seed 002's basic
augmentations, each batch mixer, seed 002's full recipe (basic + one mixer per batch), seed 000's
albumentations strong pipeline (outside the TF graph), and the same read from pre-resized data
(`cxrlt.prepare`: files and TFRecord shards), plus the one-time cost of preparing.
predict: inference images/s through predict.predict_images with and without flip TTA.
memory: peak RSS of prediction and of the training input pipeline on N and factor x N images,
each in a fresh subprocess (flat = streaming, nothing loaded per image).
ops: CPU milliseconds per image of each step (decode, resize, channels, augs, mixers) on one
thread: where the pipeline's time goes, to read the ratios above.
cpu: host CPU milliseconds per training image of the whole input, host mode vs augment.device
accelerator (the host only decodes), from raw files and from prepared shards, on one tf.data thread;
and the CPU cores one GPU needs to be fed --rates images/s.
export: images/s of `cxrlt predict` and of the same run exported by `cxrlt export` (SavedModel, bytes in), on
the same images in one process.

The machine may be shared: variants are measured in interleaved rounds (median over rounds), and
next to wall-clock images/s each entry has images per CPU-second of this process, which moves much
less when other processes take cores. Ratios use the wall-clock figures.
"""

from __future__ import annotations

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

from ..utils import atomic, cli
from ..data import augment, mix, pipeline
from . import bench_device, bench_step
from .. import config

DEFAULT_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr_fullres" / "images.csv"
CXRLT_TRAIN_IMAGES = 264_849  # CXR-LT 2023 train.csv: the epoch the per-epoch figures are scaled to
CEILING = "decode+resize (ceiling)"
SEED002 = "seed 002 full (basic + mosaic p=0.5)"
SHARDS = "prepared shards: decode+resize"
SHARDS_SEED002 = "prepared shards: seed 002 full"
BARE = "bare tf.data decode+resize (baseline)"
ACCEL = "accelerator mode, host side (uint8 grey batches)"
SHARDS_ACCEL = "prepared shards: accelerator mode, host side"
GPU_RATES = (145, 400)  # images/s at 768 px: one A100 training EfficientNetV2-S (BENCHMARKS.md), and a faster GPU


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


def _bare(paths, size: int, batch: int) -> tf.data.Dataset:
    """The baseline every variant is held to: paths -> read_file -> decode_image(channels=1) ->
    tf.image.resize -> batch, one parallel map and nothing else (repeated only so that it streams;
    no shuffling, no DCT scaling, no clipping, float grey)."""
    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=1, expand_animations=False)
        return tf.image.resize(image, (size, size))

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(paths, str)).repeat()
    return ds.map(decode, num_parallel_calls=pipeline.AUTOTUNE).batch(batch)


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


def _seed002_inputs(paths: np.ndarray, size: int, batch: int):
    """(train(cfg=..., **kw) -> a training stream of `paths`, seed 002's basic augmentation, seed 002's mixer):
    what every pipeline variant is built from (one label per image, cycling over the 26 classes)."""
    labels = np.zeros((len(paths), 26), np.float32)
    labels[np.arange(len(paths)), np.arange(len(paths)) % 26] = 1
    cfg = config.load(overrides={"input": {"size": size}})

    def train(cfg=cfg, **kw):
        return pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=batch, **kw)

    return train, augment.make_basic_augment(cfg["augment"]), mix.BatchMixer.from_config(cfg["mix"])


def pipeline_variants(paths: np.ndarray, size: int, batch: int, prepared: str | None) -> dict:
    train, basic, seed002 = _seed002_inputs(paths, size, batch)

    variants = {
        CEILING: lambda: train(),
        BARE: lambda: _bare(paths, size, batch),
        ACCEL: lambda: train(on_device=True),
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
            SHARDS_ACCEL: lambda: train(shards, on_device=True),
        })
    return variants


def pipeline_bench(paths: np.ndarray, sizes, batch: int, images: int, rounds: int = 3,
                   prepared: str | None = None) -> dict:
    results = {}
    for size in sizes:
        row = measure_round_robin(pipeline_variants(paths, size, batch, prepared), images, batch, rounds)
        ceiling = row[CEILING]["images_per_s"]
        cpu_ceiling = row[CEILING]["images_per_cpu_s"]
        bare, cpu_bare = row[BARE]["images_per_s"], row[BARE]["images_per_cpu_s"]
        for entry in row.values():
            entry["ratio_to_ceiling"] = round(entry["images_per_s"] / ceiling, 3)
            entry["cpu_ratio_to_ceiling"] = round(entry["images_per_cpu_s"] / cpu_ceiling, 3)
            entry["ratio_to_bare"] = round(entry["images_per_s"] / bare, 3)
            entry["cpu_ratio_to_bare"] = round(entry["images_per_cpu_s"] / cpu_bare, 3)
        raw_of = {"prepared files: decode+resize": CEILING, SHARDS: CEILING, SHARDS_SEED002: SEED002,
                  SHARDS_ACCEL: ACCEL}
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
    """The issues' targets at 768 px (issue 3: seed 002 full >= 80 % of the ceiling; issue 6: shards >= 3x raw;
    issue 14: the host side of accelerator mode >= 90 % of the bare tf.data decode+resize)."""
    row = results.get("768")
    if not row:
        return {}
    out = {"issue3_seed002_full_vs_ceiling": {"value": row[SEED002]["ratio_to_ceiling"],
                                              "cpu_value": row[SEED002]["cpu_ratio_to_ceiling"], "target": 0.8},
           "issue14_accelerator_host_side_vs_bare": {"value": row[ACCEL]["ratio_to_bare"],
                                                     "cpu_value": row[ACCEL]["cpu_ratio_to_bare"], "target": 0.9}}
    if SHARDS in row:
        out["issue6_shards_vs_raw_decode"] = {"value": row[SHARDS]["ratio"], "cpu_value": row[SHARDS]["cpu_ratio"],
                                              "target": 3.0}
    for entry in out.values():
        entry["met"] = entry["value"] >= entry["target"]
    return out


def _print(size: int, row: dict) -> None:
    print(f"\n{size} px{'':<47}{'images/s':>10}{'per CPU-s':>11}{'x ceiling':>11}{'x bare':>8}{'x raw':>8}")
    for name, e in row.items():
        raw = f"{e['ratio']:>8.2f}" if "ratio" in e else ""
        print(f"  {name:<53}{e['images_per_s']:>10.1f}{e['images_per_cpu_s']:>11.1f}{e['ratio_to_ceiling']:>11.2f}"
              f"{e['ratio_to_bare']:>8.2f}{raw}", flush=True)


# ------------------------------------------------------------------------------------------------ cpu

HOST_RAW, ACCEL_RAW = "host mode (seed 002 full), raw files", "accelerator mode, raw files"
HOST_SHARDS, ACCEL_SHARDS = "host mode (seed 002 full), prepared shards", "accelerator mode, prepared shards"
# bench cpu's variants: these of bench pipeline's, under the names of the mode and the source
CPU_VARIANTS = {BARE: BARE, HOST_RAW: SEED002, ACCEL_RAW: ACCEL, HOST_SHARDS: SHARDS_SEED002, ACCEL_SHARDS: SHARDS_ACCEL}


def _one_thread(make):
    """The dataset on one tf.data thread, without autotuning: the process's CPU-seconds then measure
    the work per image, not how many threads wait, spin or compete for cores (which moves with the
    machine's load: the multi-threaded images per CPU-second of `pipeline` were 1.4x apart between a
    quiet and a shared machine)."""
    def made():
        options = tf.data.Options()
        options.threading.private_threadpool_size = 1
        options.threading.max_intra_op_parallelism = 1
        options.autotune.enabled = False
        return make().with_options(options)
    return made


def cpu_variants(paths: np.ndarray, size: int, batch: int, prepared: str | None, one_thread: bool = True) -> dict:
    """What the host does per training image in each mode: host mode = seed 002's full input (decode,
    resize, basic augs, Mosaic p=0.5, grey -> RGB float batches); accelerator mode = read, decode,
    resize, batch uint8 grey (+ seeds): the augmentation and mixing then run in the train step."""
    every = pipeline_variants(paths, size, batch, prepared)
    variants = {name: every[key] for name, key in CPU_VARIANTS.items() if key in every}
    return {name: _one_thread(make) for name, make in variants.items()} if one_thread else variants


def cpu_bench(paths: np.ndarray, sizes, batch: int, images: int, rounds: int, prepared: str | None,
              rates=GPU_RATES, one_thread: bool = True) -> dict:
    """Host CPU-ms per training image by mode and source, and the cores that feed `rates` images/s
    (cores = rate x CPU-s per image: tf.data's parallel map of TF ops scales with cores)."""
    results = {}
    for size in sizes:
        row = measure_round_robin(cpu_variants(paths, size, batch, prepared, one_thread), images, batch, rounds)
        for entry in row.values():
            ms = 1000 / entry["images_per_cpu_s"]
            entry["cpu_ms_per_image"] = round(ms, 2)
            entry["cores_for_images_per_s"] = {str(r): round(r * ms / 1000, 2) for r in rates}
            entry["cpu_ratio_to_bare"] = round(entry["images_per_cpu_s"] / row[BARE]["images_per_cpu_s"], 3)
        results[str(size)] = row
        print(f"\n{size} px, host CPU per training image{'':<17}{'CPU ms':>8}{'x bare':>8}"
              + "".join(f"{f'cores@{r}/s':>12}" for r in rates))
        for name, e in row.items():
            print(f"  {name:<50}{e['cpu_ms_per_image']:>8.2f}{e['cpu_ratio_to_bare']:>8.2f}"
                  + "".join(f"{e['cores_for_images_per_s'][str(r)]:>12.1f}" for r in rates), flush=True)
    return results


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


# --------------------------------------------------------------------------------------------- export

def export_bench(run_dir: Path, labels: str | None, batch: int, rounds: int, max_images: int | None,
                 image_root: str | None = None) -> dict:
    """images/s of `cxrlt predict` (predict.inference: each fold model x TTA over pipeline.eval_dataset, the fold
    means averaged) and of the run exported by `cxrlt export` (tf.saved_model.load, the serving signature fed the
    files' bytes in batches), on the same images in interleaved rounds (median). Both are timed warm (models
    loaded, functions traced); the one-time costs (export, load, first call) are reported beside them."""
    from ..ensemble import ensembler, export
    from ..model import models
    from ..predict import inference
    from ..predict.step import Predictor
    from ..runtime import runs

    run = runs.Run(run_dir)
    cfg = run.config()
    table = inference.read_image_list(run, labels or cfg["data"]["test_labels"], image_root)
    paths = table.paths[:max_images] if max_images else table.paths
    tta = tuple(cfg["predict"]["tta"])
    results = {"run": str(run.root), "images": int(len(paths)), "batch_size": batch, "rounds": rounds,
               "tta": list(tta), "folds": run.finished_folds(), "size": cfg["input"]["size"],
               "backbone": cfg["model"]["backbone"]}
    with tempfile.TemporaryDirectory(prefix="cxrlt-bench-export-") as folder:
        started = time.perf_counter()
        settings = {**ensembler.load_settings(None), "runs": [str(run.root)]}
        export.save(export.make_plan([run], settings), Path(folder) / "model")
        results["export_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        predictors = [Predictor(models.load(run.model_path(k), num_classes=len(run.classes())), tta)
                      for k in run.finished_folds()]
        for predictor in predictors:  # trace
            predictor(pipeline.eval_dataset(paths[:batch], cfg, batch_size=batch))
        results["predict_load_and_trace_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        serve = tf.saved_model.load(str(Path(folder) / "model")).signatures["serving_default"]
        serve(images=tf.constant([Path(p).read_bytes() for p in paths[:batch]]))
        results["export_load_and_first_call_s"] = round(time.perf_counter() - started, 2)

        def cxrlt_predict():
            return np.mean([p(pipeline.eval_dataset(paths, cfg, batch_size=batch), expected=len(paths))
                            for p in predictors], axis=0)

        def exported():
            out = [serve(images=tf.constant([Path(p).read_bytes() for p in paths[i:i + batch]]))["probabilities"]
                   .numpy() for i in range(0, len(paths), batch)]
            return np.concatenate(out)

        rates = {"cxrlt predict": [], "export": []}
        outputs = {}
        for _ in range(rounds):
            for name, fn in (("cxrlt predict", cxrlt_predict), ("export", exported)):
                started = time.perf_counter()
                outputs[name] = fn()
                rates[name].append(len(paths) / (time.perf_counter() - started))
    for name, values in rates.items():
        results[name] = {"images_per_s": round(float(np.median(values)), 2), "rounds": [round(v, 2) for v in values]}
    results["ratio_export_vs_predict"] = round(results["export"]["images_per_s"]
                                               / results["cxrlt predict"]["images_per_s"], 3)
    results["max_abs_difference"] = float(np.abs(outputs["export"] - outputs["cxrlt predict"]).max())
    print(f"{len(paths)} images, {results['backbone']} at {results['size']} px, {len(results['folds'])} folds x "
          f"{len(tta)} TTA view(s), batch {batch}, median of {rounds} rounds: cxrlt predict "
          f"{results['cxrlt predict']['images_per_s']:.1f} images/s, export {results['export']['images_per_s']:.1f} "
          f"images/s (x{results['ratio_export_vs_predict']:.2f}); max |difference| "
          f"{results['max_abs_difference']:.1e}. One-time: export {results['export_s']:.1f} s, predict load+trace "
          f"{results['predict_load_and_trace_s']:.1f} s, export load+first call "
          f"{results['export_load_and_first_call_s']:.1f} s", flush=True)
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
        on_device = kind.endswith("-accelerator")  # augment.device accelerator: uint8 batches, augmented in the step
        mixer = mix.BatchMixer.from_config(cfg["mix"])
        ds = pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=batch, on_device=on_device,
                                    **({} if on_device else {"augment_fn": augment.make_basic_augment(cfg["augment"]),
                                                             "mixer": mixer}))
        if kind in ("train", "train-accelerator"):  # the engine's train step (focal loss, Adam)
            import keras

            from ..train import engine
            from ..model import losses

            model = models.build(backbone, 26, size, weights="none").train_model
            preprocess = pipeline.device_preprocess(cfg["augment"], mixer, 26) if on_device else None
            trainer = engine.Trainer(tf.distribute.get_strategy(), model, keras.optimizers.Adam(1e-4),
                                     losses.get_loss("focal"), preprocess=preprocess)
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


MEMORY_KINDS = ("predict", "train-input", "train", "train-input-accelerator", "train-accelerator")


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
                           help="train = the engine training the backbone on the training input (slow on CPU); "
                                "*-accelerator = the same with augment.device accelerator")
            p.add_argument("--json", type=Path)


def _add_cpu(sub) -> None:
    p = sub.add_parser("cpu", help="host CPU-ms per training image, host vs accelerator mode, raw files vs shards; "
                                   "the cores per GPU that feed given images/s")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 768])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=120, help="images timed per variant (split over the rounds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rates", type=int, nargs="+", default=list(GPU_RATES), help="images/s a GPU trains at")
    p.add_argument("--threads", type=int, default=1, help="1: one tf.data thread (the work per image); 0: "
                   "TensorFlow's default threads (adds what waiting and spinning threads burn)")
    p.add_argument("--long-side", type=int, default=1024)
    p.add_argument("--prepared", type=Path)
    p.add_argument("--no-prepared", action="store_true")
    p.add_argument("--max-images", type=int)
    p.add_argument("--json", type=Path)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="images/s of cxrlt predict vs the run exported as a SavedModel, same images")
    p.add_argument("--run", type=Path, required=True, help="a finished run (runs/X)")
    p.add_argument("--labels", help="image list (default: the run's data.test_labels)")
    p.add_argument("--image-root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-images", type=int)
    p.add_argument("--json", type=Path)


def _add_ops(sub) -> None:
    p = sub.add_parser("ops", help="CPU ms per image of each input-pipeline step, one thread")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--sizes", type=int, nargs="+", default=[768])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--long-side", type=int, default=1024)
    p.add_argument("--count", type=int, default=20, help="JPEGs decoded per measurement")
    p.add_argument("--json", type=Path)


def _prepared_folder(stack: contextlib.ExitStack, args, results: dict) -> str | None:
    """--prepared, or a folder prepared now in a temporary directory (timed into results["prepare"]), or None."""
    if args.no_prepared:
        return None
    if args.prepared:
        return str(args.prepared)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cxrlt-bench-")))
    results["prepare"] = prepare_for_bench(args.images, folder / "prepared", args.long_side, args.max_images)
    print(f"prepared {results['prepare']['images']} images at long side {args.long_side}: "
          f"{results['prepare']['images_per_s']:.1f} images/s (CXR-LT train set: "
          f"{results['prepare']['cxrlt_train_hours']:.1f} h)", flush=True)
    return results["prepare"]["dir"]


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.bench", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pipeline(sub)
    _add_predict(sub)
    _add_memory(sub)
    _add_ops(sub)
    _add_cpu(sub)
    _add_export(sub)
    bench_step.add_parser(sub, DEFAULT_IMAGES)
    bench_step.add_loop_parser(sub)
    bench_step.add_heads_parser(sub)
    bench_device.add_parser(sub, DEFAULT_IMAGES)
    args = parser.parse_args(argv)
    if args.command == "ops" or (args.command == "cpu" and args.threads == 1):  # before TF starts its thread pools
        with contextlib.suppress(RuntimeError):  # already started (called in-process): cpu's tf.data options suffice
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
    if args.command == "export":  # the run's own image list
        print(f"cxrlt predict vs export; {machine()}", flush=True)
        results = {"machine": machine(), "command": "export",
                   **export_bench(args.run, args.labels, args.batch_size, args.rounds, args.max_images, args.image_root),
                   "machine_after": machine()}
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
    if args.command == "cpu":
        results.update(batch_size=args.batch_size, rounds=args.rounds, threads=args.threads, rates=args.rates)
        with contextlib.ExitStack() as stack:
            prepared = _prepared_folder(stack, args, results)
            results["sizes"] = cpu_bench(paths, args.sizes, args.batch_size, args.n, args.rounds, prepared, args.rates,
                                         one_thread=args.threads == 1)
        results["cores_per_gpu"] = {size: {name: e["cores_for_images_per_s"] for name, e in row.items() if name != BARE}
                                    for size, row in results["sizes"].items()}
    elif args.command == "pipeline":
        results.update(batch_size=args.batch_size, rounds=args.rounds)
        with contextlib.ExitStack() as stack:
            prepared = _prepared_folder(stack, args, results)
            results["sizes"] = pipeline_bench(paths, args.sizes, args.batch_size, args.n, args.rounds, prepared)
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
    elif args.command == "device":
        results.update(size=args.size, batch_size=args.batch_size, calls=args.calls, rounds=args.rounds)
        results.update(bench_device.device_bench(paths, args.size, args.batch_size, args.calls, args.rounds,
                                                 args.step_steps, args.step_warmup))
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
