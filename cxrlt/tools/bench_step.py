"""`python -m cxrlt.bench step`: training images/s of cxrlt against a bare `model.fit` on the same
backbone and size fed from memory (the model-bound ceiling), all measured in one run.

    bare fit, memory      keras `model.fit` with Keras' own focal loss on one in-memory batch: the ceiling
    engine, memory        cxrlt.engine's train step + cxrlt's focal loss + fit-like callbacks, same batch:
                          the cost of the custom loop (the per-step loss check, the callback hooks)
    engine, files         the same with cxrlt's training input: full-resolution files decoded, seed 002's
                          basic augmentations and mixers, as `cxrlt.train` feeds it (prepared data with --prepared)

Each variant builds its own model (same seed) and is timed by a callback between batch ends, after
`--warmup` steps (tracing). On a CPU the input pipeline competes with the model for the same cores,
so "engine, files" there measures the machine, not the design: on a GPU host the pipeline runs on the
CPU beside the accelerator (see BENCHMARKS.md for the images/s it must reach).
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from .. import config
from ..train import engine
from ..model import losses, models
from ..data import mix, pipeline

CLASSES = 26


class _BatchClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def _rate(clock: _BatchClock, warmup: int, batch: int) -> float:
    ends = clock.ends[warmup - 1:]  # from the end of the last warm-up step
    return (len(ends) - 1) * batch / (ends[-1] - ends[0])


def _memory_batch(size: int, batch: int):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    labels = (rng.random((batch, CLASSES)) < 0.1).astype(np.float32)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def _build(backbone: str, size: int):
    keras.utils.set_random_seed(0)
    return models.build(backbone, CLASSES, size, weights="none").train_model


def bare_fit(backbone: str, size: int, batch: int, steps: int, warmup: int) -> float:
    model = _build(backbone, size)
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, label_smoothing=0.01, from_logits=True))
    clock = _BatchClock()
    model.fit(_memory_batch(size, batch), epochs=1, steps_per_epoch=warmup + steps, callbacks=[clock], verbose=0)
    return _rate(clock, warmup, batch)


def engine_fit(backbone: str, size: int, batch: int, steps: int, warmup: int, dataset=None) -> float:
    strategy = tf.distribute.get_strategy()
    model = _build(backbone, size)
    trainer = engine.Trainer(strategy, model, keras.optimizers.Adam(1e-4), losses.get_loss("focal"))
    clock = _BatchClock()
    trainer.fit(dataset if dataset is not None else _memory_batch(size, batch), epochs=1,
                steps_per_epoch=warmup + steps, callbacks=[clock], verbose=0)
    return _rate(clock, warmup, batch)


def files_dataset(paths: np.ndarray, size: int, batch: int, prepared: str | None):
    from ..data import augment

    cfg = config.load(overrides={"input": {"size": size}, "data": {"prepared": prepared}})
    labels = (np.random.default_rng(1).random((len(paths), CLASSES)) < 0.1).astype(np.float32)
    return pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=batch,
                                  augment_fn=augment.make_basic_augment(cfg["augment"]),
                                  mixer=mix.BatchMixer.from_config(cfg["mix"], seed=0))


def step_bench(paths: np.ndarray, backbones, size: int, batch: int, steps: int, warmup: int,
               prepared: str | None = None) -> dict:
    results = {}
    for backbone in backbones:
        ceiling = bare_fit(backbone, size, batch, steps, warmup)
        row = {"bare fit, memory (ceiling)": {"images_per_s": round(ceiling, 3), "ratio": 1.0}}
        print(f"{backbone} {size} px batch {batch}: bare fit from memory {ceiling:.2f} images/s", flush=True)
        variants = (("engine, memory", None),
                    ("engine, prepared files" if prepared else "engine, files", files_dataset(paths, size, batch, prepared)))
        for name, dataset in variants:
            rate = engine_fit(backbone, size, batch, steps, warmup, dataset)
            row[name] = {"images_per_s": round(rate, 3), "ratio": round(rate / ceiling, 3),
                         "ratio_vs": "bare fit, memory (ceiling)"}
            print(f"  {name:<24}{rate:8.2f} images/s  x{rate / ceiling:.3f} of the ceiling", flush=True)
        results[backbone] = row
    return results


def add_parser(sub, default_images) -> None:
    from pathlib import Path

    p = sub.add_parser("step", help="training images/s of cxrlt's engine against a bare model.fit from memory")
    p.add_argument("--images", type=Path, default=default_images)
    p.add_argument("--backbones", nargs="+", default=["efficientnetv2-b0"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (tracing)")
    p.add_argument("--prepared", type=Path, help="read the training images from this cxrlt.prepare folder")
    p.add_argument("--json", type=Path)
