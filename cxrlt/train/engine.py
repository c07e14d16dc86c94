"""The training loop: one train step for every tf.distribute strategy, resumable by epoch.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), and two code
paths (fit on one host, a custom loop across hosts) would drift apart. So cxrlt trains every
strategy, one device included, with the step below: `strategy.run` of a GradientTape step on
per-replica batches, gradients all-reduced by the optimizer, the loss summed over replicas (each
replica's loss is already divided by the replica count, see cxrlt.losses). Around it, ordinary
`keras.callbacks.Callback` objects get the hooks and the `logs` keys `fit` would give them
(`loss`, plus whatever a callback adds, e.g. `val_mAP`), so validation, model selection, history,
TensorBoard and the progress bar are the usual Keras pieces.

Gradient accumulation (`accumulate=N`, train.accumulate): one step is one optimizer update made of N
micro-batches, each drawn from the input as an ordinary batch; their gradients are summed (each weighted
so that the sum is the gradient of the mean loss over all N micro-batches, masked mean included) and
applied once. The N micro-batches of a step are taken and reduced inside one traced call, one after the
other (control dependencies, so only one micro-batch's activations are alive at a time), so no
accumulator outlives a call: every epoch end and checkpoint falls between updates and resume stays
exact. Everything else counts updates: `steps_per_epoch`, `steps_per_execution` (k updates = k x N
micro-batches per call), `optimizer.iterations` and hence the lr schedules. BatchNorm still normalises
over each micro-batch (use model.sync_batchnorm to widen it over the replicas).

Resume: after every finished epoch (after the callbacks, so the epoch's best model is on disk
first) a tf.train.Checkpoint of (model, optimizer, epoch, the layers' random-number state) is written to `backup_dir`, keeping the
last two. A killed fold restarts at its last finished epoch. Under MultiWorkerMirroredStrategy every
worker takes part in saving (it is a collective operation); only the chief writes into
`backup_dir`, the others into a scratch folder of their host's temp directory, which they delete.

Weight EMA (`train.ema`, `WeightEMA` below): an exponential moving average of the model's float variables,
updated after every step. At each epoch's end the averages are swapped into the model for the callbacks
(so validation scores them and model selection saves them as model.keras, which prediction then uses) and
swapped back before the checkpoint, which holds both the raw weights and the averages. With timm's warm-up
(`train.ema_warmup`, ModelEmaV3's use_warmup) the decay of update n is min(decay, 1 - (1 + (n - 1) / gamma)^-power)
(0 at the first update: the average starts as a copy).

Head warm-up (`train.freeze_backbone_epochs` F, the 2026 winner's phase 1): the first F epochs train the head's
variables only, with an optimizer of their own (`warmup_optimizer`: constant rate, optim.head_warmup_lr), the
backbone frozen (no gradient, no optimizer state: its moments start at the first full epoch, as torch's fresh
optimizer of phase 2) and no EMA; from epoch F on the main optimizer trains every variable (its schedule starts
at its own step 0) and the EMA starts from the weights the warm-up left. Both optimizers are checkpointed.
Checkpoints are numbered by the updates done (epochs x steps_per_epoch + steps).

Preemption (cxrlt.runtime.preemption): a SIGTERM raises a flag that travels with the call's loss all-reduce, so
every worker sees it after the same call; each then saves a mid-epoch checkpoint (also the step within the
epoch and the epoch's loss so far) and raises `Preempted` (exit status 75). The rerun continues from that
step: the input stream is positioned there (`resume_step`) and the epoch's logs come out as if uninterrupted.

Mixed precision: under mixed_float16 the optimizers are cxrlt's loss-scale optimizer (every replica takes the
same finite-or-skip decision, cxrlt.model.optim); a skipped step leaves the weight EMA alone. The
checkpoint holds each inner optimizer and its loss scale apart, so a fold resumes across a change of
distribute.mixed_precision (float32 <-> bfloat16 <-> float16: the loss scale starts afresh or is dropped).

Replicas: every SeedGenerator of the model folds the replica id into its seeds (cxrlt.model.seeds), so dropout
and stochastic depth draw other masks on every replica; at each epoch's end every replica takes replica 0's
BatchNorm statistics (`_agree_statistics`). A watchdog (cxrlt.runtime.watchdog) bounds a call that never
returns (train.step_timeout_s, input.data_service_timeout_s).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from ..runtime import distribute, preemption
from ..utils.errors import UserError

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """Training that cannot go on (a NaN loss, a broken input file); the message says where and what to do."""


class Trainer:
    """A logits model, its optimizer and loss under one strategy; `fit` trains epochs of it.

    The model, the optimizer and the loss must have been built inside `strategy.scope()`.
    `loss(y_true, logits, sample_weight=mask)` returns this replica's share of the global mean
    (cxrlt.losses divides by the replicas in sync).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, optimizer, loss, *,
                 jit_compile: bool = False, steps_per_execution: int = 1, preprocess=None, ema: float = 0.0,
                 accumulate: int = 1, ema_warmup: tuple[float, float] | None = None, freeze_epochs: int = 0,
                 warmup_optimizer=None, head_variables=None, watchdog=None):
        if int(steps_per_execution) < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
        if not 0.0 <= float(ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0 = off), got {ema}")
        if int(accumulate) < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        if int(freeze_epochs) < 0 or (freeze_epochs and (warmup_optimizer is None or not head_variables)):
            raise ValueError("freeze_epochs > 0 needs a warmup_optimizer and the head's variables")
        self.strategy, self.model, self.optimizer, self.loss = strategy, model, optimizer, loss
        self.steps_per_execution, self.jit_compile = int(steps_per_execution), bool(jit_compile)
        self.accumulate = int(accumulate)  # micro-batches per optimizer update
        self.preprocess = preprocess  # the replica's micro-batches -> [(images, labels[, mask])] (augment.device accelerator)
        self.chief = distribute.is_chief(strategy)
        self.freeze_epochs, self.warmup_optimizer = int(freeze_epochs), warmup_optimizer
        self.watchdog = watchdog  # a cxrlt.runtime.watchdog.StepWatchdog, or None
        with strategy.scope():
            optimizer.build(model.trainable_variables)
            if self.freeze_epochs:
                warmup_optimizer.build(list(head_variables))
            if strategy.num_replicas_in_sync > 1:
                from ..model import seeds

                seeds.fold_replica_into_seeds(model)  # each replica its own dropout / stochastic-depth masks
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.ema = WeightEMA(strategy, model, float(ema), warmup=ema_warmup) if ema else None
        # XLA compiles the forward and backward pass only: the iterator (IteratorGetNext has no XLA
        # kernel) and the optimizer update (a cross-replica merge under MirroredStrategy) stay outside.
        inline = strategy.num_replicas_in_sync > 1 and _synchronized_batchnorm(model)
        if inline and jit_compile:
            # model.sync_batchnorm: the BN layers all-reduce their moments in the forward pass, a cross-replica
            # merge that MirroredStrategy cannot run inside a nested tf.function (let alone an XLA cluster): the
            # forward and backward pass are traced inline into the replica step instead.
            raise TrainingError("model.sync_batchnorm all-reduces the BatchNorm statistics between the replicas "
                                "inside the forward pass, which cannot be XLA-compiled: turn off "
                                "distribute.jit_compile (--jit-compile) or model.sync_batchnorm")
        self._phases = {"train": _Phase(self, list(model.trainable_variables), optimizer, ema=True, inline=inline)}
        if self.freeze_epochs:
            self._phases["warmup"] = _Phase(self, list(head_variables), warmup_optimizer, ema=False, inline=inline)
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="finished_epochs")
        # where a preempted epoch stopped: updates done in it, and the sum of its calls' losses (float64: the
        # epoch's logged loss comes out to the bit); both 0 at an epoch's end
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_in_epoch")
        self._loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self._manager: tf.train.CheckpointManager | None = None
        self._backup_dir: Path | None = None

    @property
    def finished_epochs(self) -> int:
        return int(self._epoch.numpy())

    @property
    def resume_step(self) -> int:
        """Updates already done in the first unfinished epoch (a preempted fold's checkpoint), else 0."""
        return int(self._step.numpy())

    def restore(self, backup_dir: str | Path) -> int:
        """Load the last finished epoch's state from `backup_dir` if there is one; later epochs are saved there.

        Returns the number of finished epochs (0 for a fresh start).
        """
        self._backup_dir = Path(backup_dir)
        # The random state of dropout and stochastic depth (Keras SeedGenerator variables) is not part of the
        # model's checkpoint by default; without it a resumed fold would draw the first epoch's masks again.
        rng = {f"rng{i}": v.value for i, v in enumerate(v for v in self.model.variables
                                                       if v.path.endswith("seed_generator_state"))}
        extra = {"ema": self.ema.tracked()} if self.ema is not None else {}
        parts = dict(model=self.model, epoch=self._epoch, rng=rng, **extra)
        # each optimizer without its float16 loss scale, the scale beside it: the same layout with and without
        # mixed_float16, so a fold resumes across a change of distribute.mixed_precision
        optimizers = {"optimizer": self.optimizer, **({"warmup_optimizer": self.warmup_optimizer}
                                                       if self.freeze_epochs else {})}
        layout = {}
        for name, optimizer in optimizers.items():
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                layout[name] = optimizer.inner_optimizer
                layout[name.replace("optimizer", "loss_scale")] = {"scale": optimizer.dynamic_scale.value,
                                                                   "finite_steps": optimizer.step_counter.value}
            else:
                layout[name] = optimizer
        position = {"step": self._step, "loss_sum": self._loss_sum}
        checkpoint = tf.train.Checkpoint(**parts, **layout, position=position)
        latest = tf.train.latest_checkpoint(str(self._backup_dir))
        if latest:
            saved = {name.split("/", 1)[0] + ("/inner" if name.startswith("optimizer/inner_optimizer/") else "")
                     for name, _ in tf.train.list_variables(latest)}
            reading = {k: v for k, v in layout.items() if "loss_scale" not in k or k in saved}
            if "optimizer/inner" in saved:  # written by cxrlt before this layout: the loss-scale optimizer whole
                reading["optimizer"] = (self.optimizer if self.loss_scaled
                                        else tf.train.Checkpoint(inner_optimizer=self.optimizer))
                reading.pop("loss_scale", None)
            reader = tf.train.Checkpoint(**parts, **reading, **({"position": position} if "position" in saved else {}))
            reader.restore(latest).assert_existing_objects_matched()
            had_scale = "loss_scale" in saved or "optimizer/inner" in saved
            if had_scale != self.loss_scaled:
                log.info("resuming %s float16 loss scaling (distribute.mixed_precision changed)%s",
                         "with" if self.loss_scaled else "without",
                         f": the loss scale starts at {float(self.optimizer.initial_scale):g}" if self.loss_scaled
                         else ": the saved loss scale is not used")
        # Saving is collective under MultiWorkerMirroredStrategy: the other workers save too, into a scratch
        # folder of their own host (outside the run directory), deleted after each save.
        directory = (self._backup_dir if self.chief
                     else Path(tempfile.gettempdir()) / f"cxrlt-{distribute.worker_id(self.strategy)}-{os.getpid()}" / "backup")
        self._manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=2)
        return self.finished_epochs

    def _replica_gradients(self, images, labels, mask, rescale, variables, optimizer):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = self.loss(labels, logits, sample_weight=mask) * rescale
            scaled = optimizer.scale_loss(loss)  # loss scaling under mixed_float16, identity otherwise
        return loss, tape.gradient(scaled, variables)

    def _replica_step(self, phase: "_Phase", *batches):
        """One optimizer update from the replica's `accumulate` micro-batches (one without accumulation)."""
        # accelerator mode: the micro-batches are augmented and mixed together (their mix partners come from the
        # global batch of the update, see pipeline.device_preprocess)
        batches = list(self.preprocess(batches) if self.preprocess is not None else batches)
        masks = [b[2] if len(b) > 2 else None for b in batches]
        factors = self._global_mean_factors(masks)
        total, summed = None, None
        for batch, mask, factor in zip(batches, masks, factors):
            # one micro-batch after the other: the next forward pass waits for the last gradients, so the
            # activations of only one micro-batch are alive at a time
            with tf.control_dependencies([] if summed is None else [g for g in summed if g is not None]):
                loss, grads = phase.gradients(batch[0], batch[1], mask, factor)
            if summed is None:
                total, summed = loss, list(grads)
            else:
                total += loss
                summed = [a if b is None else (b if a is None else a + b) for a, b in zip(summed, grads)]
        phase.optimizer.apply_gradients(zip(summed, phase.variables))
        return total

    def _global_mean_factors(self, masks):
        """Weights of the micro-batches' losses so that their sum is the mean loss of the whole update: the
        global batch over every replica, and the N micro-batches of an accumulated step.

        Without a mask (or with a loss that is not a masked mean) each micro-batch's loss is already its
        global batch's mean (cxrlt.losses divides by the replicas in sync): each weighs 1/N.
        With a label mask (--uncertain ignore) the masked mean must be over all unmasked labels of the
        update, not the mean of each replica's (or micro-batch's) own masked mean: those with few known
        labels would weigh as much as full ones. Each replica's loss is its sum / its count / R
        (cxrlt.losses); times R x count / total count it is its sum / the total count, and the losses
        of all replicas and micro-batches add up to the masked mean of the update. The total count is
        all-reduced here, outside the XLA-compiled part."""
        n, replicas = len(masks), self.strategy.num_replicas_in_sync
        if masks[0] is None or getattr(self.loss, "reduction", None) != "masked_mean" or (replicas == 1 and n == 1):
            return [tf.constant(1.0 / n, tf.float32)] * n
        local = [tf.reduce_sum(tf.cast(m, tf.float32)) for m in masks]
        total = tf.add_n(local)
        if replicas > 1:
            total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, total)
        return [tf.math.divide_no_nan(c * replicas, total) for c in local]

    def _distributed_steps(self, phase: "_Phase", iterator, n, stop):
        """`n` train steps (optimizer updates) in one call (a loop inside the graph: one host round trip per
        call, not per step); returns [the sum of their losses (each step's loss summed over replicas), the sum
        of the replicas' `stop` flags (this worker's SIGTERM), summed in the same all-reduce as the loss]."""
        total, stops = tf.constant(0.0, tf.float32), tf.constant(0.0, tf.float32)
        scaled = isinstance(phase.optimizer, keras.optimizers.LossScaleOptimizer)
        for _ in tf.range(n):
            batches = tuple(next(iterator) for _ in range(self.accumulate))
            done = phase.optimizer.iterations.value + 0 if scaled else None  # before this step's update
            per_replica = self.strategy.run(functools.partial(self._replica_step, phase), args=batches)
            packed = self.strategy.run(lambda loss: tf.stack([tf.cast(loss, tf.float32), stop]), args=(per_replica,))
            reduced = self.strategy.reduce(tf.distribute.ReduceOp.SUM, packed, axis=None)
            total += reduced[0]
            stops = tf.maximum(stops, reduced[1])
            if self.ema is not None and phase.ema:
                with tf.control_dependencies([total]):  # after this step's update of the weights
                    # a step skipped by the loss scale (non-finite gradients) does not count
                    self.ema.update(None if done is None else tf.not_equal(phase.optimizer.iterations.value, done))
        return tf.stack([total, stops])

    def distributed_input(self, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
        """Per-worker input pipelines: `dataset_fn(ctx)` builds batches of ctx.get_per_replica_batch_size(global)
        from its own shard (ctx.input_pipeline_id of ctx.num_input_pipelines), so no worker decodes
        images another worker trains on."""
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def fit(self, dataset, *, epochs: int, steps_per_epoch: int, callbacks=(), verbose: int = 1,
            label: str = "training") -> dict:
        """Train until `epochs` epochs are finished, counting those `restore` found; checkpoint each one.

        `dataset` is a distributed dataset (see `distributed_input`) or a plain one (it is distributed as
        is). Steps run `steps_per_execution` at a time: the loss is read, checked for NaN and shown to the
        callbacks once per call (their batch hooks see the call's last step).
        Returns the history of the epochs run in this call: {key: [value per epoch]}.
        """
        if isinstance(dataset, tf.data.Dataset):
            dataset = self.strategy.experimental_distribute_dataset(dataset)
        initial_epoch = self.finished_epochs
        history: dict[str, list] = {}
        if initial_epoch >= epochs:
            log.info("%s: all %d epochs already finished (restored from %s)", label, epochs, self._backup_dir)
            return history
        resume_step = self.resume_step
        if resume_step:
            log.info("%s: resuming in epoch %d of %d after step %d of %d (restored from %s)", label, initial_epoch + 1,
                     epochs, resume_step, steps_per_epoch, self._backup_dir)
        elif initial_epoch:
            log.info("%s: resuming after epoch %d of %d (restored from %s)", label, initial_epoch, epochs, self._backup_dir)
        recorder = _EpochLogs()  # after the others: sees what they added to `logs` (CallbackList passes a copy)
        # Keras' bar first: it ends its line at the epoch's end before the callbacks log their epoch line
        # (last, as Keras adds it, the bar and the next log line shared one terminal line).
        progbar = [keras.callbacks.ProgbarLogger()] if verbose else []
        cbs = keras.callbacks.CallbackList([*progbar, *callbacks, recorder], add_history=False, add_progbar=False,
                                           model=self.model, verbose=verbose, epochs=epochs, steps=steps_per_epoch)
        self.model.stop_training = False
        iterator = iter(dataset)
        cbs.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            midway = epoch == initial_epoch and resume_step  # a preempted epoch goes on where it stopped
            if self.ema is not None and self.freeze_epochs and epoch == self.freeze_epochs and not midway:
                self.ema.reset()  # the average starts where the head warm-up left the weights (winner's phase 2)
            cbs.on_epoch_begin(epoch)
            total, step = (float(self._loss_sum.numpy()), resume_step) if midway else (0.0, 0)
            while step < steps_per_epoch:  # chunks of k steps; the last one ends exactly at the epoch's end
                n = min(self.steps_per_execution, steps_per_epoch - step)
                cbs.on_train_batch_begin(step)
                value, stop = self._run_steps(iterator, n, epoch, step, label)
                total += value
                step += n
                cbs.on_train_batch_end(step - 1, {"loss": total / step})
                if stop:
                    self._preempted(epoch, step, total, steps_per_epoch, label)
            self._agree_statistics()
            averaged = self.ema is not None and epoch >= self.freeze_epochs  # no average during the head warm-up
            if averaged:  # the callbacks validate and save the averaged weights
                self.ema.swap()
            try:
                cbs.on_epoch_end(epoch, {"loss": total / steps_per_epoch})
            finally:
                if averaged:  # training and its checkpoint go on from the raw weights
                    self.ema.swap()
            for key, value in recorder.logs.items():
                history.setdefault(key, []).append(value)
            self._epoch.assign(epoch + 1)
            self._step.assign(0)
            self._loss_sum.assign(0.0)
            self._save((epoch + 1) * steps_per_epoch, f"epoch {epoch + 1}")
            # A callback's stop (the chief's callbacks select and stop) is decided once and followed by every
            # worker: a worker that trained on alone would wait forever in the next step's all-reduce.
            self.model.stop_training = distribute.chief_decides(self.strategy, bool(self.model.stop_training))
            if self.model.stop_training:
                break
        cbs.on_train_end()
        return history

    def _agree_statistics(self) -> None:
        """Every replica takes replica 0's non-trainable float state (BatchNorm's moving statistics, and their
        averages under train.ema), at each epoch's end, before the callbacks.

        Each replica updates its own copy of the moving statistics from its own micro-batches, so the copies
        drift apart, while the checkpoint and model.keras hold replica 0's (the chief's first device). Without
        this, validation scored every replica's share with its own statistics (not the model that is saved),
        and a resumed run differed: its other replicas restart from replica 0's copy (measured with two
        workers: the same epoch losses and saved weights, another val_mAP). One all-reduce per epoch."""
        if self.strategy.num_replicas_in_sync == 1:
            return
        trainable = {id(v) for v in self.model.trainable_variables}
        floats = ("float16", "bfloat16", "float32", "float64")
        state = [v.value for v in self.model.variables if id(v) not in trainable and v.dtype in floats]
        if self.ema is not None:
            state += [a for v, a in zip(self.ema.variables, self.ema.averages) if id(v) not in trainable]
        if not state:
            return
        import numpy as np

        values = [np.asarray(v.numpy()) for v in state]  # this worker's replica 0
        flat = distribute.from_chief(self.strategy, np.concatenate([x.ravel() for x in values]).astype(np.float32))
        offset = 0
        with self.strategy.scope():
            for variable, value in zip(state, values):
                variable.assign(flat[offset:offset + value.size].reshape(value.shape).astype(value.dtype))
                offset += value.size

    def _preempted(self, epoch: int, step: int, total: float, steps_per_epoch: int, label: str) -> None:
        """Every worker got here after the same call (the flag was all-reduced): save where the epoch stands, stop."""
        self._step.assign(step)
        self._loss_sum.assign(total)
        self._save(epoch * steps_per_epoch + step, f"epoch {epoch + 1}, step {step} of {steps_per_epoch}")
        who = "this worker" if preemption.requested() else "another worker"
        message = (f"{label}: preempted (SIGTERM to {who}): the state after step {step} of {steps_per_epoch} in epoch "
                   f"{epoch + 1} is saved in {self._backup_dir}; rerun the same command"
                   f"{' on every worker' if distribute.is_multiworker(self.strategy) else ''} to go on from there "
                   f"(exit status {preemption.EXIT_STATUS})")
        log.warning("%s", message)
        raise preemption.Preempted(message)

    def _run_steps(self, iterator, n: int, epoch: int, step: int, label: str) -> tuple[float, bool]:
        """Steps step+1..step+n of `epoch`: (the sum of their losses, whether a worker was preempted). An error is
        called an input error only when the input pipeline raised it (the op that failed is the iterator's or a
        decoder's)."""
        where = f"epoch {epoch + 1}, batch {step + 1}" + (f"-{step + n}" if n > 1 else "")
        stop = tf.constant(1.0 if preemption.requested() else 0.0, tf.float32)
        if self.watchdog is not None:
            self.watchdog.call_started(where)
        try:
            phase = self._phases["warmup" if epoch < self.freeze_epochs else "train"]
            value, stops = (float(v) for v in phase.steps(iterator, tf.constant(n, tf.int32), stop))
        except tf.errors.OutOfRangeError:
            raise TrainingError(
                f"{label}: the input stream ended in {where}; training streams never end on their own, so a tf.data "
                "service worker (input.data_service) was probably lost. Restart it and rerun: the fold resumes after "
                "its last finished epoch") from None
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as err:
            first = err.message.splitlines()[0][:300]
            if not _from_input(err):
                raise TrainingError(f"{label}: the train step failed in {where}: {first}"
                                    + (" (it is XLA-compiled: try without --jit-compile)" if self.jit_compile else "")) from err
            raise TrainingError(
                f"{label}: the input pipeline failed in {where}: {first}. Find the file with python -m cxrlt.check "
                "--deep --labels <your CSV>, then fix it or train with --skip-bad") from None
        finally:
            if self.watchdog is not None:
                self.watchdog.call_finished()
        if not math.isfinite(value):
            raise TrainingError(
                f"{label}: the loss became {value} in {where}; training stopped (the best model so far and the last "
                "finished epoch are kept). Lower --lr, check the labels, or turn off mixed precision")
        return value, stops > 0

    def _save(self, number: int, what: str) -> None:
        if self._manager is None:
            return
        path = self._manager.save(checkpoint_number=number)
        if self.chief:
            log.info("%s state saved: %s", what, path)
        else:  # saving is collective under MultiWorkerMirroredStrategy; only the chief keeps it
            shutil.rmtree(Path(self._manager.directory).parent, ignore_errors=True)


class _Phase:
    """The variables one optimizer trains and the traced step functions that train them (the head warm-up of
    train.freeze_backbone_epochs is a phase of its own)."""

    def __init__(self, trainer: Trainer, variables: list, optimizer, *, ema: bool, inline: bool):
        self.variables, self.optimizer, self.ema = variables, optimizer, ema

        # closures, not partials: tf.function would trace a partial's bound objects as arguments
        def gradients(images, labels, mask, rescale):
            return trainer._replica_gradients(images, labels, mask, rescale, variables, optimizer)

        def steps(iterator, n, stop):
            return trainer._distributed_steps(self, iterator, n, stop)

        self.gradients = gradients if inline else tf.function(gradients, jit_compile=trainer.jit_compile,
                                                              reduce_retracing=True)
        self.steps = tf.function(steps)


def ema_decay(decay: float, update: int, warmup: tuple[float, float] | None = None) -> float:
    """The decay of the `update`-th EMA update (1-based): `decay`, or with timm's warm-up (ModelEmaV3.get_decay,
    use_warmup, (gamma, power)): 0 for the first update, then min(decay, 1 - (1 + (update - 1) / gamma) ** -power)."""
    if warmup is None:
        return decay
    step = max(0, update - 1)
    if step <= 0:
        return 0.0
    gamma, power = warmup
    return min(decay, 1.0 - (1.0 + step / gamma) ** -power)


class WeightEMA:
    """ema <- decay * ema + (1 - decay) * w after every train step, for every float variable of the model
    (the trainable weights and BatchNorm's moving statistics, as timm's ModelEmaV2; the dropout seed state is
    int and left out), starting from the weights the model has when the Trainer is made (or at `reset`).
    `warmup` (gamma, power): timm's ModelEmaV3 decay warm-up (:func:`ema_decay`), counted from the start.

    Keras 3's own `use_ema` averages the trainable variables only and can only overwrite the weights with the
    averages (`finalize_variable_values`), not swap them back for the next epoch; the averages here are
    tf.Variables made under the strategy's scope (mirrored like the weights), updated with
    `strategy.extended.update` in cross-replica context, so each device averages its own copy (no
    communication), and they are checkpointed with the rest of the state (the update count too).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, decay: float,
                 warmup: tuple[float, float] | None = None):
        self.strategy, self.decay, self.warmup = strategy, float(decay), warmup
        self.variables = [v for v in model.variables if v.dtype in ("float16", "bfloat16", "float32", "float64")]
        with strategy.scope():
            self.averages = [tf.Variable(v.value, trainable=False, name=f"ema_{i}")
                             for i, v in enumerate(self.variables)]
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates")

    def tracked(self) -> dict:
        averages = {f"v{i}": a for i, a in enumerate(self.averages)}
        # the count matters only to the warm-up (and checkpoints written without it resume unchanged)
        return averages if self.warmup is None else {**averages, "updates": self.updates}

    def _decay_now(self):
        """This update's decay as a tensor (the count was just incremented)."""
        if self.warmup is None:
            return tf.constant(self.decay, tf.float32)
        gamma, power = self.warmup
        step = tf.cast(tf.maximum(self.updates - 1, 0), tf.float32)
        warm = 1.0 - tf.pow(1.0 + step / gamma, -power)
        return tf.where(step > 0, tf.minimum(tf.constant(self.decay, tf.float32), warm), 0.0)

    def update(self, applied=None) -> None:
        """One step of averaging; with `applied` (a bool tensor: did this step update the weights?) a skipped
        step leaves the averages and the update count as they are."""
        self.updates.assign_add(1 if applied is None else tf.cast(applied, tf.int64))
        decay = self._decay_now()

        def step(average, value):
            new = (tf.cast(decay, average.dtype) * average
                   + tf.cast(1.0 - decay, average.dtype) * tf.cast(value, average.dtype))
            return average.assign(new if applied is None else tf.where(applied, new, average))

        for average, variable in zip(self.averages, self.variables):
            self.strategy.extended.update(average, step, args=(variable.value,))

    def reset(self) -> None:
        """Start the average again from the current weights (eager; the update count from 0)."""
        with self.strategy.scope():
            for average, variable in zip(self.averages, self.variables):
                average.assign(variable.numpy())
            self.updates.assign(0)

    def swap(self) -> None:
        """Exchange the model's weights and the averages (eager, once per epoch)."""
        with self.strategy.scope():
            for average, variable in zip(self.averages, self.variables):
                raw = variable.numpy()
                variable.assign(average.numpy())
                average.assign(raw)


def _synchronized_batchnorm(model) -> bool:
    return any(getattr(layer, "synchronized", False) for layer in model._flatten_layers()
               if isinstance(layer, keras.layers.BatchNormalization))


# Ops that only the input pipeline runs: an error raised by one of them is an input error.
_INPUT_OPS = ("IteratorGetNext", "MultiDeviceIteratorGetNextFromShard", "Decode", "ReadFile", "ParseExample",
              "TFRecord", "EnsureShape")


def _from_input(err: tf.errors.OpError) -> bool:
    text = f"{getattr(err, 'op', None) and err.op.type} {err.message}"
    return any(name in text for name in _INPUT_OPS)


class _EpochLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs: dict = {}

    def on_epoch_end(self, epoch, logs=None):
        self.logs = dict(logs or {})
