"""cxrlt.engine on a small real Keras model: resume equals an uninterrupted run, NaN and input errors stop
with a message that says where, callbacks see fit's hooks and logs."""

from __future__ import annotations

import io
import logging
import sys
from functools import partial

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxrlt.train import engine
from cxrlt.model import losses
from cxrlt.data import pipeline

CLASSES = 4


def _model(seed: int = 0, size: int = 8) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))


def _data(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)
    labels = (rng.random((n, CLASSES)) < 0.4).astype(np.float32)
    return images, labels


def _trainer(loss=None) -> engine.Trainer:
    strategy = tf.distribute.get_strategy()
    return engine.Trainer(strategy, _model(), keras.optimizers.Adam(1e-2), loss or losses.get_loss("bce"))


def _epoch_datasets(start_epoch: int, steps: int):
    """The same stream whatever the epoch we start at: epoch e reads batches e*steps... (as a resumed run would)."""
    images, labels = _data()
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat().skip(start_epoch * steps)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = _trainer()
    straight.restore(tmp_path / "a")
    straight.fit(_epoch_datasets(0, 4), epochs=3, steps_per_epoch=4, verbose=0)

    first = _trainer()
    assert first.restore(tmp_path / "b") == 0
    first.fit(_epoch_datasets(0, 4), epochs=1, steps_per_epoch=4, verbose=0)  # then the process "dies"
    resumed = _trainer()  # fresh weights and optimizer: everything must come from the checkpoint
    assert resumed.restore(tmp_path / "b") == 1
    history = resumed.fit(_epoch_datasets(1, 4), epochs=3, steps_per_epoch=4, verbose=0)
    assert len(history["loss"]) == 2  # epochs 2 and 3 only
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(resumed.optimizer.iterations.numpy()) == 12
    # the last two kept, numbered by the updates done (epochs 2 and 3 of 4 steps)
    assert {p.name for p in (tmp_path / "b").glob("ckpt-*.index")} == {"ckpt-8.index", "ckpt-12.index"}
    again = _trainer()
    assert again.restore(tmp_path / "b") == 3 and again.fit(_epoch_datasets(3, 4), epochs=3, steps_per_epoch=4, verbose=0) == {}


class _NaNAfter(losses.MultiLabelLoss):
    """BCE that turns NaN from the 6th call on: a stand-in for a diverging run."""

    calls = 0

    def elementwise(self, y_true, logits):
        _NaNAfter.calls += 1
        values = losses.get_loss("bce").call(y_true, logits)
        return values if _NaNAfter.calls < 6 else values * np.nan


def test_a_nan_loss_stops_training_naming_epoch_and_batch(tmp_path):
    trainer = _trainer(_NaNAfter())
    tf.config.run_functions_eagerly(True)  # the loss's call counter runs once per step
    try:
        trainer.restore(tmp_path)
        with pytest.raises(engine.TrainingError, match=r"loss became nan in epoch 2, batch 2"):
            trainer.fit(_epoch_datasets(0, 4), epochs=3, steps_per_epoch=4, verbose=0)
    finally:
        tf.config.run_functions_eagerly(False)
    assert trainer.finished_epochs == 1  # epoch 1 stays checkpointed; nothing after it is recorded


def test_an_unreadable_image_stops_training_with_the_fix(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = {"input": {"size": 8, "resize": "stretch", "cache": False}}
    ds = pipeline.train_dataset(np.array([str(bad)] * 8), np.zeros((8, CLASSES), np.float32), cfg, seed=0, batch_size=8)
    trainer = _trainer()
    with pytest.raises(engine.TrainingError, match="cxrlt.check --deep"):
        trainer.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)


def test_k_steps_per_call_train_exactly_like_one_step_per_call(tmp_path):
    """train.steps_per_execution: 6 steps per epoch in calls of 4 + 2 end each epoch exactly where k = 1 does."""
    runs = {}
    for k in (1, 4):
        trainer = engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(1e-2),
                                 losses.get_loss("bce"), steps_per_execution=k)
        trainer.restore(tmp_path / f"k{k}")
        runs[k] = (trainer.fit(_epoch_datasets(0, 6), epochs=2, steps_per_epoch=6, verbose=0), trainer)
    (h1, t1), (h4, t4) = runs[1], runs[4]
    assert int(t4.optimizer.iterations.numpy()) == 12 and t4.finished_epochs == 2
    np.testing.assert_allclose(h4["loss"], h1["loss"], rtol=1e-5)
    for a, b in zip(t1.model.get_weights(), t4.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="steps_per_execution"):
        engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(), losses.get_loss("bce"),
                       steps_per_execution=0)


class FailingStepLoss(losses.MultiLabelLoss):
    """A loss whose runtime assertion fails: an error of the train step, not of the input."""

    def elementwise(self, y_true, logits):
        with tf.control_dependencies([tf.debugging.assert_less(logits, -1e9, message="logits too large")]):
            return losses.get_loss("bce").call(y_true, logits)


def test_a_failing_train_step_is_not_reported_as_a_broken_image():
    trainer = _trainer(FailingStepLoss())
    with pytest.raises(engine.TrainingError, match="train step failed in epoch 1, batch 1") as caught:
        trainer.fit(_epoch_datasets(0, 2), epochs=1, steps_per_epoch=2, verbose=0)
    assert "cxrlt.check" not in str(caught.value)


def test_augmentation_and_mixing_in_the_train_step_train_like_the_host_pipeline(tmp_path):
    """augment.device accelerator through the engine: the replica step runs device_preprocess on uint8
    batches; the losses and weights equal training on the host pipeline's batches."""
    from cxrlt import config
    from cxrlt.data import augment, mix

    from .conftest import write_png

    rng = np.random.default_rng(1)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8)))
                      for i in range(16)])
    labels = (rng.random((16, CLASSES)) < 0.4).astype(np.float32)
    cfg = config.load(overrides={"input": {"size": 32, "resize": "stretch"}, "mix": {"mosaic": 0.5, "mixup": 0.5}})
    mixer = mix.mixer_from_config(cfg, 2)
    host = pipeline.train_dataset(paths, labels, cfg, seed=2, batch_size=4, mixer=mixer,
                                  augment_fn=augment.make_basic_augment(cfg["augment"]))
    raw = pipeline.train_dataset(paths, labels, cfg, seed=2, batch_size=4, on_device=True)
    results = []
    for data, preprocess in ((host, None), (raw, pipeline.device_preprocess(cfg["augment"], mixer, CLASSES))):
        trainer = engine.Trainer(tf.distribute.get_strategy(), _model(size=32), keras.optimizers.Adam(1e-2),
                                 losses.get_loss("bce"), preprocess=preprocess, steps_per_execution=2)
        results.append((trainer.fit(data, epochs=2, steps_per_epoch=2, verbose=0)["loss"], trainer.model.get_weights()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_the_device_step_runs_no_host_only_op_and_no_loop_over_the_batch(tmp_path):
    """augment.device accelerator: the train step's graph (nested functions included: the mixer's branches, the
    steps loop's body) holds no op without an accelerator kernel (ScaleAndTranslate, Python/NumPy functions,
    decoders, string ops: each a device -> host -> device copy), and the augmentation and mixing alone run no
    loop (map_fn / while) over the batch: the step's only loop is its loop over steps_per_execution."""
    from cxrlt import config
    from cxrlt.data import mix

    from .conftest import write_png
    from .device_ops import op_report

    rng = np.random.default_rng(3)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8)))
                      for i in range(8)])
    labels = (rng.random((8, CLASSES)) < 0.4).astype(np.float32)
    cfg = config.load(overrides={"input": {"size": 32, "resize": "stretch"},
                                 "mix": {"mosaic": 0.4, "mixup": 0.3, "cutmix": 0.3, "cutout": 0.5}})
    preprocess = pipeline.device_preprocess(cfg["augment"], mix.mixer_from_config(cfg, 2), CLASSES)
    raw = pipeline.train_dataset(paths, labels, cfg, seed=2, batch_size=2, on_device=True, mix_group=2)
    alone = op_report(tf.function(preprocess).get_concrete_function(tuple(raw.element_spec for _ in range(2))))
    assert alone["host_only"] == [] and alone["strings"] == [] and alone["loops"] == [], alone
    assert {"ImageProjectiveTransformV3", "GatherV2"} <= set(alone["types"])
    assert {"Case", "StatelessCase"} & set(alone["types"])  # the mixer's choice of op: a branch, not a loop
    trainer = engine.Trainer(tf.distribute.get_strategy(), _model(size=32), keras.optimizers.Adam(1e-2),
                             losses.get_loss("bce"), preprocess=preprocess, accumulate=2)
    iterator = iter(trainer.strategy.experimental_distribute_dataset(raw))
    step = trainer._phases["train"].steps.get_concrete_function(iterator, tf.constant(1, tf.int32),
                                                                tf.constant(0.0, tf.float32))
    whole = op_report(step)
    assert whole["host_only"] == [] and whole["strings"] == [], whole
    loops = [node.op for function in step.graph.as_graph_def().library.function for node in function.node_def
             if node.op in ("While", "StatelessWhile")] + [node.op for node in step.graph.as_graph_def().node
                                                           if node.op in ("While", "StatelessWhile")]
    assert len(loops) == 1  # `for _ in tf.range(n)`: the steps of one call


def test_callbacks_get_fits_hooks_and_can_add_logs():
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            logs["val_mAP"] = 0.5 + epoch  # what ValidationMetrics does
            seen.append((epoch, round(logs["loss"], 6) > 0))

        def on_train_end(self, logs=None):
            seen.append("end")

    trainer = _trainer()
    history = trainer.fit(_epoch_datasets(0, 2), epochs=2, steps_per_epoch=2, callbacks=[Recorder()], verbose=0)
    assert seen == ["begin", (0, True), (1, True), "end"]
    assert history["val_mAP"] == [0.5, 1.5] and len(history["loss"]) == 2


def test_label_masks_travel_through_the_mixers(tmp_path):
    """--uncertain ignore: a mixed label is ignored exactly when a source showing in the image had it uncertain."""
    from cxrlt.data import mix

    from .conftest import write_png

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 16, 16), dtype=np.uint8)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", image)) for i, image in enumerate(images)])
    labels = (rng.random((8, CLASSES)) < 0.5).astype(np.float32)
    mask = np.ones_like(labels)
    mask[0, 1] = mask[3, 2] = 0.0
    cfg = {"input": {"size": 16, "resize": "stretch", "cache": False}}
    x, y, m = next(iter(pipeline.train_dataset(paths, labels, cfg, seed=1, batch_size=8, mask=mask)))
    order = [int(np.argmin(np.abs(images.astype(np.float32) - xi[..., 0]).sum(axis=(1, 2)))) for xi in x.numpy()]
    assert sorted(order) == list(range(8))
    np.testing.assert_array_equal(m.numpy(), mask[order])
    np.testing.assert_array_equal(y.numpy(), labels[order])
    mixer = mix.BatchMixer.from_config({"mixup": 1.0, "mixup_alpha": 0.4, "label_mode": "clip_sum"}, seed=0)
    x, y, m = next(iter(pipeline.train_dataset(paths, labels, cfg, seed=1, batch_size=8, mask=mask, mixer=mixer)))
    assert y.shape == m.shape == (8, CLASSES)
    assert set(np.unique(m.numpy())) <= {0.0, 1.0}
    # each uncertain cell is ignored in the two outputs its image shows in (as itself and as a partner)
    assert 0 < (m.numpy() == 0).sum() <= 4
    assert ((m.numpy() == 0).sum(axis=0)[[0, 3]] == 0).all()


def _bn_model() -> keras.Model:
    """The small model plus BatchNorm: its moving statistics are averaged too."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(x))
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x))


def _assert_same_weights_and_averages(x: engine.Trainer, y: engine.Trainer, exact: bool = False) -> None:
    """Two trainers' weights and EMA averages (a killed-and-resumed one against straight): bit for bit, or to
    float32 rounding."""
    same = np.testing.assert_array_equal if exact else partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    for a, b in zip(x.model.get_weights(), y.model.get_weights()):
        same(a, b)
    for a, b in zip(x.ema.averages, y.ema.averages):
        same(a.numpy(), b.numpy())


def _ema_trainer(decay: float = 0.8) -> engine.Trainer:
    return engine.Trainer(tf.distribute.get_strategy(), _bn_model(), keras.optimizers.Adam(1e-2),
                          losses.get_loss("bce"), ema=decay)


def test_weight_ema_equals_a_numpy_reference_and_is_what_the_callbacks_see():
    """train.ema: after every step ema = d ema + (1 - d) w (from the initial weights, BatchNorm statistics
    included); at each epoch's end the callbacks (validation, model selection) see the averages, and training
    goes on from the raw weights."""
    decay, raw, seen = 0.8, [], []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([w.copy() for w in trainer.model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            seen.append([w.copy() for w in trainer.model.get_weights()])

    trainer = _ema_trainer(decay)
    ema = [w.astype(np.float64) for w in trainer.model.get_weights()]
    trainer.fit(_epoch_datasets(0, 3), epochs=2, steps_per_epoch=3, callbacks=[Watch()], verbose=0)
    assert len(raw) == 6 and len(seen) == 2
    expected = []
    for step in raw:
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, step)]
        expected.append(ema)
    for got, want in ((seen[0], expected[2]), (seen[1], expected[5])):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(seen[1], raw[-1])) > 1e-3  # the averages are not the weights
    for a, b in zip(trainer.model.get_weights(), raw[-1]):  # after the callbacks: the raw weights again
        np.testing.assert_array_equal(a, b)


def test_a_resumed_ema_run_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = _ema_trainer()
    straight.restore(tmp_path / "a")
    straight.fit(_epoch_datasets(0, 3), epochs=2, steps_per_epoch=3, verbose=0)
    first = _ema_trainer()
    first.restore(tmp_path / "b")
    first.fit(_epoch_datasets(0, 3), epochs=1, steps_per_epoch=3, verbose=0)
    resumed = _ema_trainer()
    for average in resumed.ema.averages:  # nothing may survive from the fresh trainer's own averages
        average.assign(tf.zeros_like(average))
    assert resumed.restore(tmp_path / "b") == 1
    resumed.fit(_epoch_datasets(1, 3), epochs=2, steps_per_epoch=3, verbose=0)
    _assert_same_weights_and_averages(straight, resumed)
    with pytest.raises(ValueError, match="ema must be in"):
        engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(), losses.get_loss("bce"), ema=1.0)


def test_accumulated_micro_batches_train_like_one_batch_of_their_size(tmp_path):
    """train.accumulate: 2 micro-batches of 8 per update train to the weights of 1 batch of 16 (same images),
    the masked mean over the whole update included (the two halves hold very different numbers of known
    labels), with k = 2 updates per call; optimizer.iterations counts updates."""
    images, labels = _data(64, seed=4)
    mask = np.ones_like(labels)
    mask[::16, :] = 0.0
    mask[:8, 1:] = 0.0  # the first micro-batch of each 16 knows far fewer labels than the second
    mask[16:24, 1:] = 0.0
    runs = {}
    for batch, n in ((16, 1), (8, 2)):
        data = tf.data.Dataset.from_tensor_slices((images, labels, mask)).batch(batch).repeat()
        trainer = engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(1e-2),
                                 losses.get_loss("bce"), steps_per_execution=2, accumulate=n)
        trainer.restore(tmp_path / f"n{n}")
        runs[n] = (trainer.fit(data, epochs=2, steps_per_epoch=2, verbose=0)["loss"], trainer)
    (loss1, t1), (loss2, t2) = runs[1], runs[2]
    assert int(t2.optimizer.iterations.numpy()) == 4 == int(t1.optimizer.iterations.numpy())
    np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(t1.model.get_weights(), _model().get_weights()))
    assert moved > 1e-3
    for a, b in zip(t1.model.get_weights(), t2.model.get_weights()):  # float32 sums in another order
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # and the weighting matters: the plain mean of the two micro-batches' own masked means trains differently
    plain = engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(1e-2), losses.get_loss("bce"),
                           accumulate=2)
    plain._global_mean_factors = lambda masks: [tf.constant(0.5)] * len(masks)
    other = plain.fit(tf.data.Dataset.from_tensor_slices((images, labels, mask)).batch(8).repeat(), epochs=2,
                      steps_per_epoch=2, verbose=0)["loss"]
    assert abs(other[0] - loss1[0]) > 1e-4
    with pytest.raises(ValueError, match="accumulate"):
        engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(), losses.get_loss("bce"), accumulate=0)


def test_sigterm_saves_mid_epoch_and_the_rerun_ends_bit_identical(tmp_path):
    """A real SIGTERM to this process after the first call (k = 2 steps per call, 6 steps per epoch, train.ema):
    the next call carries the flag, the trainer saves after step 4 of epoch 1 and raises Preempted (exit status 75).
    A fresh trainer resumes at that step (the stream positioned there) and ends with the uninterrupted run's
    epoch losses, weights and averages, to the bit. (Nothing was saved mid-epoch before: a SIGTERM killed the
    process and the epoch was lost.)"""
    import os
    import signal

    from cxrlt.runtime import preemption

    def trainer(folder):
        t = engine.Trainer(tf.distribute.get_strategy(), _model(), keras.optimizers.Adam(1e-2), losses.get_loss("bce"),
                           steps_per_execution=2, ema=0.5)
        t.restore(tmp_path / folder)
        return t

    def stream(skip):
        images, labels = _data()
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat().skip(skip)

    straight = trainer("straight")
    expected = straight.fit(stream(0), epochs=2, steps_per_epoch=6, verbose=0)

    class TermAfterFirstCall(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    preemption.install()
    try:
        first = trainer("preempted")
        with pytest.raises(preemption.Preempted) as stopped:
            first.fit(stream(0), epochs=2, steps_per_epoch=6, verbose=0, callbacks=[TermAfterFirstCall()])
    finally:
        signal.signal(signal.SIGTERM, previous)
        preemption.clear()
    assert stopped.value.code == preemption.EXIT_STATUS == 75
    assert "after step 4 of 6 in epoch 1" in str(stopped.value) and "rerun the same command" in str(stopped.value)
    resumed = trainer("preempted")
    assert (resumed.finished_epochs, resumed.resume_step) == (0, 4)
    history = resumed.fit(stream(4), epochs=2, steps_per_epoch=6, verbose=0)
    assert history["loss"] == expected["loss"]
    _assert_same_weights_and_averages(straight, resumed, exact=True)


def test_a_fold_resumes_across_a_change_of_mixed_precision(tmp_path):
    """distribute.mixed_precision is a resumable change, but mixed_float16 wraps the optimizer in a loss-scale
    optimizer: the checkpoint's structure differed and the restore failed deep in TensorFlow. The checkpoint now
    holds the inner optimizer and the loss scale apart: float32 -> float16 -> float32 resumes each time with the
    weights and optimizer state it left, and a checkpoint in the earlier layout (the loss-scale optimizer whole)
    still restores."""
    from cxrlt import config
    from cxrlt.model import optim

    cfg = config.load(overrides={"optim": {"lr": 1e-2}})

    def trainer(policy, folder="run"):
        keras.mixed_precision.set_global_policy(policy)
        t = engine.Trainer(tf.distribute.get_strategy(), _model(), optim.make_optimizer(cfg, 4), losses.get_loss("bce"))
        return t, t.restore(tmp_path / folder)

    try:
        plain, done = trainer("float32")
        assert done == 0
        plain.fit(_epoch_datasets(0, 4), epochs=1, steps_per_epoch=4, verbose=0)
        half, done = trainer("mixed_float16")
        assert done == 1 and half.loss_scaled and int(half.optimizer.iterations.numpy()) == 4
        for a, b in zip(plain.model.get_weights(), half.model.get_weights()):
            np.testing.assert_array_equal(a, b)
        history = half.fit(_epoch_datasets(1, 4), epochs=2, steps_per_epoch=4, verbose=0)
        assert np.isfinite(history["loss"]).all()
        back, done = trainer("float32")
        assert done == 2 and not back.loss_scaled and int(back.optimizer.iterations.numpy()) == 8
        for a, b in zip(half.model.get_weights(), back.model.get_weights()):
            np.testing.assert_array_equal(a, b)
        # the layout cxrlt wrote before: the loss-scale optimizer as one object
        legacy = tf.train.Checkpoint(model=half.model, optimizer=half.optimizer, epoch=tf.Variable(2, dtype=tf.int64),
                                     rng={})
        legacy.save(str(tmp_path / "legacy" / "ckpt"))
        again, done = trainer("mixed_float16", "legacy")
        assert done == 2 and float(again.optimizer.dynamic_scale.numpy()) == float(half.optimizer.dynamic_scale.numpy())
        for a, b in zip(half.model.get_weights(), again.model.get_weights()):
            np.testing.assert_array_equal(a, b)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ----------------------------------------------------------------------------- head warm-up, EMA warm-up

def _named_model() -> keras.Model:
    """The small model with its dense layer named "logits": cxrlt's head (models.HEAD_LAYERS), the conv its backbone."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="body")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(x))


def _warmup_trainer(ema: float = 0.5) -> engine.Trainer:
    from cxrlt.model import models

    model = _named_model()
    head = models.head_variables(model)
    return engine.Trainer(tf.distribute.get_strategy(), model, keras.optimizers.Adam(1e-2), losses.get_loss("bce"),
                          ema=ema, freeze_epochs=2, warmup_optimizer=keras.optimizers.SGD(0.5), head_variables=head)


def test_head_warm_up_trains_only_the_head_then_everything_from_a_fresh_optimizer_and_ema(tmp_path):
    """train.freeze_backbone_epochs 2 of 3 (the 2026 winner's phase 1): the backbone's weights do not move in epochs
    1-2 while the head's do; the main optimizer counts only epoch 3's steps (its schedule starts there); the EMA
    starts from the weights at epoch 3's start and is what the callbacks see from then on only."""
    raw, seen = [], []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([w.copy() for w in trainer.model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            seen.append([w.copy() for w in trainer.model.get_weights()])

    trainer = _warmup_trainer()
    start = [w.copy() for w in trainer.model.get_weights()]
    trainer.restore(tmp_path / "a")
    trainer.fit(_epoch_datasets(0, 2), epochs=3, steps_per_epoch=2, callbacks=[Watch()], verbose=0)
    body = [i for i, v in enumerate(trainer.model.weights) if v.path.startswith("body/")]
    head = [i for i, v in enumerate(trainer.model.weights) if v.path.startswith("logits/")]
    for step in raw[:4]:  # the warm-up epochs
        for i in body:
            np.testing.assert_array_equal(step[i], start[i])
    assert all(np.abs(raw[3][i] - start[i]).max() > 1e-3 for i in head)
    assert all(np.abs(raw[5][i] - raw[3][i]).max() > 1e-4 for i in body)  # epoch 3 trains the backbone too
    assert int(trainer.optimizer.iterations.numpy()) == 2 and int(trainer.warmup_optimizer.iterations.numpy()) == 4
    for got, want in zip(seen[1], raw[3]):  # no EMA in the warm-up: the callbacks see the raw weights
        np.testing.assert_array_equal(got, want)
    ema = [w.astype(np.float64) for w in raw[3]]  # the average restarts from the weights the warm-up left
    for step in raw[4:]:
        ema = [0.5 * e + 0.5 * w for e, w in zip(ema, step)]
    for got, want in zip(seen[2], ema):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # killed after the first warm-up epoch and resumed: the same weights and averages as straight through
    first = _warmup_trainer()
    first.restore(tmp_path / "b")
    first.fit(_epoch_datasets(0, 2), epochs=1, steps_per_epoch=2, verbose=0)
    resumed = _warmup_trainer()
    assert resumed.restore(tmp_path / "b") == 1
    resumed.fit(_epoch_datasets(1, 2), epochs=3, steps_per_epoch=2, verbose=0)
    _assert_same_weights_and_averages(trainer, resumed)
    with pytest.raises(ValueError, match="warmup_optimizer"):
        engine.Trainer(tf.distribute.get_strategy(), _named_model(), keras.optimizers.Adam(), losses.get_loss("bce"),
                       freeze_epochs=1)


def timm_ema_decay(update: int, decay: float, gamma: float = 1.0, power: float = 2 / 3) -> float:
    """timm ModelEmaV3.get_decay(step) with use_warmup, update_after_step 0, min_decay 0, written out."""
    step = max(0, update - 0 - 1)
    if step <= 0:
        return 0.0
    return max(min(1 - (1 + step / gamma) ** -power, decay), 0.0)


def test_ema_warm_up_follows_timms_decay_schedule():
    raw = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([w.copy() for w in trainer.model.get_weights()])

    trainer = engine.Trainer(tf.distribute.get_strategy(), _bn_model(), keras.optimizers.Adam(1e-2),
                             losses.get_loss("bce"), ema=0.9, ema_warmup=(2.0, 0.75))
    trainer.fit(_epoch_datasets(0, 4), epochs=1, steps_per_epoch=4, callbacks=[Watch()], verbose=0)
    ema = None
    decays = [timm_ema_decay(n, 0.9, 2.0, 0.75) for n in range(1, 5)]
    assert decays[0] == 0.0 and 0 < decays[1] < decays[2] < decays[3] < 0.9  # a copy, then a rising decay
    for d, step in zip(decays, raw):
        ema = [w.astype(np.float64) if ema is None else d * e + (1 - d) * w for e, w in
               zip(ema or [None] * len(step), step)]
    for average, want in zip(trainer.ema.averages, ema):
        np.testing.assert_allclose(average.numpy(), want, rtol=1e-5, atol=1e-6)
    assert engine.ema_decay(0.9, 3, (2.0, 0.75)) == pytest.approx(decays[2])


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_epoch_bar_ends_its_line_before_the_epoch_is_logged(monkeypatch):
    """On a terminal, Keras' bar (stdout) and the epoch's log line (stderr) used to share one line:
    '12/12 ━━━━ 47s 4s/step - loss: 0.08420:17:33 INFO ... epoch 1: ...'."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    handler = logging.StreamHandler(terminal)
    logger = logging.getLogger("cxrlt.test_bar")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logger.info("EPOCH-LINE %d", epoch + 1)

    try:
        _trainer().fit(_epoch_datasets(0, 2), epochs=2, steps_per_epoch=2, callbacks=[EpochLine()], verbose=1)
    finally:
        logger.removeHandler(handler)
    lines = terminal.getvalue().replace("\r", "\n").split("\n")
    assert sum("EPOCH-LINE" in line for line in lines) == 2
    assert all(line.startswith("EPOCH-LINE") for line in lines if "EPOCH-LINE" in line)
