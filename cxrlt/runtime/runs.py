"""The run directory: one folder that fully describes a run, and the rules for resuming it.

runs/<name>/
  config.yaml          resolved config (a rerun with a different one is refused unless --force)
  command.txt          every command that trained the run (folder it ran in + the command line), oldest first
  folds.csv            image id -> patient -> fold (made once, reused on every resume)
  fold<k>/model.keras  the fold's selected model (probabilities out)
  fold<k>/history.csv  one row per epoch; fold<k>/backup/ mid-training state (tf.train.CheckpointManager: weights, optimizer, epoch)
  fold<k>/oof.csv      the fold's validation predictions (TTA); fold<k>/done.json marks it finished
  oof.csv, metrics.json   out-of-fold predictions of all folds and their scores
  thresholds.json      per-class F1 thresholds tuned on oof.csv (cxrlt.thresholds)
  predictions/         cached test-set predictions per image list
  fusion.json          only in a fused run (python -m cxrlt.fuse): the source run whose frozen features it fuses

    python -m cxrlt.runs [ROOT] [--json]     # every run under ROOT (default runs/) with its scores
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..utils import atomic, cli
from ..utils.errors import UserError


class RunError(UserError):
    pass


@dataclass(frozen=True)
class Run:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))  # accept a str too

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def command_txt(self) -> Path:
        return self.root / "command.txt"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def oof_csv(self) -> Path:
        return self.root / "oof.csv"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def thresholds_json(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def classes_json(self) -> Path:
        return self.root / "classes.json"

    @property
    def fusion_json(self) -> Path:
        """Only in a fused run (python -m cxrlt.fuse): its source run; its fold models take study stacks."""
        return self.root / "fusion.json"

    @property
    def is_fused(self) -> bool:
        return self.fusion_json.is_file()

    def classes(self) -> tuple[str, ...]:
        return tuple(self._class_info()["classes"])

    def groups(self) -> dict[str, str]:
        return self._class_info()["groups"]

    def submission_layout(self) -> tuple[str, tuple[str, ...]]:
        """(id column, class columns in the official order) of this run's submissions. Runs made
        before editions existed were CXR-LT 2023 or generic: dicom_id and the 2023 order rule."""
        info = self._class_info()
        if "submission_classes" in info:
            return info["id_column"], tuple(info["submission_classes"])
        from ..data import editions

        return "dicom_id", tuple(editions.submission_order(editions.EDITIONS["cxrlt2023"], info["classes"]))

    def task(self) -> str:
        """multilabel | multiclass | ordinal (runs made before single-label tasks existed: multilabel)."""
        return self._class_info().get("task", "multilabel")

    def edition(self) -> str:
        return self._class_info().get("edition", "auto")

    def _class_info(self) -> dict:
        if not self.classes_json.exists():
            raise RunError(f"{self.root}: no classes.json; is this a cxrlt run directory?")
        return json.loads(self.classes_json.read_text())

    def fold_dir(self, k: int) -> Path:
        return self.root / f"fold{k}"

    def model_path(self, k: int) -> Path:
        return self.fold_dir(k) / "model.keras"

    def done_path(self, k: int) -> Path:
        return self.fold_dir(k) / "done.json"

    def is_done(self, k: int) -> bool:
        return self.done_path(k).exists() and self.model_path(k).exists()

    def config(self) -> dict:
        if not self.config_path.exists():
            raise RunError(f"{self.root} is not a cxrlt run (no config.yaml); train one with python -m cxrlt.train")
        return yaml.safe_load(self.config_path.read_text())

    def trained_anything(self) -> bool:
        """Whether any fold finished an epoch here (a checkpoint, a model, a done marker, OOF): a run that
        failed before its first epoch (weights offline, a bad image) holds nothing a new config could spoil."""
        if self.oof_csv.exists():
            return True
        return any((fold / "backup" / "checkpoint").exists() or (fold / "model.keras").exists()
                   or (fold / "done.json").exists() for fold in self.root.glob("fold*"))

    def finished_folds(self) -> list[int]:
        k = self.config()["train"]["folds"]
        return [i for i in range(k) if self.is_done(i)]

    def partial(self) -> str | None:
        """'runs/x: 1 of 2 folds' when some of the run's folds are unfinished, else None. A fused run's folds
        are its source's, each refit: the same rule."""
        done, k = len(self.finished_folds()), self.config()["train"]["folds"]
        return None if done == k else f"{self.root}: {done} of {k} folds"


def record_command(run: Run, program: str, argv: list[str]) -> None:
    """Append `cd <folder> && <program> <argv>` to the run's command.txt (rewritten atomically): the
    exact commands a submission's code/ folder shows for this run."""
    import os
    import shlex

    line = f"cd {shlex.quote(os.getcwd())} && {program} {shlex.join(argv)}".rstrip() + "\n"
    before = run.command_txt.read_text(encoding="utf-8") if run.command_txt.is_file() else ""
    atomic.write_text(run.command_txt, before + line)


TRAILING = ("predicted", "expected_grade")  # columns written after the class probabilities


def write_predictions(path: Path, ids: np.ndarray, probs: np.ndarray, classes, extra: dict | None = None) -> None:
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "id", ids)
    leading = {k: v for k, v in (extra or {}).items() if k not in TRAILING}
    for i, (key, values) in enumerate(leading.items()):
        frame.insert(1 + i, key, values)
    for key in TRAILING:  # a single-label file: the class probabilities, then the predicted class
        if key in (extra or {}):
            frame[key] = extra[key]
    atomic.write_csv(path, frame, float_format="%.6g")


def predicted_column(task: str, probs: np.ndarray, classes, decision: str = "argmax") -> dict:
    """{"predicted": each image's class name} for a single-label task (the argmax, or an ordinal decision rule:
    cxrlt.evaluate.single_label.decide); {} for multi-label, whose files stay one probability column per class."""
    if task not in ("multiclass", "ordinal"):
        return {}
    from ..evaluate import single_label

    names = np.asarray(list(classes), dtype=object)
    return {"predicted": names[single_label.decide(probs, decision)]}


def read_predictions(path: Path, classes) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path, dtype={"id": str})
    return frame["id"].to_numpy(), frame[list(classes)].to_numpy(dtype=np.float32)


def cached_fold_mean(cache: Path, folds, table, classes, predict_fold) -> np.ndarray:
    """The mean over `folds` of each fold's [N, C] scores for `table`, each fold predicted once
    (`predict_fold(k)`) and cached as `cache`/fold<k>.csv. The mean is always taken over the cached
    (rounded as written) values, so a prediction resumed after a kill equals an uninterrupted one."""
    total = np.zeros((len(table), len(classes)), np.float64)
    for k in folds:
        fold_file = cache / f"fold{k}.csv"
        if not fold_file.exists():
            write_predictions(fold_file, table.ids, predict_fold(k), classes)
        ids, probs = read_predictions(fold_file, classes)
        if not np.array_equal(ids, table.ids):
            raise RunError(f"{fold_file}: cached ids do not match {table.source}; delete {cache}")
        total += probs
    return (total / len(folds)).astype(np.float32)


def oof_with_labels(run: Run):
    """(label table in oof.csv's row order, OOF probabilities [N, C]) of a run whose folds are all done.

    The labels (and study ids, views) come from the run's own training CSV (config data.labels).
    """
    from ..data import dataset

    if not run.oof_csv.exists():
        done, k = len(run.finished_folds()), run.config()["train"]["folds"]
        raise RunError(f"{run.root}: no oof.csv ({done} of {k} folds finished; it is assembled when all are)")
    from ..data import single_label

    d = run.config()["data"]
    if run.task() == "multilabel":
        table = dataset.read_labels(d["labels"], image_root=d["image_root"], classes=list(run.classes()),
                                    uncertain=d["uncertain"], allow_outside_root=True, index_dir=run.root,
                                    **dataset.training_rows(d))
    else:
        table, _ = single_label.read_table(d["labels"], task=run.task(), label_column=d.get("label_column"),
                                           image_root=d["image_root"], classes=list(run.classes()),
                                           uncertain=d["uncertain"], allow_outside_root=True, index_dir=run.root,
                                           **dataset.training_rows(d))
    ids, probs = read_predictions(run.oof_csv, run.classes())
    position = {image_id: i for i, image_id in enumerate(table.ids)}
    missing = [i for i in ids if i not in position]
    if missing or len(ids) != len(table):
        raise RunError(f"{run.oof_csv} does not match its training list {d['labels']} ({len(ids)} vs {len(table)} rows, "
                       f"{len(missing)} unknown ids, e.g. {missing[:3]}); was the CSV changed after training?")
    return table.subset([position[i] for i in ids]), probs


def thresholds_for(run: Run) -> tuple[np.ndarray | None, str]:
    """A run's thresholds (its thresholds.json, else tuned on its oof.csv without writing) and where from."""
    from ..evaluate import thresholds

    if run.thresholds_json.exists():
        return thresholds.load(run.thresholds_json, run.classes()), str(run.thresholds_json)
    if run.oof_csv.exists():
        table, oof = oof_with_labels(run)
        return np.asarray(thresholds.tune(table.labels, oof, table.classes)["thresholds"]), f"tuned on {run.oof_csv}"
    return None, f"{run.root} has no OOF predictions yet"


def mark_done(run: Run, k: int, info: dict) -> None:
    atomic.write_text(run.done_path(k), json.dumps(info, indent=2, default=str))


def find(root: Path) -> list[Run]:
    """`root` itself if it is a run, else every run directory directly below it (sorted by name)."""
    root = Path(root)
    if (root / "config.yaml").is_file():
        return [Run(root)]
    return [Run(p.parent) for p in sorted(root.glob("*/config.yaml"))]


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def describe(run: Run) -> dict:
    """One row of the run listing: what the run is, how far it got, and its scores (None where absent)."""
    from ..evaluate import metrics

    row = {"name": run.root.name, "path": str(run.root), "backbone": None, "size": None, "folds_done": 0,
           "folds": None, "oof": None, "per_fold": None, "error": None}
    try:
        cfg = run.config()
        row.update(backbone=cfg["model"]["backbone"], size=cfg["input"]["size"], folds=cfg["train"]["folds"])
        done = run.finished_folds()
    except (RunError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
        row["error"] = f"unreadable run: {err}"
        return row
    row["folds_done"] = len(done)
    fold_results = [r for r in (_json(run.fold_dir(k) / "metrics.json") for k in done) if r]
    if fold_results:
        row["per_fold"] = metrics.summarize_folds(fold_results)
    summary = _json(run.metrics_json)
    if summary and "oof" in summary:
        oof = summary["oof"]
        row["oof"] = {"mAP": oof.get("mAP"), "mAUC": oof.get("mAUC"), "mF1": oof.get("mF1"),
                      "mF1_tuned": (_json(run.thresholds_json) or {}).get("mF1_tuned")}
    return row


def _f(value, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def _pm(stats) -> str:
    return f"{'-':>15}" if not stats else f"{stats['mean']:.4f} +- {stats['std']:.4f}".rjust(15)


def format_table(rows: list[dict]) -> str:
    """Runs as a fixed-width table: OOF scores over every training image, then per-fold mean +- std."""
    head = (f"{'run':<28}{'backbone':<18}{'size':>5}{'folds':>7}  {'OOF mAP':>7} {'mAUC':>7} {'mF1':>7} {'mF1@t':>7}"
            f"  {'fold mAP':>15} {'fold mAUC':>15} {'fold mF1':>15}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['name'][:27]:<28}{r['error']}")
            continue
        oof, pf = r["oof"] or {}, r["per_fold"] or {}
        folds = f"{r['folds_done']}/{r['folds']}"
        lines.append(f"{r['name'][:27]:<28}{str(r['backbone'])[:17]:<18}{r['size']:>5}{folds:>7}  "
                     f"{_f(oof.get('mAP'))} {_f(oof.get('mAUC'))} {_f(oof.get('mF1'))} {_f(oof.get('mF1_tuned'))}"
                     f"  {_pm(pf.get('mAP'))} {_pm(pf.get('mAUC'))} {_pm(pf.get('mF1'))}")
    lines.append("OOF: out-of-fold predictions of every training image (once all folds are done); mF1 at 0.5, "
                 "mF1@t at per-class thresholds tuned on the same OOF (optimistic). fold: mean +- std (ddof 0) "
                 "over finished folds.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.runs", "List cxrlt runs with their scores.")
    parser.add_argument("root", nargs="?", type=Path, default=Path("runs"), help="a runs folder or one run")
    parser.add_argument("--run", type=Path, action="append", help="list these runs (repeatable) instead of a folder's")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    if args.run:
        missing = [str(r) for r in args.run if not (r / "config.yaml").is_file()]
        if missing:
            print(f"error: not a run directory (no config.yaml): {', '.join(missing)}", file=sys.stderr)
            return 2
        rows = [describe(Run(r)) for r in args.run]
        print(json.dumps(rows, indent=2, default=str) if args.json else format_table(rows))
        return 0
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder; pass the folder your runs are in (train --out, default runs/)",
              file=sys.stderr)
        return 2
    rows = [describe(run) for run in find(args.root)]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print(f"no runs under {args.root} (a run is a folder with config.yaml, made by python -m cxrlt.train)")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
