"""Train K patient-grouped folds of one config; the CLI is thin, the steps are below in order.

    python -m cxrlt.train --size 768                       # seed 002's best single model, 5 folds
    python -m cxrlt.train --config configs/demo.yaml --demo # the embedded demo data, minutes on a CPU

A rerun of the same command skips finished folds and resumes an interrupted one at its last
finished epoch. When every fold is done, the out-of-fold predictions and scores are assembled.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..utils import atomic, cli
from ..data import dataset, editions, folds as folds_mod, single_label
from .. import config
from ..config import tasks
from ..evaluate import metrics, single_label as single_label_metrics
from ..runtime import runs

log = logging.getLogger("cxrlt.train")

NO_DATA = (
    "no training labels given. Pass --labels path/to/train.csv and --image-root path/to/mimic-cxr-jpg/2.0.0 "
    "(or set data.labels in a config). " + dataset.CXRLT_HELP
)
# Settings that may change between invocations of one run without making it another run.
RESUMABLE_CHANGES = ("train.fold", "train.verbose", "train.step_timeout_s", "input.data_service_timeout_s", "distribute.", "predict.batch_size", "predict.study_aggregation",
                     "predict.view_weights", "ensemble.", "data.demo_dir", "data.check_images",
                     "data.prepared",  # prepared data: the same images, pre-resized
                     "fuse.")  # python -m cxrlt.fuse's settings: a fused run's, never the backbone's


def resolve_data(cfg: dict, strategy=None) -> dataset.LabelTable:
    """Point the config at its data (generating the demo set if asked) and read the training table.

    With a multi-worker `strategy` only the chief generates, screens and records (image_check.csv,
    excluded_images.csv); every worker reads the same label CSV, checks that it reads the same list as the
    chief, and trains on the images the chief kept (its --skip-bad decision, received in one all-reduce).
    """
    chief, multi = _roles(strategy)
    d = cfg["data"]
    if d["demo"] and d.get("demo_task", "multilabel") != "multilabel":
        _single_label_demo(cfg, chief, strategy)
    elif d["demo"]:
        from ..data import synthetic

        edition = d.get("demo_edition", "cxrlt2023")
        # the 2023 demo as it always was; another edition's layout beside it
        folder = Path(d["demo_dir"] if edition == "cxrlt2023" else f"{d['demo_dir']}-{edition}")
        if chief:
            demo = synthetic.make_demo(folder, n_patients=d["demo_patients"], image_size=d["demo_image_size"],
                                       edition=edition)
        if multi:
            from ..runtime import distribute

            distribute.barrier(strategy)  # the workers read the demo set once the chief has made it
        if not chief:
            demo = synthetic.demo_files(folder, edition)
        d.update(labels=str(demo.train_csv), image_root=str(demo.root), test_labels=str(demo.test_csv),
                 test_image_root=str(demo.root))
        if edition == "cxrlt2023":
            d.update(classes="cxrlt2023")
        else:
            d.update(edition=edition, exclude=str(demo.exclude) if demo.exclude else d.get("exclude"))
    if not d["labels"]:
        raise config.ConfigError(NO_DATA)
    for key in ("labels", "image_root", "test_labels", "test_image_root", "prepared"):
        if d[key]:
            d[key] = str(Path(d[key]).expanduser().resolve())
    if d.get("exclude"):
        d["exclude"] = str(Path(d["exclude"]).expanduser().resolve())
    if cfg["model"]["init"]:  # a rerun from another folder finds the same source
        cfg["model"]["init"] = str(Path(cfg["model"]["init"]).expanduser().resolve())
    # the exclusion list and the split are applied while reading, so a removed (e.g. broken) image is never
    # screened; an image root of sub-folders is indexed once, the index cached in the run directory.
    # data.task auto is settled here (one log line says what the file is and why); the config the run saves is explicit
    record = Path(cfg["out"]) / cfg["name"]
    table, _ = single_label.resolve_task(cfg, d["labels"], image_root=d["image_root"], classes=d["classes"],
                                         uncertain=d["uncertain"], allow_outside_root=d["allow_outside_root"],
                                         check_files=d["check_images"] == "off", index_dir=record if chief else None,
                                         **dataset.training_rows(d))
    if multi:
        from ..runtime import distribute

        # ids and labels, not paths: hosts may mount the shared images at different places
        distribute.agree(strategy, f"the training list {d['labels']} (image ids and labels)",
                         distribute.digest(table.ids, table.labels, table.mask))
    if d["check_images"] != "off":
        # Pre-flight: every bad image is named now, not as a decode error hours into the run; with
        # --skip-bad they are left out and listed in the run directory (nothing dropped unrecorded).
        from ..data import check

        screened = table
        if chief:
            deep = d["check_images"] == "deep"
            window = cfg["input"].get("dicom_window", "stored")
            screened = check.screen_table(table, deep=deep, skip_bad=d["skip_bad"], record_dir=record,
                                          input_size=cfg["input"]["size"], dicom_window=window)
            if d["test_labels"]:  # the submission needs every test image: bad ones stop the run, never skipped
                test, _ = single_label.read_table(d["test_labels"], task=table.task, image_root=d["test_image_root"],
                                                  label_column=d.get("label_column"), classes=list(table.classes),
                                                  require_labels=False, uncertain=d["uncertain"], edition=table.edition,
                                                  allow_outside_root=d["allow_outside_root"], index_dir=record)
                check.screen_table(test, deep=deep, record_dir=record / "test_images", what="test", can_skip=False,
                                   dicom_window=window)
        if multi:
            kept = distribute.from_chief(strategy, np.isin(table.ids, screened.ids))
            screened = screened if chief else table.subset(np.flatnonzero(kept > 0.5))
        table = screened
    return table


def _single_label_demo(cfg: dict, chief: bool, strategy) -> None:
    """--demo-task multiclass|ordinal: the synthetic single-label set (made by the chief), as the data."""
    from ..data import synthetic_single

    d = cfg["data"]
    folder = synthetic_single.folder_for(d["demo_dir"], d["demo_task"])
    if chief:
        synthetic_single.make_single_label_demo(folder, d["demo_task"], n_patients=d["demo_patients"],
                                                image_size=d["demo_image_size"])
    if _roles(strategy)[1]:
        from ..runtime import distribute

        distribute.barrier(strategy)
    d.update(labels=str(folder / "train.csv"), image_root=str(folder), test_labels=str(folder / "test.csv"),
             test_image_root=str(folder))
    if d["classes"] in ("edition", "auto"):  # every class of the demo, also one a small training split lacks
        d["classes"] = synthetic_single.class_names(d["demo_task"])


def _roles(strategy) -> tuple[bool, bool]:
    """(this process is the chief, there are several worker processes); no strategy: one process."""
    if strategy is None:
        return True, False
    from ..runtime import distribute

    return distribute.is_chief(strategy), distribute.is_multiworker(strategy)


STRIDE = 32  # every backbone's total down-sampling: its last feature map is input.size / 32 cells wide


def note_input_size(cfg: dict) -> None:
    size = cfg["input"]["size"]
    if size % STRIDE:
        log.warning("input.size %d is not a multiple of %d, the backbone's total stride: its last feature map "
                    "covers %d px and the last %d px of each side are seen only in part; use %d or %d",
                    size, STRIDE, size // STRIDE * STRIDE, size % STRIDE, size // STRIDE * STRIDE,
                    (size // STRIDE + 1) * STRIDE)


def open_run(cfg: dict, table: dataset.LabelTable, force: bool, strategy=None, command: list[str] | None = None
             ) -> runs.Run:
    """Create the run directory, or check that an existing one was made with this config (the chief only:
    the other workers write nothing; a refusal on the chief stops them too). `command` (the train
    arguments) is appended to the run's command.txt: every command that trained it, in order."""
    run = runs.Run(Path(cfg["out"]) / cfg["name"])
    if not _roles(strategy)[0]:
        return run
    if run.config_path.exists():
        saved = run.config()
        saved.setdefault("data", {}).setdefault("task", "multilabel")  # runs made before data.task: multi-label
        changed = config.diff(saved, cfg, ignore=RESUMABLE_CHANGES)
        if changed and not force and not run.trained_anything():
            log.warning("%s: replacing the config of a run that finished no epoch (%s%s)", run.root,
                        "; ".join(changed[:4]), "; ..." if len(changed) > 4 else "")
            run.folds_csv.unlink(missing_ok=True)  # made from the old config's folds and seed
            changed = []
        if changed and not force:
            raise config.ConfigError(
                f"{run.root} holds a run with another config ({'; '.join(changed[:4])}"
                f"{'; ...' if len(changed) > 4 else ''}). Use another --name/--out, or --force to continue it anyway"
            )
    atomic.write_text(run.config_path, config.dump(cfg))
    if command is not None:
        runs.record_command(run, "python -m cxrlt.train", command)
    counts = table.class_counts()
    edition = editions.get(table.edition)
    atomic.write_json(run.classes_json, {
        "classes": list(table.classes),
        "train_counts": counts.astype(int).tolist(),
        "groups": editions.class_groups(table.edition, table.classes, counts),
        # what a submission of this run looks like: the edition's id column and column order
        "edition": table.edition,
        "task": table.task,  # multilabel | multiclass | ordinal (single-label prediction files add a predicted column)
        "id_column": table.id_column,
        "submission_classes": editions.submission_order(edition, table.classes),
    })
    return run


def load_folds(run: runs.Run, table: dataset.LabelTable, cfg: dict, strategy=None) -> np.ndarray:
    """The run's folds (folds.csv, made once by the chief); the other workers receive the chief's."""
    chief, multi = _roles(strategy)
    fold_of = (folds_mod.load_or_make_folds(run.folds_csv, table, cfg["train"]["folds"], cfg["seed"]) if chief
               else np.zeros(len(table), np.int64))
    if multi:
        from ..runtime import distribute

        fold_of = distribute.from_chief(strategy, fold_of).astype(np.int64)
    return fold_of


def model_output(cfg: dict, task: str) -> str:
    """The probability layer of a task's model: sigmoid (multilabel), softmax, or corn (the corn loss's K-1 logits)."""
    if not tasks.is_single_label(task):
        return "sigmoid"
    return "corn" if cfg["loss"]["name"] == "corn" else "softmax"


def train_fold(cfg: dict, run: runs.Run, table: dataset.LabelTable, fold_of: np.ndarray, k: int, strategy) -> None:
    """Train fold k (resuming it if a checkpoint exists), then predict its validation split (every worker a
    share; the chief scores and writes)."""
    import keras

    from . import callbacks, engine, tensorboard_log
    from ..runtime import distribute
    from ..data import augment, mix, pipeline
    from ..model import losses, losses_single, models, optim
    from ..predict.step import Predictor

    fold_dir = run.fold_dir(k)
    chief = distribute.is_chief(strategy)
    from ..runtime import preemption

    if distribute.sum_over_workers(strategy, [1.0 if preemption.requested() else 0.0])[0] > 0:  # all stop here
        message = (f"fold {k}: preempted (SIGTERM) before it started; the finished folds are kept: rerun the same "
                   f"command to go on (exit status {preemption.EXIT_STATUS})")
        log.warning("%s", message)
        raise preemption.Preempted(message)
    if chief:
        fold_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg["seed"] + k)
    train, val = table.subset(fold_of != k), table.subset(fold_of == k)
    classes = list(table.classes)
    groups = editions.class_groups(table.edition, table.classes, table.class_counts())  # what open_run wrote
    global_batch = cfg["train"]["batch_size"]
    distribute.check_batch(strategy, global_batch)  # the global batch splits evenly over the replicas
    # train.accumulate: a step is one optimizer update of `accumulate` micro-batches of global_batch images each;
    # steps_per_epoch counts updates, so an epoch always ends between updates (nothing accumulated is lost)
    accumulate = cfg["train"]["accumulate"]
    device_mode, device_why = augment.resolve_device(cfg)
    on_device = device_mode == "accelerator"
    mixed_together = check_mix_group(cfg, strategy.num_replicas_in_sync, distribute.local_replicas(strategy),
                                     on_device)
    from ..data import sampling

    # one pass over the fold's images; sampling.sampler repeat_factor: over its repeated list (the 2026 winner's epoch)
    epoch_images = sampling.epoch_images(train.labels, cfg["sampling"])
    steps = cfg["train"]["steps_per_epoch"] or epoch_images // (global_batch * accumulate)
    if steps < 1:
        raise config.ConfigError(f"fold {k}: {len(train)} training images are fewer than one update of {global_batch} "
                                 f"x {accumulate} (train.batch_size x train.accumulate)")
    empty = [c for c, n in zip(classes, train.class_counts()) if n == 0]
    if empty:
        log.warning("fold %d: no positive training image for %s", k, ", ".join(empty))

    with strategy.scope():
        init = cfg["model"]["init"]  # a resumed fold's checkpoint holds the weights: no init, no download
        init = init if init and not (fold_dir / "backup" / "checkpoint").exists() else None
        built = models.build(cfg["model"]["backbone"], len(classes), cfg["input"]["size"],
                             weights="none" if cfg["model"]["init"] else cfg["model"]["weights"],
                             dropout=cfg["model"]["dropout"],
                             pixel_range=cfg["input"]["pixel_range"], head=cfg["model"]["head"],
                             head_options=models.head_options(cfg), sync_batchnorm=cfg["model"]["sync_batchnorm"],
                             drop_path=cfg["model"]["drop_path"], output=model_output(cfg, table.task))
        if init:
            from . import init_from

            init_from.initialise(init, run, k, built.model, classes)
        if single_label.is_single_label_table(table):  # softmax / CORN losses (model.losses_single)
            loss = losses_single.get_loss(cfg["loss"]["name"], class_counts=train.class_counts(), n_images=len(train),
                                          **cfg["loss"]["params"])
        else:
            loss = losses.get_loss(cfg["loss"]["name"], class_counts=train.class_counts(), n_images=len(train),
                                   epochs=cfg["train"]["epochs"], **cfg["loss"]["params"])
        # the head's variables: their own rate and decay (optim.backbone_lr_mult, head_weight_decay), and what the
        # head warm-up (train.freeze_backbone_epochs) trains with an optimizer of its own
        head_variables = models.head_variables(built.train_model)
        optimizer = optim.make_optimizer(cfg, steps, head_variables=head_variables)
        frozen = cfg["train"]["freeze_backbone_epochs"]
        warmup_optimizer = optim.make_optimizer(cfg, steps, head_variables=head_variables, warmup=True) if frozen else None
    # A resumed fold continues the stream it was on: the batches are a function of (seed, position), and
    # the first `start_epoch * steps` steps are skipped before anything is decoded.
    seed = cfg["seed"] + k
    preprocess = (pipeline.device_preprocess(cfg["augment"], mix.mixer_from_config(cfg, seed), len(classes),
                                             masked=train.mask is not None) if on_device else None)
    from ..data import service
    from ..runtime.watchdog import StepWatchdog

    watchdog = StepWatchdog(cfg["train"]["step_timeout_s"], service=cfg["input"]["data_service"],
                            service_timeout_s=cfg["input"]["data_service_timeout_s"],
                            last_delivery=service.DELIVERIES.last_delivery, label=f"fold {k}",
                            worker=distribute.worker_id(strategy))
    trainer = engine.Trainer(strategy, built.train_model, optimizer, loss, jit_compile=cfg["distribute"]["jit_compile"],
                             steps_per_execution=distribute.steps_per_execution(cfg["train"]["steps_per_execution"]),
                             preprocess=preprocess, ema=cfg["train"]["ema"], accumulate=accumulate,
                             ema_warmup=((cfg["train"]["ema_warmup_gamma"], cfg["train"]["ema_warmup_power"])
                                         if cfg["train"]["ema_warmup"] else None),
                             freeze_epochs=frozen, warmup_optimizer=warmup_optimizer, head_variables=head_variables,
                             watchdog=watchdog)
    start_epoch = trainer.restore(fold_dir / "backup")
    start_step = trainer.resume_step  # > 0: a preempted epoch, resumed at that update
    # Every worker runs these loops and their collectives: the counts must be the same everywhere (a worker
    # that cannot see the chief's checkpoint would start at another epoch and wait in another collective).
    distribute.agree(strategy, f"fold {k}: the image counts, steps per epoch and the epoch and step to resume at",
                     [len(train), len(val), steps, start_epoch, start_step, global_batch])

    def dataset_fn(ctx: "tf.distribute.InputContext"):
        # Input pipeline i of n reads every n-th image (or shard file) only: no worker decodes another's images.
        # Its batches of one update (one per local replica and micro-batch) are mixed together (mix_group).
        group = accumulate * (strategy.num_replicas_in_sync // ctx.num_input_pipelines)
        return pipeline.train_dataset(train.paths, train.labels, cfg, seed=seed, mask=train.mask,
                                      batch_size=ctx.get_per_replica_batch_size(global_batch),
                                      shard=(ctx.num_input_pipelines, ctx.input_pipeline_id),
                                      start_batch=(start_epoch * steps + start_step) * group, on_device=on_device,
                                      mix_group=group,
                                      **({} if on_device else {"mixer": mix.mixer_from_config(cfg, seed),
                                                               **augment.options_from_config(cfg, train, seed)}))

    verbose = cfg["train"]["verbose"]
    verbose = ((1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)) if chief else 0
    # Validation on every replica of every worker (each scores its share, all receive every score); the
    # model selection and the files are the chief's. Traced once, reused by every epoch.
    predictor = Predictor(built.model, strategy=strategy)

    def validate():
        return predictor.shard(len(val), lambda rows, batch: pipeline.eval_dataset(val.paths[rows], cfg, batch_size=batch),
                               batch_size=cfg["predict"]["batch_size"], label=f"fold {k} validation")

    fold_callbacks = callbacks.fold_callbacks(fold_dir, built.model, validate, val.labels, classes, groups,
                                              cfg["train"]["checkpoint"], optimizer, chief=chief, task=table.task,
                                              monitor=tasks.monitor(cfg, table.task),
                                              decision=tasks.ordinal_decision(cfg, table.task))
    if chief:
        fold_callbacks.insert(1, tensorboard_log.TensorBoardLogger(
            fold_dir / "tensorboard", images=lambda: sample_batch(cfg, train, seed, global_batch),
            class_names=classes, optimizer=optimizer))
    if hasattr(loss, "set_epoch"):  # every worker: each has its own copy of the loss's epoch switch
        fold_callbacks.insert(0, callbacks.LossEpoch(loss))
    log.info("fold %d (of folds 0-%d): %d training, %d validation images, %d steps/epoch of %d%s, %s at %d px, "
             "%d replica(s), %d step(s) per call%s, augmentation and mixing on the %s (%s), mix partners from %d images "
             "per update", k, cfg["train"]["folds"] - 1, len(train), len(val), steps, global_batch,
             f" x {accumulate} accumulated micro-batches" if accumulate > 1 else "",
             cfg["model"]["backbone"], cfg["input"]["size"], strategy.num_replicas_in_sync, trainer.steps_per_execution,
             ", XLA" if trainer.jit_compile else "", device_mode, device_why, mixed_together)
    started = time.time()
    try:
        trainer.fit(trainer.distributed_input(dataset_fn), epochs=cfg["train"]["epochs"], steps_per_epoch=steps,
                    callbacks=fold_callbacks, verbose=verbose, label=f"fold {k}")
    finally:
        watchdog.close()
    finish_fold(cfg, run, k, val, classes, groups, started, model=built.model, strategy=strategy)
    distribute.barrier(strategy)


def check_mix_group(cfg: dict, replicas: int, local_replicas: int, on_device: bool) -> int:
    """How many images one update's mixing draws its partners from (returned), checked against what the
    configured mixers need (Mosaic 4, MixUp/CutMix 2).

    The partners come from the whole update, not from one replica's micro-batch: the batches of every
    replica and micro-batch of the update are mixed together (in accelerator mode gathered over every
    worker, on the host over this worker's replicas), so 8 GPUs x 1 image, or 2 images x train.accumulate 4,
    mix like a batch of 8 on one device."""
    from ..data import mix

    global_batch, accumulate = cfg["train"]["batch_size"], cfg["train"]["accumulate"]
    workers = max(1, replicas // max(1, local_replicas))
    together = accumulate * (global_batch if on_device else global_batch // workers)
    needed, mixer = mix.images_needed(cfg["mix"])
    if together < needed:
        share = "" if on_device or workers == 1 else f" on each of the {workers} workers (each mixes its own share)"
        raise config.ConfigError(
            f"{mixer} combines {needed} images of one update, but train.batch_size {global_batch} x train.accumulate "
            f"{accumulate} gives {together}{share}: raise --batch-size or train.accumulate, or set {mixer}=0")
    return together


def sample_batch(cfg: dict, train: dataset.LabelTable, seed: int, batch_size: int):
    """One batch of what the model sees, for TensorBoard: a few of the fold's training images through the
    fold's own augmentation and mixing (a small sample, so the preview decodes a handful of files)."""
    from ..data import augment, mix, pipeline

    cfg = {**cfg, "input": {**cfg["input"], "data_service": None}}  # a handful of images: no service job for them
    pick = np.random.default_rng(seed).permutation(len(train))[:4 * batch_size]
    sample = train.subset(np.sort(pick))
    options = augment.options_from_config(cfg, sample, seed)
    if options.get("minority") is not None and not 0 < options["minority"].sum() < len(sample):
        options["minority_share"] = None  # the sample lacks one group: show the strategy without oversampling
    ds = pipeline.train_dataset(sample.paths, sample.labels, cfg, seed=seed, batch_size=min(batch_size, len(sample)),
                                mixer=mix.mixer_from_config(cfg, seed), **options)
    return next(iter(ds))


def finish_fold(cfg: dict, run: runs.Run, k: int, val: dataset.LabelTable, classes, groups, started: float, *,
                model=None, strategy=None) -> None:
    """Predict the fold's validation split with its selected model (TTA), score it, mark the fold done.

    With `model` (the fold's probability model, built under `strategy`) the selected weights are loaded into
    it and every replica of every worker predicts a share (`Predictor.shard`); only the chief writes.
    """
    from ..data import pipeline
    from ..model import models
    from ..predict.step import Predictor
    from ..utils.progress import Progress

    chief, multi = _roles(strategy)
    fold_dir = run.fold_dir(k)
    selected = models.load(run.model_path(k), num_classes=len(classes))
    if model is None:
        model = selected
    else:
        weights = selected.get_weights()
        if multi:
            from ..runtime import distribute

            distribute.agree(strategy, f"fold {k}: the selected model {run.model_path(k)}", distribute.digest(*weights))
        model.set_weights(weights)
    del selected
    label = f"fold {k} OOF"
    bar = Progress(len(val), label) if chief and not multi else None
    try:
        probs = Predictor(model, cfg["predict"]["tta"], strategy=strategy).shard(
            len(val), lambda rows, batch: pipeline.eval_dataset(val.paths[rows], cfg, batch_size=batch),
            batch_size=cfg["predict"]["batch_size"], progress=bar, label=label)
    finally:
        if bar is not None:
            bar.close()
    if not chief:
        return
    task, decision = val.task, tasks.ordinal_decision(cfg, val.task)
    runs.write_predictions(fold_dir / "oof.csv", val.ids, probs, classes,
                           extra=runs.predicted_column(task, probs, classes, decision))
    result = single_label_metrics.score(task, val.labels, probs, classes, groups=groups, decision=decision)
    atomic.write_json(fold_dir / "metrics.json", result)
    best = json.loads((fold_dir / "best.json").read_text())
    monitored = tasks.monitor(cfg, task)
    runs.mark_done(run, k, {"seconds": round(time.time() - started, 1), "selected_epoch": best["epoch"],
                            "val_mAP": result["mAP"], "val_mAUC": result["mAUC"], "val_mF1": result["mF1"],
                            **({f"val_{monitored}": result[tasks.MONITOR_KEYS[monitored]]}
                               if single_label.is_single_label_table(val) else {})})
    shutil.rmtree(fold_dir / "backup", ignore_errors=True)  # the finished fold needs no resume state
    if single_label.is_single_label_table(val):
        log.info("fold %d done: OOF %s (TTA, epoch %d of %d)", k, single_label_metrics.headline(result), best["epoch"],
                 cfg["train"]["epochs"])
    else:
        log.info("fold %d done: OOF mAP %.4f (TTA, epoch %d of %d)", k, result["mAP"], best["epoch"], cfg["train"]["epochs"])


def summarize(run: runs.Run, table: dataset.LabelTable, fold_of: np.ndarray) -> dict | None:
    """Assemble the OOF predictions of all folds, score them and tune per-class thresholds, once every fold is done."""
    from ..evaluate import thresholds

    k = run.config()["train"]["folds"]
    if len(run.finished_folds()) < k:
        return None
    classes = list(table.classes)
    oof = np.full((len(table), len(classes)), np.nan, np.float32)
    position = {image_id: i for i, image_id in enumerate(table.ids)}
    fold_results = []
    for fold in range(k):
        ids, probs = runs.read_predictions(run.fold_dir(fold) / "oof.csv", classes)
        oof[[position[i] for i in ids]] = probs
        fold_results.append(json.loads((run.fold_dir(fold) / "metrics.json").read_text()))
    if np.isnan(oof).any():
        raise runs.RunError(f"{run.root}: out-of-fold predictions do not cover every training image")
    if single_label.is_single_label_table(table):
        return summarize_single_label(run, table, fold_of, oof, fold_results)
    runs.write_predictions(run.oof_csv, table.ids, oof, classes, extra={"fold": fold_of})
    result = metrics.evaluate(table.labels, oof, classes, groups=run.groups())
    tuned = thresholds.tune(table.labels, oof, classes)  # per-class F1 thresholds (issue 4, G34)
    thresholds.save(run.thresholds_json, tuned)
    summary = {"oof": result, "folds": metrics.summarize_folds(fold_results),
               "per_fold": [{key: r[key] for key in ("mAP", "mAUC", "mF1")} for r in fold_results],
               "oof_tuned_thresholds": {"mF1": tuned["mF1_tuned"], "file": run.thresholds_json.name,
                                        "note": tuned["note"]}}
    atomic.write_json(run.metrics_json, summary)
    return summary


def summarize_single_label(run: runs.Run, table: dataset.LabelTable, fold_of: np.ndarray, oof: np.ndarray,
                           fold_results: list[dict]) -> dict:
    """summarize for one class per image: the OOF file with its predicted class, the task's scores, the per-fold
    mean / std / median of each (seed 000 reports mean +- std over folds, seed 003 the median); no thresholds."""
    cfg = run.config()
    decision = tasks.ordinal_decision(cfg, table.task)
    classes = list(table.classes)
    runs.write_predictions(run.oof_csv, table.ids, oof, classes,
                           extra={"fold": fold_of, **runs.predicted_column(table.task, oof, classes, decision)})
    result = single_label_metrics.score(table.task, table.labels, oof, classes, groups=run.groups(), decision=decision)
    keys = single_label_metrics.summary_keys(table.task)
    summary = {"task": table.task, "oof": result, "folds": metrics.summarize_folds(fold_results, keys=keys),
               "per_fold": [{key: r.get(key) for key in keys} for r in fold_results]}
    atomic.write_json(run.metrics_json, summary)
    return summary


def print_summary(run: runs.Run, summary: dict) -> None:
    if summary.get("task") in ("multiclass", "ordinal"):
        print(single_label_metrics.format_report(summary["oof"], title=f"{run.root.name}: out-of-fold (every training "
                                                                        "image, TTA)"))
        for key, stats in summary["folds"].items():
            if stats:
                print(f"  per-fold {key}: mean {stats['mean']:.4f}  std {stats['std']:.4f}  median {stats['median']:.4f}")
        print(f"OOF  {single_label_metrics.headline(summary['oof'])}")
        return
    oof = summary["oof"]
    print(metrics.format_report(oof, title=f"{run.root.name}: out-of-fold (every training image, TTA)"))
    for key, stats in summary["folds"].items():
        print(f"  per-fold {key}: mean {stats['mean']:.4f}  std {stats['std']:.4f}  median {stats['median']:.4f}")
    tuned = (summary.get("oof_tuned_thresholds") or {}).get("mF1")
    print(f"OOF  mAP {oof['mAP']:.4f}  mAUC {oof['mAUC']:.4f}  mF1 at 0.5 {oof['mF1']:.4f}  |  at per-class thresholds "
          f"tuned on this OOF {'n/a' if tuned is None else f'{tuned:.4f}'} (optimistic; {run.thresholds_json.name})   "
          f"(prevalence baseline mAP {oof['prevalence_baseline_mAP']:.4f})")


def refuse_ensemble_config(path) -> None:
    """configs/08-10 describe ensembles of trained runs; training one would silently train the defaults."""
    if path and Path(path).is_file():
        import yaml

        try:
            sections = set(yaml.safe_load(Path(path).read_text()) or {})
        except yaml.YAMLError:
            return  # config.load names the YAML error
        if "ensemble" in sections and sections <= {"ensemble", "name"}:  # a config of only a name trains the defaults
            raise config.ConfigError(f"{path} is an ensemble config (only an 'ensemble:' section): run it with "
                                     f"python -m cxrlt.ensemble --config {path}")


def make_strategy(cfg: dict):
    """The strategy distribute.* asks for; made before TensorFlow runs its first op in this process."""
    from ..runtime import distribute

    d = cfg["distribute"]
    return distribute.get_strategy(d["strategy"], d["heartbeat_timeout_s"], cpu_replicas=d.get("cpu_replicas"))


def train(cfg: dict, *, force: bool = False, strategy=None, command: list[str] | None = None) -> runs.Run:
    """Train the folds `cfg` asks for (what `python -m cxrlt.train` does) and return the run.

    For notebooks and scripts: bad input raises a `UserError` subclass (a `LabelFileError`, `ConfigError`, ...)
    instead of ending the process, and a rerun resumes as the command does. `cfg` comes from `config.load`
    (validated there); `strategy` defaults to the one `distribute.strategy` names, which has to be made before
    TensorFlow runs its first op in this process."""
    from ..runtime import distribute

    cfg = config.with_run_name(cfg)
    note_input_size(cfg)
    if strategy is None:
        strategy = make_strategy(cfg)
    with distribute.failures_end_every_worker(strategy):  # one worker's error ends them all, with its message
        distribute.set_precision(cfg["distribute"]["mixed_precision"], cfg["distribute"]["mixed_precision_dtype"],
                                 strategy)
        table = resolve_data(cfg, strategy)
        run = open_run(cfg, table, force, strategy, command=command)
        fold_of = load_folds(run, table, cfg, strategy)
        todo = range(cfg["train"]["folds"]) if cfg["train"]["fold"] == "all" else [cfg["train"]["fold"]]
        done = distribute.from_chief(strategy, [run.is_done(k) for k in todo])  # the chief's view of the files
        for k, finished in zip(todo, done):
            if finished:
                log.info("fold %d already finished; skipping (delete %s to retrain it)", k, run.fold_dir(k))
                continue
            train_fold(cfg, run, table, fold_of, k, strategy)
        if not distribute.is_chief(strategy):
            return run  # the chief assembles and reports the out-of-fold results
        summary = summarize(run, table, fold_of)
        if summary:
            print_summary(run, summary)
        else:
            log.info("folds finished so far: %s of %d", run.finished_folds(), cfg["train"]["folds"])
    return run


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.train", __doc__)
    config.add_arguments(parser)
    parser.add_argument("--force", action="store_true", help="continue a run directory made with another config")
    cli.add_common(parser)
    command = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        refuse_ensemble_config(args.config)
        cfg = config.from_args(args)
        from ..runtime import preemption

        strategy = make_strategy(cfg)
        preemption.install()  # SIGTERM: save at the next step boundary, exit 75 (after the strategy: see install)
        train(cfg, force=args.force, strategy=strategy, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
