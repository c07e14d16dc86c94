"""Inference: stream an image list through every fold model of a run with test-time augmentation.

    python -m cxrlt.predict --run runs/effv2s_768 --labels test.csv [--tta identity hflip]
                            [--study-aggregation none|mean|max|view_mean]

Per-fold predictions are cached under runs/<name>/predictions/, so an interrupted prediction
resumes at the next unfinished fold and a second ensemble of the same run costs nothing.
Memory is flat in the number of images: images stream through tf.data in batches and only the
[N, C] probability matrix is kept (preallocated), so the 75,492-image CXR-LT test list costs
~8 MB of scores. One progress bar per phase (all the folds of a run that still need predicting);
plain log lines instead when the output is not a terminal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

from ..config import tasks
from ..data import dataset, pipeline
from ..model import models
from ..runtime import runs
from .step import TTA, Predictor  # noqa: F401 - TTA: the views' names for the CLIs
from ..utils.progress import Progress  # the shared bar; predict.Progress keeps working for older callers

log = logging.getLogger(__name__)

def predict_images(model, paths, cfg: dict, *, tta=("identity", "hflip"), batch_size: int | None = None,
                   label: str = "predict", progress: "Progress | None" = None) -> np.ndarray:
    """Mean probability over the TTA views, [N, C] float32 in file-list order (`step.Predictor`).

    Batches stream from tf.data into a preallocated [N, C] array: memory does not grow with N
    beyond that array. `progress` lets a caller show one bar for several calls (one phase).
    """
    predictor = Predictor(model, tta)
    ds = pipeline.eval_dataset(paths, cfg, batch_size=batch_size or cfg["predict"]["batch_size"])
    bar = Progress(len(paths), label) if progress is None else progress
    try:
        return predictor(ds, expected=len(paths), progress=bar, label=label)
    finally:
        if progress is None:
            bar.close()


def _cache_key(run: runs.Run, table: dataset.LabelTable, tta, folds) -> str:
    h = hashlib.sha256()
    h.update("\n".join(table.ids).encode())
    h.update("\n".join(table.paths).encode())
    h.update(repr(list(tta)).encode())
    h.update(repr((run.config()["data"].get("prepared"), run.config()["input"])).encode())  # the pixels' source
    for k in folds:
        stat = run.model_path(k).stat()
        h.update(f"{k}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{table.source.stem}-{h.hexdigest()[:12]}"


def predict_run(run: runs.Run, table: dataset.LabelTable, *, tta=None, batch_size: int | None = None) -> np.ndarray:
    """Fold models of `run` averaged (equal weight), each TTA-averaged: [N, C] probabilities. A fused run
    (python -m cxrlt.fuse) predicts through its source's frozen backbones and its study heads (predict.fusion)."""
    if run.is_fused:
        from . import fusion

        return fusion.predict_run(run, table, tta=tta, batch_size=batch_size)
    cfg = run.config()
    tta = tuple(tta or cfg["predict"]["tta"])
    folds = run.finished_folds()
    if not folds:
        raise runs.RunError(f"{run.root}: no finished fold to predict with; train first")
    classes = run.classes()
    cache = run.root / "predictions" / _cache_key(run, table, tta, folds)
    todo = [k for k in folds if not (cache / f"fold{k}.csv").exists()]
    bar = Progress(len(todo) * len(table), f"{run.root.name}: {len(todo)} fold(s) x {len(tta)} TTA view(s)") if todo else None

    def predict_fold(k):
        model = models.load(run.model_path(k), num_classes=len(classes))
        return predict_images(model, table.paths, cfg, tta=tta, batch_size=batch_size, progress=bar)

    mean = runs.cached_fold_mean(cache, folds, table, classes, predict_fold)
    if bar is not None:
        bar.close()
    return mean


def read_image_list(run: runs.Run, path, image_root=None) -> dataset.LabelTable:
    """An image list to predict, with labels if it has the run's class columns, its images screened
    by the run's data.check_images."""
    d = run.config()["data"]
    if image_root is None and d.get("test_labels") and Path(path) == Path(d["test_labels"]):
        image_root = d.get("test_image_root")
    edition = run.edition()  # the training file's edition: a test list has its id and path columns
    if run.task() == "multilabel":
        table = dataset.read_labels(path, image_root=image_root, classes=list(run.classes()), require_labels=False,
                                    uncertain=d["uncertain"], allow_outside_root=d["allow_outside_root"],
                                    edition=edition, index_dir=run.root)
    else:  # one class per image: a label column (or one-hot columns) if the list is labelled
        from ..data import single_label

        table, _ = single_label.read_table(path, task=run.task(), label_column=d.get("label_column"),
                                           image_root=image_root, classes=list(run.classes()), require_labels=False,
                                           uncertain=d["uncertain"], allow_outside_root=d["allow_outside_root"],
                                           edition=edition, index_dir=run.root)
    mode = d.get("check_images", "header")
    if mode != "off":
        # Every listed image needs a prediction: a bad one is named now (never skipped), not as a
        # decode error after the first fold models have run.
        from ..data import check

        check.screen_table(table, deep=mode == "deep", what="prediction", can_skip=False,
                           dicom_window=run.config()["input"].get("dicom_window", "stored"))
    return table


def main(argv=None) -> int:
    from . import aggregate
    from ..utils import cli
    from ..evaluate import metrics
    from ..evaluate import thresholds as thr

    parser = cli.parser("python -m cxrlt.predict", __doc__)
    parser.add_argument("--run", required=True, type=Path, help="run directory (runs/<name>)")
    parser.add_argument("--labels", help="image list CSV (default: the run's data.test_labels)")
    parser.add_argument("--image-root", help="folder the list's paths are relative to")
    parser.add_argument("--tta", nargs="+", choices=sorted(TTA), help="TTA views (default: the run's predict.tta)")
    parser.add_argument("--study-aggregation", choices=aggregate.METHODS,
                        help="pool scores over each study (default: the run's predict.study_aggregation)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--out", type=Path, help="CSV to write (default: <run>/predictions/<list>.csv)")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        run = runs.Run(args.run)
        cfg = run.config()
        pooling = aggregate.check_method(args.study_aggregation or cfg["predict"].get("study_aggregation", "none"))
        labels = args.labels or cfg["data"]["test_labels"]
        if labels is None:
            raise runs.RunError("no image list: pass --labels LIST.csv")
        table = read_image_list(run, labels, args.image_root)
        probs = predict_run(run, table, tta=args.tta, batch_size=args.batch_size)
        probs = aggregate.aggregate(probs, table.studies, pooling, views=table.views,
                                    view_weights=cfg["predict"].get("view_weights"))
        suffix = "" if pooling == "none" else f".study_{pooling}"
        name = f"{table.source.stem}{suffix}.csv"
        out = args.out or run.root / "predictions" / name
        out = out / name if out.is_dir() or str(args.out or "").endswith(("/", os.sep)) else out
        task = run.task()
        decision = tasks.ordinal_decision(cfg, task)
        runs.write_predictions(out, table.ids, probs, table.classes,
                               extra=runs.predicted_column(task, probs, table.classes, decision))
        folds = f"{len(run.finished_folds())} of {cfg['train']['folds']} folds"
        print(f"wrote {out} ({len(table)} images x {len(table.classes)} classes from {folds}"
              + (" -- PARTIAL: the run is unfinished" if run.partial() else "") + f", study aggregation {pooling})")
        if table.has_labels and task != "multilabel":
            from ..evaluate import single_label

            print(single_label.format_report(single_label.evaluate(table.labels, probs, list(table.classes), task=task,
                                                                   decision=decision), title=f"{table.source.name}"))
        elif table.has_labels:
            print(metrics.format_report(metrics.evaluate(table.labels, probs, list(table.classes),
                                                          groups=run.groups()), title=f"{table.source.name}"))
            t, source = runs.thresholds_for(run)
            if t is None:
                print(f"mF1 at 0.5 only: per-class thresholds need OOF predictions ({source})")
            else:
                print(thr.mf1_line(table.labels, probs, table.classes, t, where=f" ({source})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
