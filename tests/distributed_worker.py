"""Run by tests/test_distribute.py in a fresh process: the CPU must be split into two logical devices
before TensorFlow runs its first op, which a pytest process that already used TensorFlow cannot do.

    python tests/distributed_worker.py mirrored    # one device vs MirroredStrategy(2 CPUs): same losses, same weights
    python tests/distributed_worker.py bfloat16    # mixed_bfloat16 training with focal loss and the mixers stays finite
    python tests/distributed_worker.py jit         # --jit-compile trains on one device and under MirroredStrategy(2 CPUs)
    python tests/distributed_worker.py masked      # the masked mean (--uncertain ignore) is global under MirroredStrategy
    python tests/distributed_worker.py ema         # train.ema under MirroredStrategy(2 CPUs) equals one device
    python tests/distributed_worker.py accel       # model.sync_batchnorm and train.accumulate under MirroredStrategy
    python tests/distributed_worker.py validation  # validation spread over MirroredStrategy(2 CPUs) scores as one device
    python tests/distributed_worker.py parts       # per-part rates and decays, clip_norm, head warm-up, EMA warm-up
                                                   # under MirroredStrategy(2 CPUs) equal one device
    python tests/distributed_worker.py agree       # (TF_CONFIG: two workers) broadcast, agreement, a worker's failure
    python tests/distributed_worker.py audited ARGS  # python -m cxrlt.train ARGS, recording every file this process
                                                     # changes under $CXRLT_AUDIT_ROOTS into $CXRLT_AUDIT_OUT (JSON)

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cxrlt.runtime import distribute
from cxrlt.train import engine
from cxrlt.model import losses, models
from cxrlt.data import mix  # noqa: E402

CLASSES, SIZE, GLOBAL_BATCH, STEPS = 5, 32, 8, 2


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (GLOBAL_BATCH * STEPS, SIZE, SIZE, 3)).astype(np.float32)
    labels = (rng.random((GLOBAL_BATCH * STEPS, CLASSES)) < 0.3).astype(np.float32)
    return images, labels


def _train(strategy, initial_weights, images, labels):
    """Two steps of cxrlt's engine on the same global batches; per-replica batches are consecutive halves."""
    with strategy.scope():
        # ConvNeXt normalises per image (LayerNorm), so a global batch split over replicas is the same
        # computation as the whole batch on one device; BatchNorm backbones would differ by design.
        built = models.build("convnext-tiny", CLASSES, SIZE, weights="none", dropout=0.0)
        built.train_model.set_weights(initial_weights)
        import keras

        optimizer = keras.optimizers.Adam(1e-3)
        loss = losses.get_loss("focal")
    trainer = engine.Trainer(strategy, built.train_model, optimizer, loss)

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(per_replica).repeat()

    history = trainer.fit(trainer.distributed_input(dataset_fn), epochs=STEPS, steps_per_epoch=1, verbose=0)
    return history["loss"], [np.asarray(w) for w in built.train_model.get_weights()]


def mirrored() -> dict:
    distribute.split_cpu(2)
    images, labels = _data()
    import keras

    keras.utils.set_random_seed(0)
    initial = models.build("convnext-tiny", CLASSES, SIZE, weights="none", dropout=0.0).train_model.get_weights()
    one_loss, one_weights = _train(distribute.get_strategy("one"), initial, images, labels)
    mirrored_strategy = distribute.get_strategy("mirrored")
    two_loss, two_weights = _train(mirrored_strategy, initial, images, labels)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, initial))
    try:
        distribute.check_batch(mirrored_strategy, 3)
        odd_batch_error = None
    except distribute.DistributeError as err:
        odd_batch_error = str(err)
    return {"replicas": mirrored_strategy.num_replicas_in_sync, "odd_batch_error": odd_batch_error,
            "one_device_losses": one_loss,
            "mirrored_losses": two_loss, "max_weight_difference": diff, "max_weight_change": moved}


def bfloat16() -> dict:
    import keras

    policy = distribute.set_precision(True)
    keras.utils.set_random_seed(0)
    images, labels = _data(1)
    strategy = distribute.get_strategy("one")
    with strategy.scope():
        built = models.build("efficientnetv2-b0", CLASSES, SIZE, weights="none", dropout=0.2)
        optimizer = keras.optimizers.Adam(1e-2)  # a high rate on purpose: overflow would show as NaN
        loss = losses.get_loss("focal")
    mixer = mix.BatchMixer.from_config({"mosaic": 0.4, "mixup": 0.3, "cutmix": 0.3, "cutout": 0.5}, seed=0)
    dataset = (tf.data.Dataset.from_tensor_slices((images * 1.0, labels)).repeat().batch(GLOBAL_BATCH).enumerate()
               .map(lambda i, xy: mixer(i, xy[0], xy[1])))
    trainer = engine.Trainer(strategy, built.train_model, optimizer, loss)
    history = trainer.fit(dataset, epochs=3, steps_per_epoch=2, verbose=0)
    logits = built.train_model(images[:GLOBAL_BATCH], training=False)
    return {"policy": policy, "losses": history["loss"], "logits_dtype": logits.dtype.name,
            "conv_compute_dtype": next(layer.compute_dtype for layer in built.train_model.layers
                                       if isinstance(layer, keras.layers.Conv2D)),
            "logits_finite": bool(np.isfinite(np.asarray(logits)).all())}


def _small_run(strategy, tensors, *, compiled: bool = False, ema: float = 0.0, callbacks=()) -> dict:
    """Two steps (k = 2 per call) of a small conv net from fixed weights on the same global batches."""
    import keras

    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs / 255.0)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
        optimizer = keras.optimizers.Adam(1e-2)
        loss = losses.get_loss("focal")
    trainer = engine.Trainer(strategy, model, optimizer, loss, jit_compile=compiled, steps_per_execution=2, ema=ema)

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices(tensors).batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH)).repeat()

    history = trainer.fit(trainer.distributed_input(dataset_fn), epochs=1, steps_per_epoch=STEPS, verbose=0,
                          callbacks=[cb(model) for cb in callbacks])
    return {**({"ema": [float(np.abs(a.numpy()).sum()) for a in trainer.ema.averages],
                "ema_copies_differ": max(float(np.abs(np.asarray(c) - a.numpy()).max())
                                         for a in trainer.ema.averages for c in strategy.experimental_local_results(a))}
               if ema else {}),"loss": history["loss"], "steps": int(optimizer.iterations.numpy()), "replicas": strategy.num_replicas_in_sync,
            "weights": [float(np.abs(w).sum()) for w in model.get_weights()]}


def jit() -> dict:
    """XLA-compiled steps train like plain ones, on one device and under MirroredStrategy."""
    distribute.split_cpu(2)
    images, labels = _data(2)
    return {f"{name}_{'xla' if compiled else 'plain'}": _small_run(distribute.get_strategy(name), (images, labels),
                                                                    compiled=compiled)
            for name in ("one", "mirrored") for compiled in (False, True)}


def masked() -> dict:
    """--uncertain ignore under MirroredStrategy: the two replicas' halves hold very different numbers of
    known labels (the first half of each batch almost all masked); the loss is the global masked mean."""
    distribute.split_cpu(2)
    images, labels = _data(3)
    mask = np.ones_like(labels)
    for b in range(STEPS):
        mask[b * GLOBAL_BATCH: b * GLOBAL_BATCH + GLOBAL_BATCH // 2, 1:] = 0.0
    return {name: _small_run(distribute.get_strategy(name), (images, labels, mask)) for name in ("one", "mirrored")}


def ema() -> dict:
    """train.ema under MirroredStrategy: each device averages its own copy; the averages, and the weights the
    epoch-end callbacks see (every replica's copy swapped in), equal one device's."""
    import keras

    distribute.split_cpu(2)
    images, labels = _data(4)
    out = {}
    for name in ("one", "mirrored"):
        strategy, seen = distribute.get_strategy(name), {}

        class Seen(keras.callbacks.Callback):
            def __init__(self, model):
                super().__init__()
                self.watched = model

            def on_epoch_end(self, epoch, logs=None):
                seen["weights"] = [float(np.abs(v.numpy()).sum()) for v in self.watched.weights]
                seen["copies_differ"] = max(float(np.abs(np.asarray(c) - v.numpy()).max()) for v in self.watched.weights
                                            for c in strategy.experimental_local_results(v.value))

        out[name] = {**_small_run(strategy, (images, labels), ema=0.5, callbacks=[Seen]), "seen": seen}
    return out


def _bn_run(strategy, images, labels, *, sync: bool, compiled: bool = False) -> dict:
    """One step of a small conv -> BatchNorm net on one global batch of 8; its BN moving statistics after it."""
    import keras

    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(4, 3, strides=4, use_bias=False)(inputs / 255.0)
        x = keras.layers.BatchNormalization(momentum=0.5, name="bn")(x)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
        model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
        if sync:
            assert models.synchronize_batchnorm(model) == 1
        optimizer = keras.optimizers.SGD(0.1)
        loss = losses.get_loss("bce")
    trainer = engine.Trainer(strategy, model, optimizer, loss, jit_compile=compiled)

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH)).repeat()

    trainer.fit(trainer.distributed_input(dataset_fn), epochs=1, steps_per_epoch=1, verbose=0)
    bn = model.get_layer("bn")
    return {"moving_mean": np.asarray(bn.moving_mean).tolist(), "moving_variance": np.asarray(bn.moving_variance).tolist(),
            "kernel": float(np.abs(np.asarray(model.layers[-1].kernel)).sum())}


def _accumulated_run(strategy, tensors, *, global_batch: int, accumulate: int) -> dict:
    import keras

    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs / 255.0)
        model = keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(x)))
        optimizer = keras.optimizers.Adam(1e-2)
        loss = losses.get_loss("bce")
    trainer = engine.Trainer(strategy, model, optimizer, loss, accumulate=accumulate)

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices(tensors).batch(ctx.get_per_replica_batch_size(global_batch)).repeat()

    history = trainer.fit(trainer.distributed_input(dataset_fn), epochs=1, steps_per_epoch=1, verbose=0)
    return {"loss": history["loss"], "updates": int(optimizer.iterations.numpy()), "replicas": strategy.num_replicas_in_sync,
            "weights": [np.asarray(w).ravel().tolist() for w in model.get_weights()]}


def accel() -> dict:
    """model.sync_batchnorm: BN statistics over the global batch under MirroredStrategy(2 CPUs) equal one
    device's on the whole batch (and differ without sync); train.accumulate under MirroredStrategy: 2
    micro-batches of a global 8 (4 per replica) train like one device's batch of 16, masked mean included."""
    distribute.split_cpu(2)
    images, labels = _data(4)
    images[GLOBAL_BATCH // 2:GLOBAL_BATCH] *= 0.2  # the second replica's half is much darker: its own statistics differ
    one, mirrored = distribute.get_strategy("one"), distribute.get_strategy("mirrored")
    result = {"one": _bn_run(one, images, labels, sync=False),
              "mirrored_sync": _bn_run(mirrored, images, labels, sync=True),
              "mirrored_plain": _bn_run(mirrored, images, labels, sync=False)}
    try:
        _bn_run(mirrored, images, labels, sync=True, compiled=True)
        result["sync_xla_error"] = None
    except engine.TrainingError as err:
        result["sync_xla_error"] = str(err)
    built = models.build("efficientnetv2-b0", CLASSES, SIZE, weights="none", sync_batchnorm=True)
    import keras

    bns = [layer for layer in built.model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    result["build_bn_layers"], result["build_bn_synced"] = len(bns), sum(bool(layer.synchronized) for layer in bns)
    mask = np.ones_like(labels)
    mask[:GLOBAL_BATCH // 2, 1:] = 0.0  # the first micro-batch's first replica knows few labels
    result["accumulate_one"] = _accumulated_run(one, (images, labels, mask), global_batch=2 * GLOBAL_BATCH, accumulate=1)
    result["accumulate_mirrored"] = _accumulated_run(mirrored, (images, labels, mask), global_batch=GLOBAL_BATCH,
                                                     accumulate=2)
    return result


def _validated_run(strategy, images, labels, val_images, val_labels) -> dict:
    """Scores of a list of 37 images (odd: the replicas' last batches are uneven, one replica idles) before
    training, then one epoch of training with the fold's validation callback, under `strategy`."""
    import keras

    from cxrlt.predict.step import Predictor
    from cxrlt.train import callbacks

    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs / 255.0)
        logits = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(x))
        model = keras.Model(inputs, logits)
        probs_model = keras.Model(inputs, keras.layers.Activation("sigmoid", dtype="float32")(logits))
        optimizer = keras.optimizers.Adam(1e-2)
        loss = losses.get_loss("focal")
    predictor = Predictor(probs_model, strategy=strategy)

    def validate():
        return predictor.shard(len(val_images), lambda rows, batch: tf.data.Dataset.from_tensor_slices(
            val_images[rows]).batch(batch), batch_size=4, label="validation")

    before = validate()
    hflip = Predictor(probs_model, ("identity", "hflip"), strategy=strategy).shard(
        len(val_images), lambda rows, batch: tf.data.Dataset.from_tensor_slices(val_images[rows]).batch(batch),
        batch_size=5)
    trainer = engine.Trainer(strategy, model, optimizer, loss)
    dataset_fn = lambda ctx: tf.data.Dataset.from_tensor_slices((images, labels)).batch(  # noqa: E731
        ctx.get_per_replica_batch_size(GLOBAL_BATCH)).repeat()
    history = trainer.fit(trainer.distributed_input(dataset_fn), epochs=1, steps_per_epoch=STEPS, verbose=0,
                          callbacks=[callbacks.ValidationMetrics(validate, val_labels, [f"c{i}" for i in range(CLASSES)], None)])
    return {"replicas": strategy.num_replicas_in_sync, "before": before.tolist(), "tta": hflip.tolist(),
            "after": validate().tolist(), "val_mAP": history["val_mAP"], "loss": history["loss"]}


def validation() -> dict:
    distribute.split_cpu(2)
    images, labels = _data(4)
    rng = np.random.default_rng(5)
    val_images = rng.uniform(0, 255, (37, SIZE, SIZE, 3)).astype(np.float32)
    val_labels = (rng.random((37, CLASSES)) < 0.4).astype(np.float32)
    return {name: _validated_run(distribute.get_strategy(name), images, labels, val_images, val_labels)
            for name in ("one", "mirrored")}


def _parts_run(strategy, images, labels, *, keras_clip: bool = False) -> dict:
    """Two epochs of 2 steps: epoch 1 the head warm-up (backbone frozen), epoch 2 everything, with optim's per-part
    rates and decays, clip_norm 0.05 (far below the gradients' norm: it always clips) and the EMA warm-up; or, with
    `keras_clip`, one plain epoch with Keras' own global_clipnorm (which clips each replica's share)."""
    import keras

    from cxrlt import config
    from cxrlt.model import models, optim

    cfg = config.load(overrides={
        "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01, "head_weight_decay": 0.05, "backbone_lr_mult": 0.1,
                  "decay_norms_and_biases": False, "clip_norm": 0.05, "head_warmup_lr": 0.05},
        "train": {"epochs": 2, "batch_size": GLOBAL_BATCH, "freeze_backbone_epochs": 1, "ema": 0.5, "ema_warmup": True}})
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="body")(inputs / 255.0)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(x))
        head = models.head_variables(model)
        loss = losses.get_loss("focal")
        if keras_clip:
            optimizer, warmup = keras.optimizers.SGD(0.5, global_clipnorm=0.05), None
        else:
            optimizer = optim.make_optimizer(cfg, STEPS, head_variables=head)
            warmup = optim.make_optimizer(cfg, STEPS, head_variables=head, warmup=True)
    trainer = engine.Trainer(strategy, model, optimizer, loss, ema=0.0 if keras_clip else 0.5,
                             ema_warmup=None if keras_clip else (1.0, 2 / 3), freeze_epochs=0 if keras_clip else 1,
                             warmup_optimizer=warmup, head_variables=head)

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH)).repeat()

    history = trainer.fit(trainer.distributed_input(dataset_fn), epochs=1 if keras_clip else 2, steps_per_epoch=STEPS,
                          verbose=0)
    return {"replicas": strategy.num_replicas_in_sync, "loss": history["loss"],
            "weights": [np.asarray(w).ravel().tolist() for w in model.get_weights()],
            "ema": [] if keras_clip else [a.numpy().ravel().tolist() for a in trainer.ema.averages],
            "updates": int(optimizer.iterations.numpy()),
            "warmup_updates": 0 if keras_clip else int(warmup.iterations.numpy())}


def parts() -> dict:
    """optim.backbone_lr_mult / head_weight_decay / decay_norms_and_biases / clip_norm, train.freeze_backbone_epochs
    and train.ema_warmup under MirroredStrategy(2 CPUs) against one device; Keras' global_clipnorm for contrast."""
    distribute.split_cpu(2)
    images, labels = _data(6)
    images[GLOBAL_BATCH // 2:GLOBAL_BATCH] *= 0.1  # the replicas' halves differ: their gradients (and norms) too
    one, mirrored = distribute.get_strategy("one"), distribute.get_strategy("mirrored")
    return {"one": _parts_run(one, images, labels), "mirrored": _parts_run(mirrored, images, labels),
            "keras_one": _parts_run(one, images, labels, keras_clip=True),
            "keras_mirrored": _parts_run(mirrored, images, labels, keras_clip=True)}


def agree() -> dict:
    """Under MultiWorkerMirroredStrategy (TF_CONFIG names two workers): the chief's values reach both workers,
    equal values pass `agree`, different ones stop both workers with the same error, and an exception on
    worker 1 ends the chief's pending collective with worker 1's message."""
    strategy = distribute.get_strategy("multiworker")
    index = distribute.worker_position(strategy)[0]
    result = {"chief": distribute.is_chief(strategy), "position": distribute.worker_position(strategy),
              "from_chief": distribute.from_chief(strategy, [7.0, float(index)] if index == 0 else [1.0, 2.0]).tolist(),
              "stop": distribute.chief_decides(strategy, index == 0),
              "sum": distribute.sum_over_workers(strategy, [index + 1.0, 1.0]).tolist()}
    distribute.agree(strategy, "the same list", distribute.digest(np.array(["a", "b"]), 3))
    try:
        distribute.agree(strategy, "the image list", distribute.digest(np.array(["a", "b"]), index))
        result["differ"] = None
    except distribute.DistributeError as err:
        result["differ"] = str(err)
    try:
        with distribute.failures_end_every_worker(strategy):
            if index == 1:
                raise ValueError("worker 1 cannot read its shard")
            distribute.barrier(strategy)  # the chief waits here for a worker that will never come
        result["failure"] = None
    except (distribute.WorkerFailed, ValueError) as err:
        result["failure"] = f"{type(err).__name__}: {err}"
    return result


# Python's audit events that change a file or folder (os.replace raises "os.rename"); builtins.open and os.open
# raise "open", with a mode or with flags that say whether it writes.
_CHANGES = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.link", "os.symlink",
            "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audited(argv) -> int:
    """Run cxrlt.train in this process and record (event, path) for every Python-level change under the roots.
    TensorFlow's own C++ writes (checkpoints, TensorBoard events) are not seen; the test looks at those files."""
    from pathlib import Path

    from cxrlt.train import kfold

    roots = [os.path.realpath(r) for r in os.environ["CXRLT_AUDIT_ROOTS"].split(os.pathsep)]
    events, recording = [], [True]

    def under_roots(path) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            path = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        return path if any(path == r or path.startswith(r + os.sep) for r in roots) else None

    def hook(event, args):
        if not recording[0]:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            paths = [path] if writes else []
        elif event in _CHANGES:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            hit = under_roots(path)
            if hit:
                events.append([event, hit])

    sys.addaudithook(hook)
    try:
        return kfold.main(argv)
    finally:
        recording[0] = False
        Path(os.environ["CXRLT_AUDIT_OUT"]).write_text(json.dumps(events))


if __name__ == "__main__":
    if sys.argv[1] == "audited":
        sys.exit(audited(sys.argv[2:]))
    result = {"mirrored": mirrored, "bfloat16": bfloat16, "jit": jit, "masked": masked, "ema": ema, "accel": accel,
              "validation": validation, "agree": agree, "parts": parts}[sys.argv[1]]()
    print(json.dumps(result))
