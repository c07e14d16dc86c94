"""Train K patient-grouped folds of one config; the CLI is thin, the steps are below in order.

    python -m cxrlt.train --size 768                       # seed 002's best single model, 5 folds
    python -m cxrlt.train --config configs/demo.yaml --demo # the embedded demo data, minutes on a CPU

A rerun of the same command skips finished folds and resumes an interrupted one at its last
finished epoch. When every fold is done, the out-of-fold predictions and scores are assembled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import atomic, classes as cls, cli, config, dataset, folds as folds_mod, metrics, runs

log = logging.getLogger("cxrlt.train")

NO_DATA = (
    "no training labels given. Pass --labels path/to/train.csv and --image-root path/to/mimic-cxr-jpg/2.0.0 "
    "(or set data.labels in a config). " + dataset.CXRLT_HELP
)
# Settings that may change between invocations of one run without making it another run.
RESUMABLE_CHANGES = ("train.fold", "train.verbose", "distribute.", "predict.batch_size", "data.demo_dir")


class TrainingError(RuntimeError):
    pass


def resolve_data(cfg: dict) -> dataset.LabelTable:
    """Point the config at its data (generating the demo set if asked) and read the training table."""
    d = cfg["data"]
    if d["demo"]:
        from .synthetic import make_demo

        demo = make_demo(d["demo_dir"], n_patients=d["demo_patients"], image_size=d["demo_image_size"])
        d.update(labels=str(demo.train_csv), image_root=str(demo.root), test_labels=str(demo.test_csv),
                 test_image_root=str(demo.root), classes="cxrlt2023")
    if not d["labels"]:
        raise config.ConfigError(NO_DATA)
    for key in ("labels", "image_root", "test_labels", "test_image_root"):
        if d[key]:
            d[key] = str(Path(d[key]).expanduser().resolve())
    table = dataset.read_labels(d["labels"], image_root=d["image_root"], classes=d["classes"],
                                uncertain=d["uncertain"], allow_outside_root=d["allow_outside_root"],
                                check_files=True)
    if table.mask is not None:
        raise config.ConfigError(
            f"{d['labels']}: --uncertain ignore is accepted by the reader, but masking labels out of the loss is "
            "not wired into training yet; use --uncertain zero or one"
        )
    return table


def prepare_run(cfg: dict, table: dataset.LabelTable, force: bool) -> runs.Run:
    """Create the run directory, or check that an existing one was made with this config."""
    run = runs.Run(Path(cfg["out"]) / cfg["name"])
    if run.config_path.exists():
        changed = config.diff(run.config(), cfg, ignore=RESUMABLE_CHANGES)
        if changed and not force:
            raise config.ConfigError(
                f"{run.root} holds a run with another config ({'; '.join(changed[:4])}"
                f"{'; ...' if len(changed) > 4 else ''}). Use another --name/--out, or --force to continue it anyway"
            )
    atomic.write_text(run.config_path, config.dump(cfg))
    counts = table.class_counts()
    atomic.write_json(run.classes_json, {
        "classes": list(table.classes),
        "train_counts": counts.astype(int).tolist(),
        "groups": cls.class_groups(table.classes, counts),
    })
    return run


def make_optimizer(cfg: dict, steps_per_epoch: int):
    import keras

    o = cfg["optim"]
    lr = o["lr"]
    if o["schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * cfg["train"]["epochs"])
    elif o["schedule"] != "constant":
        raise config.ConfigError(f"optim.schedule must be constant or cosine, got {o['schedule']!r}")
    if o["name"] == "adam" and not o["weight_decay"]:
        return keras.optimizers.Adam(lr, beta_1=o["beta_1"], beta_2=o["beta_2"])
    if o["name"] in ("adam", "adamw"):
        return keras.optimizers.AdamW(lr, weight_decay=o["weight_decay"], beta_1=o["beta_1"], beta_2=o["beta_2"])
    if o["name"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=o["weight_decay"] or None)
    raise config.ConfigError(f"optim.name must be adam, adamw or sgd, got {o['name']!r}")


def augment_options(cfg: dict, train: dataset.LabelTable, seed: int) -> dict:
    """The per-image augmentation arguments of pipeline.train_dataset: basic set or a seed 000 strategy."""
    from . import augment

    a = cfg["augment"]
    if a["strategy"] == "none":
        return {"augment_fn": augment.make_basic_augment(a)}
    minority = augment.minority_mask(train.labels, train.class_counts(), a["tail_quantile"], train.classes)
    oversample = augment.STRATEGIES[a["strategy"]][2] if a["strategy"] in augment.STRATEGIES else False
    log.info("augment strategy %s: %d of %d training images are minority%s", a["strategy"], int(minority.sum()),
             len(minority), f", oversampled to {a['minority_share']:.0%}" if oversample else "")
    return {"strategy_fn": augment.make_strategy_augment(a["strategy"], seed), "minority": minority,
            "minority_share": a["minority_share"] if oversample else None}


def make_mixer(cfg: dict, seed: int):
    m = cfg["mix"]
    if not any(m[k] for k in ("mosaic", "mixup", "cutmix", "cutout")):
        return None
    from . import mix

    return mix.BatchMixer.from_config(m, seed=seed)


def train_fold(cfg: dict, run: runs.Run, table: dataset.LabelTable, fold_of: np.ndarray, k: int) -> None:
    import keras

    from . import callbacks, distribute, losses, models, pipeline, predict

    fold_dir = run.fold_dir(k)
    fold_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg["seed"] + k)
    train, val = table.subset(fold_of != k), table.subset(fold_of == k)
    classes, groups = list(table.classes), run.groups()
    strategy = distribute.get_strategy(cfg["distribute"]["strategy"])
    batch = cfg["train"]["batch_size"]
    if batch % strategy.num_replicas_in_sync:
        raise config.ConfigError(f"train.batch_size {batch} must be a multiple of the {strategy.num_replicas_in_sync} replicas")
    steps = cfg["train"]["steps_per_epoch"] or len(train) // batch
    if steps < 1:
        raise config.ConfigError(f"fold {k}: {len(train)} training images are fewer than one batch of {batch}")
    empty = [c for c, n in zip(classes, train.class_counts()) if n == 0]
    if empty:
        log.warning("fold %d: no positive training image for %s", k, ", ".join(empty))

    with strategy.scope():
        built = models.build(cfg["model"]["backbone"], len(classes), cfg["input"]["size"],
                             weights=cfg["model"]["weights"], dropout=cfg["model"]["dropout"],
                             pixel_range=cfg["input"]["pixel_range"])
        loss = losses.get_loss(cfg["loss"]["name"], class_counts=train.class_counts(), n_images=len(train),
                               **cfg["loss"]["params"])
        built.train_model.compile(optimizer=make_optimizer(cfg, steps), loss=loss,
                                  jit_compile=cfg["distribute"]["jit_compile"])
    train_ds = pipeline.train_dataset(train.paths, train.labels, cfg, seed=cfg["seed"] + k, batch_size=batch,
                                      mixer=make_mixer(cfg, cfg["seed"] + k), **augment_options(cfg, train, cfg["seed"] + k))
    val_ds = pipeline.eval_dataset(val.paths, cfg, batch_size=cfg["predict"]["batch_size"])
    verbose = cfg["train"]["verbose"]
    verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)
    log.info("fold %d/%d: %d training, %d validation images, %d steps/epoch, %s at %d px",
             k, cfg["train"]["folds"] - 1, len(train), len(val), steps, cfg["model"]["backbone"], cfg["input"]["size"])
    started = time.time()
    history = built.train_model.fit(
        train_ds, epochs=cfg["train"]["epochs"], steps_per_epoch=steps, verbose=verbose,
        callbacks=callbacks.fold_callbacks(fold_dir, built.model, val_ds, val.labels, classes, groups,
                                           cfg["train"]["checkpoint"]),
    )
    losses_seen = history.history.get("loss", [])
    if losses_seen and not np.isfinite(losses_seen[-1]):
        raise TrainingError(
            f"fold {k}: the loss became {losses_seen[-1]} in epoch {len(losses_seen)} (TerminateOnNaN stopped it); "
            "lower --lr, check the labels, or turn off mixed precision. The last good model is kept in "
            f"{run.model_path(k)}"
        )
    model = models.load(run.model_path(k), num_classes=len(classes))
    probs = predict.predict_images(model, val.paths, cfg, tta=cfg["predict"]["tta"], label=f"fold {k} OOF")
    runs.write_predictions(fold_dir / "oof.csv", val.ids, probs, classes)
    result = metrics.evaluate(val.labels, probs, classes, groups=groups)
    atomic.write_json(fold_dir / "metrics.json", result)
    best = json.loads((fold_dir / "best.json").read_text())
    runs.mark_done(run, k, {"seconds": round(time.time() - started, 1), "selected_epoch": best["epoch"],
                            "val_mAP": result["mAP"], "val_mAUC": result["mAUC"], "val_mF1": result["mF1"]})
    log.info("fold %d done: OOF mAP %.4f (TTA, epoch %d of %d)", k, result["mAP"], best["epoch"], cfg["train"]["epochs"])


def summarize(run: runs.Run, table: dataset.LabelTable, fold_of: np.ndarray) -> dict | None:
    """Assemble the OOF predictions of all folds, score them and tune per-class thresholds, once every fold is done."""
    from . import thresholds

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


def print_summary(run: runs.Run, summary: dict) -> None:
    oof = summary["oof"]
    print(metrics.format_report(oof, title=f"{run.root.name}: out-of-fold (every training image, TTA)"))
    for key, stats in summary["folds"].items():
        print(f"  per-fold {key}: mean {stats['mean']:.4f}  std {stats['std']:.4f}  median {stats['median']:.4f}")
    tuned = (summary.get("oof_tuned_thresholds") or {}).get("mF1")
    print(f"OOF  mAP {oof['mAP']:.4f}  mAUC {oof['mAUC']:.4f}  mF1 at 0.5 {oof['mF1']:.4f}  |  at per-class thresholds "
          f"tuned on this OOF {'n/a' if tuned is None else f'{tuned:.4f}'} (optimistic; {run.thresholds_json.name})   "
          f"(prevalence baseline mAP {oof['prevalence_baseline_mAP']:.4f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrlt.train", description=__doc__.split("\n")[0])
    config.add_arguments(parser)
    parser.add_argument("--force", action="store_true", help="continue a run directory made with another config")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        cfg = config.from_args(args)
        table = resolve_data(cfg)
        run = prepare_run(cfg, table, args.force)
        fold_of = folds_mod.load_or_make_folds(run.folds_csv, table, cfg["train"]["folds"], cfg["seed"])
        todo = range(cfg["train"]["folds"]) if cfg["train"]["fold"] == "all" else [cfg["train"]["fold"]]
        for k in todo:
            if run.is_done(k):
                log.info("fold %d already finished; skipping (delete %s to retrain it)", k, run.fold_dir(k))
                continue
            train_fold(cfg, run, table, fold_of, k)
        summary = summarize(run, table, fold_of)
        if summary:
            print_summary(run, summary)
        else:
            log.info("folds finished so far: %s of %d", run.finished_folds(), cfg["train"]["folds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
