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
    python tests/distributed_worker.py replicas    # MirroredStrategy(2 CPUs): float16 overflow on replica 1 only, dropout masks
    python tests/distributed_worker.py workers DIR # (TF_CONFIG: two workers) float16 overflow on worker 1 only, a 15 s
                                                   # silence of worker 1 (the test stops it), a stuck worker 1 (watchdog)
    python tests/distributed_worker.py service_stall ADDRESS DIR  # training from a tf.data service whose worker the
                                                   # test stops; prints each finished step
    python tests/distributed_worker.py global_mix  # 8 replicas (CPUs) x 4 images mix like one device's batch of 32
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
    dataset = (tf.data.Dataset.from_tensor_slices((images * 1.0, labels)).repeat().batch(GLOBAL_BATCH, drop_remainder=True)
               .enumerate().map(lambda i, xy: mixer(i, xy[0], xy[1])))  # the mixers need a static batch
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


def _mixed_batches(strategy, paths, labels, cfg, mixer, *, per_replica: int, accumulate: int, on_device: bool,
                   steps: int) -> tuple[np.ndarray, np.ndarray, object]:
    """The mixed training batches every replica trains on, through the product input path (train_dataset per
    input pipeline with kfold's mix group, distributed by the strategy; in accelerator mode device_preprocess in
    strategy.run, as the engine's replica step), put in global order (micro-batch, replica, row): images
    [steps, rows, ...], labels [steps, rows, C], and the traced device function (accelerator mode)."""
    from cxrlt.data import augment, pipeline

    replicas = strategy.num_replicas_in_sync

    def dataset_fn(ctx):
        group = accumulate * replicas // ctx.num_input_pipelines
        host = {} if on_device else {"mixer": mixer, "augment_fn": augment.make_basic_augment(cfg["augment"])}
        return pipeline.train_dataset(paths, labels, cfg, seed=3, batch_size=ctx.get_per_replica_batch_size(
            replicas * per_replica), shard=(ctx.num_input_pipelines, ctx.input_pipeline_id), mix_group=group,
            on_device=on_device, **host)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    preprocess = pipeline.device_preprocess(cfg["augment"], mixer, labels.shape[1])
    run = tf.function(lambda micro: strategy.run(preprocess, args=(micro,)))
    images, mixed, traced = [], [], None
    for _ in range(steps):
        micro = tuple(next(iterator) for _ in range(accumulate))
        if on_device:
            traced = traced or run.get_concrete_function(micro)
            per_replica_out = strategy.experimental_local_results(run(micro))  # replica -> [(x, y) per micro-batch]
            rows = [per_replica_out[r][a] for a in range(accumulate) for r in range(replicas)]
        else:
            rows = [strategy.experimental_local_results(micro[a])[r] for a in range(accumulate)
                    for r in range(replicas)]
        images.append(np.concatenate([np.asarray(x) for x, _ in rows]))
        mixed.append(np.concatenate([np.asarray(y) for _, y in rows]))
    return np.stack(images), np.stack(mixed), traced


def global_mix() -> dict:
    """Mosaic's partners come from the global batch: 8 replicas x 4 images (and 8 x 2 x train.accumulate 2) train
    on the mixed batches of one device's batch of 32, on the host and in accelerator mode; every image has its
    own label (an identity matrix), so a mixed label names exactly the sources of its row."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from cxrlt import config

    from device_ops import op_report

    distribute.split_cpu(8)
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    paths = []
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    labels = np.eye(64, dtype=np.float32)
    cfg = config.load(overrides={"input": {"size": 32, "resize": "stretch"},
                                 "augment": {"scale": 0.2, "rotate_deg": 15, "brightness": 0.1, "contrast": 0.2},
                                 "mix": {"mosaic": 1.0, "mosaic_variant": "both"}})
    mixer = mix.mixer_from_config(cfg, 3)
    one, eight = distribute.get_strategy("one"), distribute.get_strategy("mirrored")
    runs = {"one": (one, 32, 1), "eight": (eight, 4, 1), "eight_accumulate": (eight, 2, 2)}
    result = {"replicas": eight.num_replicas_in_sync, "labels": {}, "image_difference": {}, "rows_distinct": {}}
    reference = None
    for mode in ("host", "device"):
        for name, (strategy, per_replica, accumulate) in runs.items():
            if (mode, name) == ("device", "one"):
                continue  # one device's accelerator batches against the host's: test_pipeline.py
            x, y, traced = _mixed_batches(strategy, paths, labels, cfg, mixer, per_replica=per_replica,
                                          accumulate=accumulate, on_device=mode == "device", steps=2)
            key = f"{mode}_{name}"
            reference = x if reference is None else reference
            result["labels"][key] = y.tolist()
            result["image_difference"][key] = float(np.abs(x - reference).max())
            # distinct label rows among the rows of each replica's micro-batch (4 or 2 rows)
            blocks = y.reshape(2, -1, per_replica, y.shape[-1])
            result["rows_distinct"][key] = min(len({row.tobytes() for row in block}) for step in blocks for block in step)
            if traced is not None and strategy is eight:
                result[f"ops_{key}"] = op_report(traced)
    return result


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


def _fp16_run(strategy, dataset_fn) -> dict:
    """Two steps of a small conv net under mixed_float16 with the product's optimizer (cxrlt.model.optim under
    the policy: the loss-scale optimizer) and train.ema 0.5; `dataset_fn` makes the second step overflow on one
    replica only. What every replica holds afterwards."""
    import keras

    from cxrlt import config
    from cxrlt.model import optim

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((SIZE, SIZE, 3))
            x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
            x = keras.layers.GlobalAveragePooling2D()(x)
            model = keras.Model(inputs, keras.layers.Dense(CLASSES, dtype="float32")(x))
            optimizer = optim.make_optimizer(config.load(overrides={"optim": {"lr": 1e-2}}), 2)
            loss = losses.get_loss("bce")
        initial = [np.asarray(w) for w in model.get_weights()]
        trainer = engine.Trainer(strategy, model, optimizer, loss, ema=0.5)
        history = trainer.fit(trainer.distributed_input(dataset_fn), epochs=1, steps_per_epoch=2, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copies = [[np.asarray(c) for c in strategy.experimental_local_results(v.value)] for v in model.trainable_variables]
    final = [c[0] for c in copies]
    averages = [np.asarray(strategy.experimental_local_results(a)[0]) for a in trainer.ema.averages]
    return {"loss": history["loss"], "updates": int(optimizer.iterations.numpy()),
            "loss_scale": float(np.asarray(optimizer.dynamic_scale.value)),
            "weights_finite": all(bool(np.isfinite(c).all()) for cs in copies for c in cs),
            "copies_differ": max(float(np.abs(c - cs[0]).max()) for cs in copies for c in cs),
            "moved": max(float(np.abs(a - b).max()) for a, b in zip(final, initial)),
            # train.ema 0.5: a skipped second step leaves ema = (w0 + w1) / 2, w1 = the weights after step 1
            "ema_error": max(float(np.abs(a - 0.5 * (b + c)).max()) for a, b, c in zip(averages, initial, final))}


def _overflowing(seed: int, overflow: bool):
    """4 images of one replica's batch: values in [0, 1], or 3000 times that (float16 gradients overflow)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32) * (3000.0 if overflow else 1.0)
    return images, (rng.random((4, CLASSES)) < 0.4).astype(np.float32)


def replicas() -> dict:
    """MirroredStrategy over two logical CPUs. float16: replica 1's half of the second step overflows; every
    replica must skip that step. Dropout: the same input on both replicas must get different masks."""
    import keras

    distribute.split_cpu(2)
    strategy = distribute.get_strategy("mirrored")
    # one input pipeline; the per-replica batches go to replica 0, 1, 0, 1: the 4th is replica 1's of step 2
    parts = [_overflowing(i, overflow=i == 3) for i in range(4)]
    images, labels = (np.concatenate(p) for p in zip(*parts))
    result = {"replicas": strategy.num_replicas_in_sync,
              "fp16": _fp16_run(strategy, lambda ctx: tf.data.Dataset.from_tensor_slices((images, labels)).batch(
                  ctx.get_per_replica_batch_size(GLOBAL_BATCH)))}
    with strategy.scope():
        inputs = keras.Input((256,))
        dropped = keras.layers.Dropout(0.5, name="dropout")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(CLASSES)(dropped))
        masks_of = keras.Model(inputs, dropped)
        optimizer = keras.optimizers.Adam()
    engine.Trainer(strategy, model, optimizer, losses.get_loss("bce"))  # as train_fold makes it
    same_input = strategy.experimental_distribute_values_from_function(lambda ctx: tf.ones((4, 256)))
    masks = [np.asarray(m) != 0 for m in strategy.experimental_local_results(
        tf.function(lambda x: strategy.run(lambda v: masks_of(v, training=True), args=(x,)))(same_input))]
    state = model.get_layer("dropout").seed_generator.state
    result["dropout"] = {"same_masks": bool(np.array_equal(masks[0], masks[1])),
                         "kept": [float(m.mean()) for m in masks],
                         "state_copies_equal": bool(np.array_equal(*[np.asarray(c) for c in
                                                                      strategy.experimental_local_results(state.value)]))}
    return result


def workers(folder: str) -> None:
    """Two worker processes (TF_CONFIG). 1: float16 with worker 1's half of the second step overflowing: both skip
    it (no hang). 2: worker 1 waits for DIR/go (the test stops it with SIGSTOP for 15 s meanwhile) while the chief
    waits in a barrier: TensorFlow's 10 s heartbeat timeout ended both; distribute.heartbeat_timeout_s keeps them.
    Prints its JSON, then 3: worker 1's input hangs in the third step: each worker's watchdog
    (train.step_timeout_s 3) must end it with exit status 2 and a message."""
    import time
    from pathlib import Path

    import keras

    from cxrlt.runtime.watchdog import StepWatchdog

    strategy = distribute.get_strategy("multiworker")
    index = distribute.worker_position(strategy)[0]
    parts = [_overflowing(10 * index + i, overflow=index == 1 and i == 1) for i in range(2)]
    images, labels = (np.concatenate(p) for p in zip(*parts))
    result = {"worker": index, "fp16": _fp16_run(strategy, lambda ctx: tf.data.Dataset.from_tensor_slices(
        (images, labels)).batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH)))}
    Path(folder, f"ready{index}").write_text("")
    while index == 1 and not Path(folder, "go").exists():
        time.sleep(0.1)
    distribute.barrier(strategy)
    result["after_silence"] = True
    print(json.dumps(result), flush=True)

    with strategy.scope():
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=4)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
        optimizer, loss = keras.optimizers.Adam(1e-3), losses.get_loss("bce")

    def hang_from_the_third(i, batch):
        x, y = batch
        if index == 1:
            x = tf.py_function(lambda i, x: (time.sleep(600) if int(i) >= 2 else None) or x, [i, x], tf.float32)
            x.set_shape([4, SIZE, SIZE, 3])
        return x, y

    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat().enumerate().map(hang_from_the_third)

    watchdog = StepWatchdog(3, label="stuck test", worker=distribute.worker_id(strategy))
    trainer = engine.Trainer(strategy, model, optimizer, loss, watchdog=watchdog)
    from cxrlt.utils import cli

    with cli.errors(), distribute.failures_end_every_worker(strategy):  # as python -m cxrlt.train runs a fold
        trainer.fit(trainer.distributed_input(dataset_fn), epochs=1, steps_per_epoch=100, verbose=0)
    print("the watchdog did not end this worker", flush=True)


def service_stall(address: str, folder: str) -> None:
    """Train from the tf.data service at ADDRESS (two sub-streams) on the PNGs in DIR, printing each finished
    step; the test stops a service worker: input.data_service_timeout_s 3 must end this process (status 2)."""
    from pathlib import Path

    import keras

    from cxrlt import config
    from cxrlt.data import pipeline, service
    from cxrlt.runtime.watchdog import StepWatchdog

    paths = np.array(sorted(str(p) for p in Path(folder).glob("*.png")))
    labels = (np.random.default_rng(0).random((len(paths), CLASSES)) < 0.4).astype(np.float32)
    cfg = config.load(overrides={"input": {"size": SIZE, "data_service": address, "data_service_streams": 2,
                                           "data_service_timeout_s": 3}, "mix": {"mosaic": 0.0}})
    dataset = pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=4)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    watchdog = StepWatchdog(0, service=address, service_timeout_s=cfg["input"]["data_service_timeout_s"],
                            last_delivery=service.DELIVERIES.last_delivery, label="service test")
    trainer = engine.Trainer(tf.distribute.get_strategy(), model, keras.optimizers.Adam(1e-3), losses.get_loss("bce"),
                             watchdog=watchdog)

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            print(f"step {batch + 1}", flush=True)

    trainer.fit(dataset, epochs=1, steps_per_epoch=100_000, verbose=0, callbacks=[Steps()])


if __name__ == "__main__":
    if sys.argv[1] == "audited":
        sys.exit(audited(sys.argv[2:]))
    if sys.argv[1] == "workers":
        sys.exit(workers(sys.argv[2]))
    if sys.argv[1] == "service_stall":
        sys.exit(service_stall(sys.argv[2], sys.argv[3]))
    result = {"mirrored": mirrored, "bfloat16": bfloat16, "jit": jit, "masked": masked, "ema": ema, "accel": accel,
              "validation": validation, "agree": agree, "parts": parts, "replicas": replicas,
              "global_mix": global_mix}[sys.argv[1]]()
    print(json.dumps(result))
