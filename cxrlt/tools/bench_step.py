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
from pathlib import Path

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


# bench heads' names: model.head plus the head options that change its cost
HEAD_VARIANTS = {
    "gap": ("gap", {}),
    "csra": ("csra", {}),                                                    # the authors' default: 1 head, T = 1
    "csra4": ("csra", {"csra_heads": 4}),                                    # 4 heads, T = 1, 2, 4, 99
    "csra_winner": ("csra", {"csra_variant": "cxrlt2026_winner", "head_norm": "batchnorm"}),  # the 2026 winner's
    "ml_decoder": ("ml_decoder", {}),                                        # frozen queries (the authors')
    "ml_decoder_trained_queries": ("ml_decoder", {"ml_decoder_train_queries": True}),
}


def _build(backbone: str, size: int, head: str = "gap"):
    keras.utils.set_random_seed(0)
    kind, options = HEAD_VARIANTS.get(head, (head, {}))
    return models.build(backbone, CLASSES, size, weights="none", head=kind,
                        head_options=models.HeadOptions(**options)).train_model


def bare_fit(backbone: str, size: int, batch: int, steps: int, warmup: int) -> float:
    model = _build(backbone, size)
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, label_smoothing=0.01, from_logits=True))
    clock = _BatchClock()
    model.fit(_memory_batch(size, batch), epochs=1, steps_per_epoch=warmup + steps, callbacks=[clock], verbose=0)
    return _rate(clock, warmup, batch)


def engine_fit(backbone: str, size: int, batch: int, steps: int, warmup: int, dataset=None, model=None) -> float:
    strategy = tf.distribute.get_strategy()
    model = model if model is not None else _build(backbone, size)
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


def head_bench(backbone: str, size: int, batch: int, steps: int, warmup: int, heads) -> dict:
    """Train images/s of one backbone with each model.head (cxrlt.engine from memory), ratios against the
    first head, and each head's parameter count: what the CSRA and ML-Decoder heads cost over GAP."""
    out, base = {}, None
    for head in heads:
        model = _build(backbone, size, head)
        params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        rate = engine_fit(backbone, size, batch, steps, warmup, model=model)
        base = base or rate
        out[head] = {"images_per_s": round(rate, 3), "ratio": round(rate / base, 3), "ratio_vs": heads[0],
                     "trainable_params": params}
        print(f"  head {head:<27}{rate:8.2f} images/s  x{rate / base:.3f} of {heads[0]}  "
              f"{params / 1e6:6.2f} M trainable parameters", flush=True)
    return out


def add_heads_parser(sub) -> None:
    p = sub.add_parser("heads", help="train images/s of one backbone with each model.head, from memory")
    p.add_argument("--heads", nargs="+", default=["gap", "csra", "ml_decoder"], choices=sorted(HEAD_VARIANTS),
                   help="model.head, or one of its variants (csra4, csra_winner, ml_decoder_trained_queries)")
    p.add_argument("--backbone", default="efficientnetv2-b0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per head")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (tracing)")
    p.add_argument("--json", type=Path)


def _small_model(size: int) -> keras.Model:
    """A model whose step costs about as much as the host's per-call dispatch: where k steps per call show."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs / 255.0)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))


def loop_bench(ks, size: int, batch: int, steps: int, rounds: int = 3, backbone: str | None = None) -> dict:
    """Train steps/s of cxrlt.engine at k = train.steps_per_execution steps per traced call, from memory.
    Each k gets its own Trainer; one untimed epoch traces it, then `rounds` timed epochs of `steps`
    steps, interleaved over the k values (median per k), ratios against the first k."""
    rates: dict[int, list[float]] = {}
    trainers = {}
    for k in ks:
        model = _build(backbone, size) if backbone else _small_model(size)
        trainer = engine.Trainer(tf.distribute.get_strategy(), model, keras.optimizers.Adam(1e-4),
                                 losses.get_loss("focal"), steps_per_execution=k)
        data = trainer.strategy.experimental_distribute_dataset(_memory_batch(size, batch))
        trainer.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)  # tracing and warm-up
        trainers[k] = (trainer, data)
    for r in range(rounds):
        for k, (trainer, data) in trainers.items():
            start = time.perf_counter()
            trainer.fit(data, epochs=trainer.finished_epochs + 1, steps_per_epoch=steps, verbose=0)
            rates.setdefault(k, []).append(steps / (time.perf_counter() - start))
    base = float(np.median(rates[ks[0]]))
    out = {}
    for k in ks:
        rate = float(np.median(rates[k]))
        out[str(k)] = {"steps_per_s": round(rate, 2), "images_per_s": round(rate * batch, 1),
                       "ratio": round(rate / base, 3), "ratio_vs": f"k={ks[0]}"}
        print(f"  k={k:<4} {rate:9.1f} steps/s  {rate * batch:9.1f} images/s  x{rate / base:.2f} of k={ks[0]}", flush=True)
    return out


def add_loop_parser(sub) -> None:
    p = sub.add_parser("loop", help="train steps/s at k steps per call (train.steps_per_execution), from memory")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 16])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=160, help="timed steps per round (a multiple of every k)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backbone", help="a cxrlt backbone instead of the small conv net")
    p.add_argument("--json", type=Path)


def add_parser(sub, default_images) -> None:
    p = sub.add_parser("step", help="training images/s of cxrlt's engine against a bare model.fit from memory")
    p.add_argument("--images", type=Path, default=default_images)
    p.add_argument("--backbones", nargs="+", default=["efficientnetv2-b0"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (tracing)")
    p.add_argument("--prepared", type=Path, help="read the training images from this cxrlt.prepare folder")
    p.add_argument("--json", type=Path)
