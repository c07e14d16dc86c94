"""Learned study fusion (CheXFusion's stage 2, CXR-LT 2023 winner) over a trained run's FROZEN per-image features.

    python -m cxrlt.fuse --run runs/effv2s_768                       # -> runs/effv2s_768_fused, the same folds
    python -m cxrlt.fuse --run runs/X --set fuse.feature_pool=2 --set fuse.epochs=5 [--name N] [--out DIR]
    python -m cxrlt.ensemble --runs runs/X runs/X_fused [--fit-weights]   # a fused run is used like any run

Per fold k of the source run X (all its folds must be finished): X's fold-k model, frozen, turns every
training image into its last feature map, computed once and cached on disk (fold<k>/features/, float16,
written atomically); a StudyFusion head (cxrlt.model.fusion: 3x3 stride-2 conv, 2-D sinusoidal positions, a
learned view embedding, a padding token and key-padding mask for empty slots, a 2-layer TransformerEncoder,
an ML-Decoder) is trained on the studies of the other folds (study label = union of its images' labels, the
run's loss), scored each epoch on the held-out fold (the best or last epoch kept, fuse.checkpoint), and its
held-out predictions, one per study given back to each of its images and averaged over the run's TTA views,
are fold k's out-of-fold scores. The held-out images were seen by neither X's fold-k backbone nor the head.

Why a fused run is a run directory: config.yaml (X's, with the fuse: settings), classes.json and folds.csv
(X's, so --fit-weights and the OOF scoring of an ensemble with X work), fold<k>/model.keras, oof.csv,
metrics.json and thresholds.json, read by cxrlt.runs, cxrlt.ensemble, cxrlt.aggregate and cxrlt.report as they
are; plus fusion.json naming X. The fold models are the fusion heads only (inputs: a stack of feature maps,
which slots are images, their view ids): a study's prediction needs all its images, which an image model
cannot take one at a time, and a copy of X's backbone inside every fused fold model would double the disk.
So predicting a list goes through cxrlt.predict.fusion (X's fold-k backbone -> features -> study stacks ->
fused head k), which cxrlt.predict.inference.predict_run calls for a fused run; every fold's done.json records
the sha256 of the X fold model it was trained on, and a changed source model is refused, never mixed.

Resumable: a rerun skips finished folds (done.json + model.keras) and reuses a killed fold's cached
features (the head's few epochs are retrained). A finished fold's feature cache is deleted (it is the
biggest thing in the run: N x h x w x C float16). Training runs on this process's default device, no
tf.distribute: the head is small and the features are precomputed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config
from ..config import schema
from ..data import dataset
from ..evaluate import metrics
from ..utils import atomic, cli
from ..utils.hashing import file_sha256
from ..runtime import runs

log = logging.getLogger("cxrlt.fuse")

# Settings a fuse command may change: its own, and how predictions are made; the rest is the source run's.
OVERRIDABLE = ("fuse.", "predict.tta", "predict.batch_size", "seed")
# Settings that may change between invocations of one fused run without making it another fused run.
RESUMABLE = ("predict.batch_size", "train.verbose")


def fuse_config(source: runs.Run, overrides: dict, name: str, out: Path) -> dict:
    """The source's config, its fuse: section filled from the defaults, `overrides` applied and checked."""
    cfg = copy.deepcopy(source.config())
    defaults = config.defaults()["fuse"]
    cfg["fuse"] = {**defaults, **(cfg.get("fuse") or {})}
    bad = [k for k in overrides if not k.startswith(OVERRIDABLE)]
    if bad:
        raise config.ConfigError(f"fuse changes only fuse.*, predict.tta, predict.batch_size and seed; {bad} are the "
                                 f"source run's settings (train another run to change them)")
    cfg = config.merge(cfg, overrides, "command line")
    schema.validate_fuse(cfg)
    tta = cfg["predict"]["tta"]
    if not isinstance(tta, list) or not tta or set(tta) - set(schema.TTA_VIEWS):
        raise config.ConfigError(f"predict.tta must be a non-empty subset of [{', '.join(schema.TTA_VIEWS)}], got {tta}")
    cfg.update(name=name, out=str(out))
    cfg["train"]["fold"] = "all"
    return cfg


def source_table(source: runs.Run):
    """(the source's training table in folds.csv order, fold of each image)."""
    d = source.config()["data"]
    table = dataset.read_labels(d["labels"], image_root=d["image_root"], classes=list(source.classes()),
                                uncertain=d["uncertain"], allow_outside_root=True, index_dir=source.root,
                                **dataset.training_rows(d))
    if not source.folds_csv.exists():
        raise runs.RunError(f"{source.root}: no folds.csv; is it a finished cxrlt run?")
    folds = pd.read_csv(source.folds_csv, dtype={"id": str})
    position = {image_id: i for i, image_id in enumerate(table.ids)}
    missing = [i for i in folds["id"] if i not in position]
    if missing:
        raise runs.RunError(f"{source.folds_csv} names {len(missing)} images that {d['labels']} no longer lists "
                            f"(e.g. {missing[:3]}); was the CSV changed after training?")
    return table.subset([position[i] for i in folds["id"]]), folds["fold"].to_numpy(dtype=np.int64)


def open_fused_run(source: runs.Run, cfg: dict, force: bool) -> runs.Run:
    """Create the fused run directory, or check that an existing one fuses the same source with the same settings."""
    run = runs.Run(Path(cfg["out"]) / cfg["name"])
    if run.root.resolve() == source.root.resolve():
        raise config.ConfigError(f"the fused run would overwrite its source {source.root}; pick another --name")
    if run.config_path.exists():
        old_source = json.loads(run.fusion_json.read_text()).get("source") if run.is_fused else None
        if old_source is None:
            raise config.ConfigError(f"{run.root} holds a run that is not a fused run; pick another --name/--out")
        changed = config.diff(run.config(), cfg, ignore=RESUMABLE)
        if str(Path(old_source).resolve()) != str(source.root.resolve()):
            changed.insert(0, f"source: {old_source} -> {source.root.resolve()}")
        if changed and not force:
            raise config.ConfigError(f"{run.root} holds a fused run with other settings ({'; '.join(changed[:4])}"
                                     f"{'; ...' if len(changed) > 4 else ''}). Use another --name, or --force to refit "
                                     "every fold with these settings")
        if changed:  # --force: no fold made with the old settings may stay
            log.info("refitting every fold of %s with the new settings (%s)", run.root, "; ".join(changed[:4]))
            for k in range(cfg["train"]["folds"]):
                run.done_path(k).unlink(missing_ok=True)
            run.oof_csv.unlink(missing_ok=True)
            run.metrics_json.unlink(missing_ok=True)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run.config_path, config.dump(cfg))
    atomic.write_text(run.classes_json, source.classes_json.read_text())
    atomic.write_text(run.folds_csv, source.folds_csv.read_text())
    atomic.write_json(run.fusion_json, {"source": str(source.root.resolve()),
                                        "what": "CheXFusion stage 2 over the source's frozen fold models "
                                                "(python -m cxrlt.fuse); fold<k>/model.keras takes study stacks"})
    return run


def study_targets(table, stacks):
    """(labels [M, C], mask [M, C] or None) of each stack: the union of its study's image labels (over the
    labels that are known, with --uncertain ignore); a label is known for the study if any image knows it."""
    labels = table.labels * (table.mask if table.mask is not None else 1.0)
    study_y = np.zeros((stacks.n_studies, labels.shape[1]), np.float32)
    np.maximum.at(study_y, stacks.study_of, labels)
    y = study_y[stacks.owner]
    if table.mask is None:
        return y, None
    study_m = np.zeros_like(study_y)
    np.maximum.at(study_m, stacks.study_of, table.mask)
    return y, study_m[stacks.owner]


def _feature_key(source_sha: str, table, cfg: dict, view: str) -> str:
    h = hashlib.sha256()
    for part in (source_sha, "\n".join(table.ids), "\n".join(table.paths), view,
                 repr((cfg["data"].get("prepared"), cfg["input"], cfg["fuse"]["feature_pool"]))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def train_fold(cfg: dict, run: runs.Run, source: runs.Run, table, fold_of: np.ndarray, k: int,
               source_sha: str) -> None:
    """Features (cached) -> the fusion head trained on the other folds' studies -> fold k's OOF scores."""
    import keras
    import tensorflow as tf

    from ..model import fusion as fusion_model, losses, models
    from ..predict import fusion

    f, classes, fold_dir = cfg["fuse"], list(table.classes), run.fold_dir(k)
    fold_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seed = cfg["seed"] + k
    keras.utils.set_random_seed(seed)
    extractor = fusion.source_extractor(run, k, sha256=source_sha)
    feature_dir = fold_dir / "features"
    key = _feature_key(source_sha, table, cfg, "identity")
    for stale in feature_dir.glob("*.npy"):
        if key not in stale.name:
            stale.unlink()
    batch = cfg["predict"]["batch_size"]
    feats = fusion.compute_features(extractor, table.paths, cfg, feature_dir / f"identity-{key}.npy", batch_size=batch,
                                    label=f"fold {k} features")
    train_rows, val_rows = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
    train, val = table.subset(train_rows), table.subset(val_rows)
    train_stacks = fusion.study_stacks(train.studies, train.views, train.ids, f["max_images"])
    val_stacks = fusion.study_stacks(val.studies, val.views, val.ids, f["max_images"])
    y, mask = study_targets(train, train_stacks)
    train_stacks = train_stacks.rows(train_rows)

    built = fusion_model.build(len(classes), feats.shape[1:], max_images=f["max_images"], dim=f["dim"],
                               layers=f["layers"], num_heads=f["heads"], ffn_dim=f["ffn_dim"], dropout=f["dropout"])
    loss = losses.get_loss(cfg["loss"]["name"], class_counts=y.sum(axis=0), n_images=len(y), epochs=f["epochs"],
                           **cfg["loss"]["params"])
    optimizer = keras.optimizers.Adam(f["lr"])
    model, variables = built.train_model, built.train_model.trainable_variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def step(x, valid, views, labels, weights):
        with tf.GradientTape() as tape:
            logits = model([x, valid, views], training=True)
            value = loss(labels, logits, sample_weight=weights)
        optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
        return value

    rng = np.random.default_rng(seed)
    log.info("fold %d: fusion head on %d studies (%d stacks, %d images), validated on %d studies; features %s",
             k, train_stacks.n_studies, len(y), len(train), val_stacks.n_studies, "x".join(map(str, feats.shape[1:])))
    history, best = [], (-np.inf, 0)
    val_local = val_stacks.rows(val_rows)
    for epoch in range(f["epochs"]):
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(epoch)
        order, total = rng.permutation(len(y)), 0.0
        for start in range(0, len(order), f["batch_size"]):
            pick = order[start:start + f["batch_size"]]
            x, valid, views = fusion.batch_of(feats, train_stacks, pick)
            weights = mask[pick] if mask is not None else None
            total += float(step(x, valid, views, y[pick], weights)) * len(pick)
        probs = fusion.to_images(fusion.predict_stacks(built.model, feats, val_local, f["batch_size"]), val_stacks)
        score = metrics.evaluate(val.labels, probs, classes)["mAP"]
        history.append({"epoch": epoch + 1, "loss": total / len(y), "val_mAP": score})
        if f["checkpoint"] == "last" or score > best[0]:
            best = (score, epoch + 1)
            models.save(built.model, run.model_path(k))
        log.info("fold %d epoch %d/%d: loss %.4f, held-out mAP %.4f", k, epoch + 1, f["epochs"], total / len(y), score)
    atomic.write_csv(fold_dir / "history.csv", pd.DataFrame(history))

    head = models.load(run.model_path(k), num_classes=len(classes))
    oof = np.zeros((len(val), len(classes)), np.float64)
    for view in cfg["predict"]["tta"]:  # the identity view from the training cache, other views of the held-out images
        if view == "identity":
            view_feats, stacks = feats, val_local
        else:
            path = feature_dir / f"{view}-{_feature_key(source_sha, val, cfg, view)}.npy"
            view_feats = fusion.compute_features(extractor, val.paths, cfg, path, view=view, batch_size=batch,
                                                 label=f"fold {k} {view} features")
            stacks = val_stacks
        oof += fusion.to_images(fusion.predict_stacks(head, view_feats, stacks, f["batch_size"]), val_stacks)
    oof = (oof / len(cfg["predict"]["tta"])).astype(np.float32)
    runs.write_predictions(fold_dir / "oof.csv", val.ids, oof, classes)
    result = metrics.evaluate(val.labels, oof, classes, groups=run.groups())
    atomic.write_json(fold_dir / "metrics.json", result)
    runs.mark_done(run, k, {"seconds": round(time.time() - started, 1), "selected_epoch": best[1],
                            "val_mAP": result["mAP"], "val_mAUC": result["mAUC"], "val_mF1": result["mF1"],
                            "source_model": str(source.model_path(k).resolve()), "source_model_sha256": source_sha})
    del feats
    shutil.rmtree(feature_dir, ignore_errors=True)  # the finished fold needs no features (N x h x w x C float16)
    log.info("fold %d fused: OOF mAP %.4f (TTA %s, epoch %d of %d)", k, result["mAP"], "+".join(cfg["predict"]["tta"]),
             best[1], f["epochs"])


def fold_is_current(run: runs.Run, k: int, source_sha: str) -> bool:
    """Fold k is finished and was fitted on the source's fold-k model whose sha256 is `source_sha`."""
    if not run.is_done(k):
        return False
    return json.loads(run.done_path(k).read_text()).get("source_model_sha256") == source_sha


def fuse(source_root, *, name: str | None = None, out=None, overrides: dict | None = None,
         force: bool = False) -> tuple[runs.Run, dict | None]:
    """Fit (or resume) the fused run of `source_root`; (the fused run, its OOF summary once all folds are done)."""
    from .kfold import summarize

    source = runs.Run(Path(source_root))
    source.config()  # a clear error for a folder that is not a run
    if source.task() != "multilabel":
        raise runs.RunError(f"{source.root} is a {source.task()} run; study fusion (python -m cxrlt.fuse) fuses "
                            "multi-label findings over a study's images and takes multi-label runs only")
    if source.is_fused:
        raise runs.RunError(f"{source.root} is itself a fused run; fuse the run it was made from")
    k_folds = source.config()["train"]["folds"]
    if len(source.finished_folds()) < k_folds:
        raise runs.RunError(f"{source.root}: {len(source.finished_folds())} of {k_folds} folds finished; the fusion needs "
                            "every fold model (finish training it first: rerun its python -m cxrlt.train command)")
    name = name or f"{source.root.name}_fused"
    cfg = fuse_config(source, overrides or {}, name, Path(out) if out else source.root.parent)
    table, fold_of = source_table(source)
    run = open_fused_run(source, cfg, force)
    for k in range(k_folds):
        source_sha = file_sha256(source.model_path(k))  # once per fold: the model file can be hundreds of MB
        if fold_is_current(run, k, source_sha):
            log.info("fold %d already fused; skipping (delete %s to refit it)", k, run.fold_dir(k))
            continue
        if run.done_path(k).exists():
            log.info("fold %d was fused on another %s; refitting it", k, source.model_path(k))
            run.done_path(k).unlink()
        train_fold(cfg, run, source, table, fold_of, k, source_sha)
    return run, summarize(run, table, fold_of)


def parse_sets(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise config.ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.fuse", __doc__)
    parser.add_argument("--run", required=True, type=Path, help="the trained run to fuse (all folds finished)")
    parser.add_argument("--name", help="the fused run's name (default: <run>_fused)")
    parser.add_argument("--out", type=Path, help="folder for the fused run (default: the source run's folder)")
    parser.add_argument("--epochs", type=int, help="sets fuse.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fuse.* (e.g. fuse.feature_pool=2), predict.tta, predict.batch_size or seed (repeatable)")
    parser.add_argument("--force", action="store_true", help="refit a fused run made with other settings")
    cli.add_common(parser)
    command = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        overrides = parse_sets(args.set)
        if args.epochs is not None:
            overrides["fuse.epochs"] = args.epochs
        run, summary = fuse(args.run, name=args.name, out=args.out, overrides=overrides, force=args.force)
        runs.record_command(run, "python -m cxrlt.fuse", command)
        from .kfold import print_summary

        print_summary(run, summary)
        source_metrics = runs.Run(args.run).metrics_json
        if source_metrics.exists():
            before = json.loads(source_metrics.read_text())["oof"]
            print(f"source {args.run.name}: OOF mAP {before['mAP']:.4f}  mAUC {before['mAUC']:.4f}  ->  fused "
                  f"{run.root.name}: OOF mAP {summary['oof']['mAP']:.4f}  mAUC {summary['oof']['mAUC']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
