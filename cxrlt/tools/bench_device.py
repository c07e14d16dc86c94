"""`python -m cxrlt.bench device`: images/s of the augmentation and mixing that `augment.device: accelerator`
runs inside the train step, as it was before issue 28 and as it is now, measured in one run on one batch of
real radiographs, and what it costs next to an EfficientNetV2-B0 train step at the same size on this machine.

    python -m cxrlt.bench device [--size 768] [--batch-size 8] [--calls 8] [--rounds 3] [--json out.json]

before  a frozen copy of the device path of main b2ffcec (below, kept only as this baseline): the basic set's
        per-image random numbers drawn in the step by a tf.map_fn over the images, each Mosaic assembled one
        image at a time in a tf.map_fn, the resize variant with tf.image.resize(antialias=True), i.e.
        ScaleAndTranslate, whose only kernel is the CPU's (on a GPU: a device -> host -> device trip per tile).
now     `pipeline.device_preprocess` on one device: the draws come from the host with the batch, Mosaic crop is
        one gather, Mosaic resize the same antialiasing weights as gathers and multiply-adds, no loop.

Each variant is a traced function over one uint8 grey batch [B, size, size, 1], called `--calls` times per
round with the update seeds 0..calls-1 (so the policy's draws, e.g. Mosaic on about half the batches, are
the same for both), rounds interleaved, the median round reported (wall-clock and per CPU-second of this
process, which moves less when other processes take cores); next to each pair the largest
difference between their outputs (they compute the same batches). On a CPU both run on the same cores
as everything else: the ratios say what the batched form saves in work, not what a GPU does with it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from .. import config
from ..data import augment, mix, pipeline

RECIPES = {  # name -> the mix: section over the defaults (augment: the defaults, seed 002's basic set)
    "basic set only": {"mosaic": 0.0},
    "mosaic crop, every batch": {"mosaic": 1.0, "mosaic_variant": "crop"},
    "mosaic resize, every batch": {"mosaic": 1.0, "mosaic_variant": "resize"},
    "seed 002 recipe (basic + mosaic p=0.5, both variants)": {},
}


# --- the device path before issue 28 (main b2ffcec), frozen as the baseline ---------------------------

def _before_basic(images, seeds, cfg: dict) -> tf.Tensor:
    draws = tf.map_fn(lambda seed: augment._draws(seed, cfg), tf.cast(seeds, tf.int64),
                      fn_output_signature=(tf.bool, tf.float32, tf.float32, tf.float32, tf.float32))
    return augment.batch_basic(images, tf.stack([tf.cast(draws[0], tf.float32), *draws[1:]], axis=1), cfg)


def _assemble(tiles):
    return tf.concat([tf.concat([tiles[0], tiles[1]], axis=-2), tf.concat([tiles[2], tiles[3]], axis=-2)], axis=-3)


def _before_mosaic_crop(images, labels, seed, center_range, label_mode):
    h, w, channels = images.shape[1], images.shape[2], images.shape[3]
    batch = images.shape[0]
    s_src, s_geo, s_oy, s_ox = mix._split(seed, 4)
    sources = mix._partner_indices(batch, 4, s_src)
    _, _, tile_h, tile_w = mix._mosaic_geometry(batch, h, w, center_range, True, s_geo)
    off_y, off_x = mix._random_offsets(h - tile_h, s_oy), mix._random_offsets(w - tile_w, s_ox)
    depth = tf.shape(images, out_type=tf.int64)[3]

    def one(args):
        src, th, tw, oy, ox = args
        tiles = [tf.slice(images, tf.stack([src[k], oy[k], ox[k], 0]), tf.stack([1, th[k], tw[k], depth]))[0]
                 for k in range(4)]
        return tf.ensure_shape(_assemble(tiles), [h, w, channels])

    elems = tuple(tf.transpose(tf.cast(t, tf.int64)) for t in (sources, tile_h, tile_w, off_y, off_x))
    out = tf.map_fn(one, elems, fn_output_signature=tf.TensorSpec([h, w, channels], images.dtype))
    areas = tf.cast(tile_h * tile_w, tf.float32) / float(h * w)
    ys = [tf.gather(labels, sources[k]) for k in range(4)]
    return out, mix.combine_labels(ys, tf.unstack(areas), label_mode)


def _before_mosaic_resize(images, labels, seed, random_split, center_range, label_mode):
    h, w, channels = images.shape[1], images.shape[2], images.shape[3]
    batch = images.shape[0]
    s_src, s_geo = mix._split(seed, 2)
    sources = mix._partner_indices(batch, 4, s_src)
    _, _, tile_h, tile_w = mix._mosaic_geometry(batch, h, w, center_range, random_split, s_geo)

    def one(args):
        src, th, tw = (tf.cast(a, tf.int32) for a in args)
        tiles = [tf.image.resize(images[src[k]], tf.stack([th[k], tw[k]]), antialias=True) for k in range(4)]
        return tf.ensure_shape(tf.cast(_assemble(tiles), images.dtype), [h, w, channels])

    elems = tuple(tf.transpose(tf.cast(t, tf.int64)) for t in (sources, tile_h, tile_w))
    out = tf.map_fn(one, elems, fn_output_signature=tf.TensorSpec([h, w, channels], images.dtype))
    areas = tf.cast(tile_h * tile_w, tf.float32) / float(h * w)
    ys = [tf.gather(labels, sources[k]) for k in range(4)]
    return out, mix.combine_labels(ys, tf.unstack(areas), label_mode)


def before_preprocess(augment_cfg, mixer: mix.BatchMixer | None):
    """main b2ffcec's device_preprocess for one device (exclusive policy; MixUp, CutMix and CutOut, whose
    maths did not change, from today's module)."""
    checked = augment._basic_config(augment_cfg)

    def preprocess(batch):
        images = _before_basic(tf.cast(batch["images"], tf.float32), batch["seeds"], checked)
        labels = batch["labels"]
        if mixer is None or not mixer.active:
            return pipeline.to_rgb(images), labels
        c, mode = mixer.config, mixer.config["label_mode"]
        center = tuple(float(v) for v in c["mosaic_center"])
        s_choice, s_ops, s_cut = mix._split(mix.step_seed(mixer.seed, batch["update"][0]), 3)
        table = {"mosaic_crop": lambda: _before_mosaic_crop(images, labels, s_ops, center, mode),
                 "mosaic_resize": lambda: _before_mosaic_resize(images, labels, s_ops, bool(c["mosaic_random_split"]),
                                                                center, mode),
                 "mixup": lambda: mix.mixup(images, labels, s_ops, float(c["mixup_alpha"]), mode),
                 "cutmix": lambda: mix.cutmix(images, labels, s_ops, float(c["cutmix_alpha"]), mode)}
        branches = [lambda: (images, labels)] + [table[name] for name, _, _ in mixer._ops()]
        images, labels = tf.switch_case(mixer.choose(s_choice), branches)
        if float(c["cutout"]) > 0:
            images, labels = mix.cutout(images, labels, s_cut, float(c["cutout_size"]), int(c["cutout_holes"]),
                                        float(c["cutout_fill"]), p=float(c["cutout"]))
        return pipeline.to_rgb(images), labels

    return preprocess


# --- measuring ----------------------------------------------------------------------------------------

def _batch(paths, size: int, batch: int) -> dict:
    """One uint8 grey batch of real radiographs at `size` (decoded once, as tf.data would ship it), its
    seeds, the draws the host makes from them, and labels."""
    cfg = config.load(overrides={"input": {"size": size}})
    images = np.stack([pipeline.decode_uint8(tf.io.read_file(str(p)), size).numpy() for p in paths[:batch]])
    seeds = pipeline._element_seed(0, tf.range(batch, dtype=tf.int64))
    labels = (np.random.default_rng(0).random((batch, 26)) < 0.1).astype(np.float32)
    return {"images": tf.constant(images), "seeds": seeds, "draws": augment.batch_draws(seeds, cfg["augment"]),
            "labels": tf.constant(labels)}


def _variants(batch: dict) -> dict:
    """name -> {"before": fn(update), "now": fn(update)}: one traced call per update seed."""
    out = {}
    for name, mix_cfg in RECIPES.items():
        cfg = config.load(overrides={"mix": mix_cfg})
        mixer = mix.mixer_from_config(cfg, 0)
        pair = {"before": tf.function(before_preprocess(cfg["augment"], mixer)),
                "now": tf.function(pipeline.device_preprocess(cfg["augment"], mixer, 26))}
        out[name] = {kind: (lambda update, f=f: f({**batch, "update": tf.fill([batch["images"].shape[0]], update)}))
                     for kind, f in pair.items()}
    return out


def _largest_difference(pair: dict, calls: int) -> float:
    worst = 0.0
    for update in range(calls):
        (xb, yb), (xn, yn) = (pair[kind](tf.constant(update, tf.int64)) for kind in ("before", "now"))
        worst = max(worst, float(tf.reduce_max(tf.abs(xb - xn))), float(tf.reduce_max(tf.abs(yb - yn))))
    return worst


def device_bench(paths, size: int, batch: int, calls: int, rounds: int, step_steps: int, step_warmup: int) -> dict:
    data = _batch(paths, size, batch)
    variants = _variants(data)
    differences = {name: _largest_difference(pair, calls) for name, pair in variants.items()}  # also traces
    seconds = {(name, kind): [] for name in variants for kind in ("before", "now")}
    cpu = {key: [] for key in seconds}
    for _ in range(rounds):
        for name, pair in variants.items():
            for kind, run in pair.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                for update in range(calls):
                    tf.nest.map_structure(lambda t: t.numpy(), run(tf.constant(update, tf.int64)))
                seconds[(name, kind)].append((time.perf_counter() - start) / calls)
                cpu[(name, kind)].append((time.process_time() - start_cpu) / calls)
    from .bench_step import engine_fit

    step_rate = engine_fit("efficientnetv2-b0", size, batch, step_steps, step_warmup)  # images/s, from memory
    step_s = batch / step_rate
    print(f"EfficientNetV2-B0 train step at {size} px, batch {batch}: {step_s:.2f} s ({step_rate:.2f} images/s)",
          flush=True)
    results = {"b0_train_step": {"seconds": round(step_s, 3), "images_per_s": round(step_rate, 3)}, "variants": {}}
    for name in variants:
        row = {}
        for kind in ("before", "now"):
            per_batch = float(np.median(seconds[(name, kind)]))
            row[kind] = {"images_per_s": round(batch / per_batch, 2), "seconds_per_batch": round(per_batch, 4),
                         "images_per_cpu_s": round(batch / float(np.median(cpu[(name, kind)])), 2),
                         "share_of_b0_step": round(per_batch / step_s, 4),
                         "rounds_images_per_s": [round(batch / s, 2) for s in seconds[(name, kind)]]}
        row["speedup"] = round(row["now"]["images_per_s"] / row["before"]["images_per_s"], 3)
        row["cpu_speedup"] = round(row["now"]["images_per_cpu_s"] / row["before"]["images_per_cpu_s"], 3)
        row["max_abs_difference"] = differences[name]
        results["variants"][name] = row
        before, now = row["before"], row["now"]
        print(f"  {name:<54} before {before['images_per_s']:8.2f} images/s ({before['share_of_b0_step']:.1%} of a "
              f"step)   now {now['images_per_s']:8.2f} images/s ({now['share_of_b0_step']:.1%})   x{row['speedup']:.2f} "
              f"(per CPU-s x{row['cpu_speedup']:.2f})   max |before - now| {differences[name]:.2g}", flush=True)
    return results


def add_parser(sub, default_images) -> None:
    p = sub.add_parser("device", help="images/s of the train step's augmentation and mixing (augment.device "
                                      "accelerator), before issue 28 vs now, and its share of a B0 train step")
    p.add_argument("--images", type=Path, default=default_images)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--calls", type=int, default=8, help="calls per variant and round (update seeds 0..calls-1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-steps", type=int, default=3, help="timed B0 train steps")
    p.add_argument("--step-warmup", type=int, default=2, help="untimed first B0 steps (tracing)")
    p.add_argument("--json", type=Path)
