"""Throughput benchmarks that print numbers (ratios against a ceiling measured in the same run).

    python -m cxrlt.bench pipeline [--sizes 224 512 768] [--images ../shared/data/cxr_fullres/images.csv] [--json out.json]

pipeline: images/s of the training input pipeline on full-resolution radiographs, for
decode+resize only (the ceiling any variant can reach), the naive per-image Python/PIL generator a
user might write, seed 002's basic augmentations, each batch mixer, seed 002's full recipe (basic
+ one mixer per batch) and seed 000's albumentations strong pipeline (outside the TF graph).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import atomic, augment, config, mix, pipeline

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr_fullres" / "images.csv"


def _rate(ds: tf.data.Dataset, images: int, batch: int) -> float:
    """Images per second over `images` images, after one warm-up batch (tracing, thread start)."""
    it = iter(ds)
    next(it)
    started = time.perf_counter()
    for _ in range(max(1, images // batch)):
        next(it)
    return max(1, images // batch) * batch / (time.perf_counter() - started)


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


def pipeline_bench(paths: np.ndarray, sizes, batch: int, images: int) -> dict:
    labels = np.zeros((len(paths), 26), np.float32)
    labels[np.arange(len(paths)), np.arange(len(paths)) % 26] = 1
    results = {}
    for size in sizes:
        cfg = config.load(overrides={"input": {"size": size}})
        basic = augment.make_basic_augment(cfg["augment"])
        train = lambda **kw: pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=batch, **kw)  # noqa: E731
        variants = {
            "decode+resize (ceiling)": lambda: train(),
            "naive PIL generator": lambda: _naive(paths, size, batch),
            "+ basic augs": lambda: train(augment_fn=basic),
            "+ basic + Mosaic": lambda: train(augment_fn=basic, mixer=mix.BatchMixer(mosaic=1.0)),
            "+ basic + MixUp": lambda: train(augment_fn=basic, mixer=mix.BatchMixer(mixup=1.0)),
            "+ basic + CutMix": lambda: train(augment_fn=basic, mixer=mix.BatchMixer(cutmix=1.0)),
            "seed 002 full (basic + mosaic p=0.5)": lambda: train(
                augment_fn=basic, mixer=mix.BatchMixer.from_config(cfg["mix"])),
            "albumentations strong (seed 000)": lambda: train(
                strategy_fn=augment.make_strategy_augment("strong-strong"), minority=np.ones(len(paths), bool)),
        }
        row = {}
        for name, make in variants.items():
            row[name] = {"images_per_s": round(_rate(make(), images, batch), 1)}
        ceiling = row["decode+resize (ceiling)"]["images_per_s"]
        for entry in row.values():
            entry["ratio_to_ceiling"] = round(entry["images_per_s"] / ceiling, 3)
        results[str(size)] = row
        _print(size, row)
    return results


def _print(size: int, row: dict) -> None:
    print(f"\n{size} px{'':<34}{'images/s':>10}{'x ceiling':>11}")
    for name, entry in row.items():
        print(f"  {name:<40}{entry['images_per_s']:>10.1f}{entry['ratio_to_ceiling']:>11.2f}")


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrlt.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="input pipeline images/s against the decode+resize ceiling")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="CSV with a path column (full-res radiographs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 768])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=240, help="images timed per variant")
    p.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from .dataset import read_labels

    paths = read_labels(args.images, classes=None, require_labels=False, check_files=True).paths
    print(f"{len(paths)} images from {args.images}; {machine()}")
    results = {"machine": machine(), "command": "pipeline", "batch_size": args.batch_size,
               "sizes": pipeline_bench(paths, args.sizes, args.batch_size, args.n)}
    if args.json:
        atomic.write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
