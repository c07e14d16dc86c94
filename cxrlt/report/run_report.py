"""Look at a run (or a submission) before reading numbers: figures and one self-contained HTML page.

    python -m cxrlt.report runs/effv2s_768 --out report/                 # a trained run
    python -m cxrlt.report submissions/ens.csv --labels dev.csv --out report/   # predictions vs labels

For a run: the training class distribution (log scale, head / medium / tail), AP and AUC per finding
sorted by training frequency against chance (prevalence for AP, 0.5 for AUC) with the per-fold range,
precision-recall curves per finding, a reliability diagram with the expected calibration error,
learning curves per fold, a gallery of validation images (findings found / missed / false alarms at
--threshold) and the run's augmentations on its own training images (cxrlt/preview.py). Everything
is computed from the run directory: metrics.json (the numbers in the tables, shown as written there),
fold<k>/metrics.json, fold<k>/history.csv, oof.csv and the training labels (data.labels, or --labels).
For a submission CSV with --labels: the per-finding parts only (no folds, no training set).

The page (index.html) embeds its PNGs as data URIs, so it opens from anywhere with no network; the
PNGs are also written beside it. report.json holds every number the page shows; each number cell
names its source in a data-metric attribute (a path into metrics.json, or into report.json's
"metrics" for a submission or an unfinished run) or data-report (a path into report.json).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..utils import atomic, cli
from ..data import classes as cls, dataset
from ..config import tasks
from ..evaluate import single_label
from ..runtime import runs

log = logging.getLogger("cxrlt.report")


class ReportError(cli.UserError):
    """Inputs the report cannot use; the message says which file and what to do."""


@dataclass
class Figure:
    key: str
    title: str
    path: Path
    caption: str


@dataclass
class ReportData:
    """Everything the page shows, gathered once."""
    kind: str                      # "run" | "submission"
    name: str
    source: Path
    classes: list[str]
    groups: dict
    counts: np.ndarray             # training counts (run) or label counts (submission): the display order
    metrics: dict                  # run: metrics.json; submission: metrics.evaluate of the predictions
    y_true: np.ndarray
    y_prob: np.ndarray
    ids: np.ndarray
    paths: np.ndarray | None = None
    fold_of: np.ndarray | None = None
    fold_metrics: dict = field(default_factory=dict)   # k -> fold<k>/metrics.json
    histories: list = field(default_factory=list)
    cfg: dict | None = None
    notes: list = field(default_factory=list)
    task: str = "multilabel"       # multiclass / ordinal: the page adds the confusion matrix and per-class table

    @property
    def result(self) -> dict:
        """The metrics.evaluate-shaped dict behind the tables (OOF for a run)."""
        return self.metrics["oof"] if self.kind == "run" else self.metrics

    @property
    def metric_prefix(self) -> str:
        return "oof/" if self.kind == "run" else ""

    def order(self) -> list[int]:
        return [int(i) for i in np.argsort(-np.asarray(self.counts, dtype=np.float64), kind="stable")]


# ----------------------------------------------------------------------------------------------- inputs

def load_run(run: runs.Run, labels: str | None = None) -> ReportData:
    cfg = run.config()
    info = json.loads(run.classes_json.read_text()) if run.classes_json.exists() else None
    if info is None:
        raise ReportError(f"{run.root}: no classes.json; is this a cxrlt run directory?")
    classes = list(info["classes"])
    folds = run.finished_folds()
    if not folds:
        raise ReportError(f"{run.root}: no finished fold yet (fold<k>/done.json); train first, then report")
    table = _training_labels(run, cfg, classes, labels)
    position = {image_id: i for i, image_id in enumerate(table.ids)}
    frames = [pd.read_csv(run.fold_dir(k) / "oof.csv", dtype={"id": str}).assign(fold=k) for k in folds]
    oof = pd.concat(frames, ignore_index=True)
    unknown = [i for i in oof["id"] if i not in position]
    if unknown:
        raise ReportError(f"{table.source} lacks {len(unknown)} of the run's validation images (e.g. {unknown[:3]}); "
                          "pass the run's training label CSV with --labels")
    rows = np.array([position[i] for i in oof["id"]])
    y_prob = oof[classes].to_numpy(dtype=np.float64)
    notes = []
    if run.metrics_json.exists() and len(folds) == cfg["train"]["folds"]:
        summary = json.loads(run.metrics_json.read_text())
    else:
        groups = info["groups"]
        decision = tasks.ordinal_decision(cfg, run.task())
        summary = {"oof": single_label.score(run.task(), table.labels[rows], y_prob, classes, groups=groups,
                                             decision=decision)}
        notes.append(f"Partial run: folds {folds} of {cfg['train']['folds']} are finished; the numbers cover "
                     "their validation images and were computed by this report (no metrics.json yet).")
    fold_metrics = {k: json.loads((run.fold_dir(k) / "metrics.json").read_text()) for k in folds
                    if (run.fold_dir(k) / "metrics.json").exists()}
    histories = []
    for k in folds:
        hist = run.fold_dir(k) / "history.csv"
        best = run.fold_dir(k) / "best.json"
        if hist.exists():
            histories.append({"fold": k, "frame": pd.read_csv(hist),
                              "selected_epoch": json.loads(best.read_text()).get("epoch") if best.exists() else None})
    return ReportData(kind="run", name=run.root.name, source=run.root, classes=classes, groups=info["groups"],
                      counts=np.asarray(info["train_counts"], dtype=np.float64), metrics=summary,
                      y_true=table.labels[rows].astype(np.float64), y_prob=y_prob, ids=oof["id"].to_numpy(),
                      paths=table.paths[rows], fold_of=oof["fold"].to_numpy(), fold_metrics=fold_metrics,
                      histories=histories, cfg=cfg, notes=notes, task=run.task())


def _training_labels(run: runs.Run, cfg: dict, classes, labels) -> dataset.LabelTable:
    d = cfg["data"]
    csv = labels or d.get("labels")
    if not csv:
        raise ReportError(f"{run.root}: the config names no training labels (data.labels); pass --labels TRAIN.csv")
    if not Path(csv).is_file():
        raise ReportError(f"training labels {csv} (data.labels of {run.root}) not found; pass --labels TRAIN.csv")
    # The run's image root belongs to the run's label file; another --labels has paths relative to itself.
    same_file = not labels or Path(labels) == Path(d.get("labels") or "")
    # The report scores 0/1 labels: labels the run ignored (masked) are read as absent.
    uncertain = "zero" if d.get("uncertain") == "ignore" else d.get("uncertain", "error")
    if run.task() != "multilabel":
        from ..data import single_label as single_label_data

        return single_label_data.read_table(csv, task=run.task(), label_column=d.get("label_column"),
                                            image_root=d.get("image_root") if same_file else None,
                                            classes=list(classes), allow_outside_root=True)[0]
    return dataset.read_labels(csv, image_root=d.get("image_root") if same_file else None, classes=list(classes),
                               uncertain=uncertain, allow_outside_root=True,
                               **(dataset.training_rows(d) if same_file else {}))


def load_submission(pred_csv: Path, labels: str | None) -> ReportData:
    from ..evaluate import align as evaluate

    if not labels:
        raise ReportError(f"{pred_csv} is a prediction CSV: pass --labels LABELS.csv with the true findings to score it")
    if not Path(pred_csv).is_file():
        raise ReportError(f"prediction file {pred_csv} does not exist")
    from ..data import single_label as single_label_data

    header = pd.read_csv(pred_csv, nrows=0).columns.tolist()
    found = single_label_data.detect(labels)
    if found.form == "column" or "predicted" in header:  # a single-label prediction file: classes, then predicted
        classes = [c for c in header[1:] if c not in single_label_data.RESERVED + ("expected_grade",)]
        task = "ordinal" if "expected_grade" in header else "auto"
        table, _ = single_label_data.read_table(labels, task=task, classes=classes, allow_outside_root=True)
    else:
        table = dataset.read_labels(labels, classes=header[1:], allow_outside_root=True)
    y_prob = evaluate.align(Path(pred_csv), table)
    counts = table.class_counts()
    groups = cls.class_groups(table.classes, counts)
    result = single_label.score(table.task, table.labels, y_prob, list(table.classes), groups=groups)
    return ReportData(kind="submission", name=Path(pred_csv).stem, source=Path(pred_csv), classes=list(table.classes),
                      groups=groups, counts=counts, metrics=result, y_true=table.labels.astype(np.float64),
                      y_prob=y_prob, ids=table.ids, task=table.task)


# ---------------------------------------------------------------------------------------------- figures

def fold_values(data: ReportData, key: str) -> dict[str, list]:
    """class -> [value of fold k for k in order] from fold<k>/metrics.json."""
    out = {c: [] for c in data.classes}
    for k in sorted(data.fold_metrics):
        for row in data.fold_metrics[k]["per_class"]:
            if row["class"] in out:
                out[row["class"]].append(row[key])
    return out


def per_class_rows(data: ReportData) -> list[dict]:
    by_class = {r["class"]: r for r in data.result["per_class"]}
    ap_folds, auc_folds = fold_values(data, "ap"), fold_values(data, "auc")
    rows = []
    for j in data.order():
        name = data.classes[j]
        r = by_class[name]
        rows.append({"class": name, "group": data.groups.get(name), "n_train": int(data.counts[j]),
                     "n_pos": r["n_pos"], "prevalence": r["prevalence"], "ap": r["ap"], "auc": r["auc"], "f1": r["f1"],
                     "threshold": r.get("threshold", 0.5), "ap_folds": ap_folds[name], "auc_folds": auc_folds[name]})
    return rows


def pick_gallery(data: ReportData, n: int, seed: int) -> list[int]:
    """Validation images to show: tail, medium and head findings in turn, then images with no finding."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    group_of = np.array([data.groups.get(c) for c in data.classes])
    pools = [np.flatnonzero(data.y_true[:, group_of == g].sum(axis=1) > 0) for g in ("tail", "medium", "head")]
    pools.append(np.flatnonzero(data.y_true.sum(axis=1) == 0))
    pools = [list(rng.permutation(p)) for p in pools]
    while len(chosen) < n and any(pools):
        for pool in pools:
            while pool and pool[0] in chosen:
                pool.pop(0)
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return chosen


def gallery_items(data: ReportData, picks: list[int], size: int = 320) -> list[dict]:
    from ..data import dicom

    items = []
    for i in picks:
        grey = dicom.grey_picture(data.paths[i], ((data.cfg or {}).get("input") or {}).get("dicom_window", "stored"))
        grey.thumbnail((size, size))
        pixels = np.asarray(grey)
        fold = f"fold {data.fold_of[i]}, " if data.fold_of is not None else ""
        items.append({"image": pixels, "caption": f"{fold}{str(data.ids[i])[:23]}", "truth": data.y_true[i] > 0.5,
                      "prob": data.y_prob[i]})
    return items


def augmentation_preview(data: ReportData, path: Path, n: int = 5, seed: int = 0) -> Path:
    """preview.py's grid, limited to the operations this run's config switches on."""
    import tensorflow as tf

    from ..data import pipeline
    from . import preview

    cfg = data.cfg
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data.paths), size=min(n, len(data.paths)), replace=False)
    images = tf.stack([pipeline.decode_image(tf.constant(p), cfg["input"]["size"], cfg["input"]["resize"],
                                              intensity=cfg["input"].get("intensity", "full_range"),
                                              dicom=pipeline.dicom_setting([p], cfg))
                       for p in data.paths[idx]])
    grid = preview.rows(images, tf.constant(data.y_true[idx], tf.float32), cfg, seed)
    m, a = cfg["mix"], cfg["augment"]
    wanted = {"original": True, "basic (seed 002)": a["strategy"] == "none",
              "Mosaic, crop": m["mosaic"] > 0 and m["mosaic_variant"] in ("crop", "both"),
              "Mosaic, resize": m["mosaic"] > 0 and m["mosaic_variant"] in ("resize", "both"),
              "MixUp": m["mixup"] > 0, "CutMix": m["cutmix"] > 0, "CutOut": m["cutout"] > 0,
              "weak (seed 000)": a["strategy"] != "none", "strong (seed 000)": a["strategy"] != "none"}
    preview.render([row for row in grid if wanted.get(row[0], True)], data.classes, path)
    return path


def make_figures(data: ReportData, out: Path, *, threshold: float, gallery_n: int, seed: int,
                 with_preview: bool) -> tuple[list[Figure], dict]:
    from . import plots
    from ..utils.progress import Progress

    figures: list[Figure] = []
    extra: dict = {}
    rows = per_class_rows(data)
    order = data.order()
    what = "out-of-fold predictions, every training image scored by the fold that did not train on it" \
        if data.kind == "run" else f"{data.source.name} against {len(data.ids)} labelled images"
    steps = ["distribution", "ap_auc", "pr", "reliability"] + (["learning", "gallery", "preview"] if data.kind == "run" else [])
    with Progress(len(steps), f"report {data.name}", unit="figure") as bar:
        if data.kind == "run":
            figures.append(Figure("distribution", "Training set: how often each finding occurs", plots.class_distribution(
                data.classes, data.counts, data.groups, out / "class_distribution.png",
                title=f"Training images per finding ({int(np.sum(data.counts)):,} positive labels; long tail at the bottom)"),
                "Bars: number of training radiographs labelled with the finding, on a log scale. Head findings "
                "are common, tail findings rare; the model sees the tail far less often. "
                + ("Groups are CXR-LT 2023's official ones (set by the frequencies in the real MIMIC-CXR training "
                   "set), so on other data a few bars may sit out of colour order."
                   if set(data.classes) == set(cls.CXRLT2023) else "Groups are terciles of this frequency.")))
        else:
            figures.append(Figure("distribution", "Labelled set: how often each finding occurs", plots.class_distribution(
                data.classes, data.counts, data.groups, out / "class_distribution.png",
                title="Labelled images per finding (log scale)"),
                "Bars: radiographs in the labelled set with the finding, on a log scale; groups are terciles "
                "of this frequency unless the classes are CXR-LT 2023's."))
        bar.add(1)
        fold_word = f"{len(data.fold_metrics)} validation folds"
        figures.append(Figure("ap_auc", "Detection quality per finding", plots.ap_auc_bars(
            rows, out / "ap_auc_per_class.png", fold_word=fold_word,
            title=f"AP and AUC per finding, most frequent at the top ({what.split(',')[0]})"),
            "Bars: average precision (left) and ROC AUC (right) per finding"
            + (" over all validation images pooled (the table's numbers)" if data.kind == "run" else "")
            + f"; (n=...) is the number of {'training' if data.kind == 'run' else 'labelled'} images. Black ticks mark "
            "chance for AP, which equals the finding's prevalence; the dashed line chance for AUC. "
            + (f"Black range bars: lowest to highest value over the {fold_word}, each scored on its own; the pooled "
               "bar can fall outside that range because pooling ranks the folds' scores together. "
               if data.fold_metrics else "") + "A bar near its chance tick means the model ranks that finding little better "
            "than guessing: look at the tail."))
        bar.add(1)
        ap = {r["class"]: r["ap"] for r in data.result["per_class"]}
        figures.append(Figure("pr", "Precision-recall curves", plots.pr_curves(
            data.y_true, data.y_prob, data.classes, data.groups, order, ap, out / "pr_curves.png",
            title="Precision-recall per finding (dashed: prevalence = chance); title colour = head / medium / tail"),
            "Each panel: the precision (share of flagged images that truly have the finding) achievable at each "
            "recall (share of images with the finding that are flagged), over all thresholds. n+ = images with the "
            "finding. Curves close to the dashed line carry little information."))
        bar.add(1)
        path, ece = plots.reliability_diagram(
            data.y_true, data.y_prob, [data.groups.get(c) for c in data.classes], out / "reliability.png",
            title="Calibration: does a predicted 0.3 mean 30 %?")
        extra["ece"] = {"pooled": ece["pooled"], "classwise": ece["classwise"], "groups": ece["groups"],
                        "per_class": dict(zip(data.classes, ece["per_class"])), "bins": 10}
        figures.append(Figure("reliability", "Calibration", path,
                              "Points: for predictions in each tenth of the probability range, how often the finding "
                              "was really present. On the diagonal the probabilities can be read as frequencies. "
                              "ECE (expected calibration error) is the average distance to the diagonal, weighted by "
                              "how many predictions fall in each bin (0 = perfect). Bottom: how many predictions "
                              "fall in each bin; bins with fewer than 10 are not drawn (too few to say), but count "
                              "in the ECE."))
        bar.add(1)
        if data.kind == "run":
            if data.histories:
                loss_name = (data.cfg or {}).get("loss", {}).get("name", "loss")
                figures.append(Figure("learning", "Learning curves", plots.learning_curves(
                    data.histories, out / "learning_curves.png", loss_name=loss_name,
                    baseline=data.result.get("prevalence_baseline_mAP"),
                    title="Per fold: training loss and validation mAP by epoch"),
                    "Left: the training loss per epoch (lower is better). Right: validation mAP over all findings "
                    "(solid) and over the tail findings (dashed); the star marks the epoch whose model was kept."))
            else:
                data.notes.append("No fold<k>/history.csv: learning curves left out.")
            bar.add(1)
            figures.extend(_gallery_figure(data, out, threshold, gallery_n, seed))
            bar.add(1)
            if with_preview:
                figures.extend(_preview_figure(data, out, seed))
            bar.add(1)
    return figures, extra


def _gallery_figure(data: ReportData, out: Path, threshold: float, n: int, seed: int) -> list[Figure]:
    from . import plots

    if n <= 0 or data.paths is None:
        return []
    picks = pick_gallery(data, n, seed)
    missing = [data.paths[i] for i in picks if not Path(data.paths[i]).is_file()]
    if missing:
        data.notes.append(f"Gallery left out: {len(missing)} image files not found (e.g. {missing[0]}); "
                          "check data.image_root or pass --labels with the right image root.")
        return []
    path = plots.gallery(gallery_items(data, picks), data.classes, out / "gallery.png", threshold=threshold,
                         title=f"Validation radiographs: green = found, red = MISSED, brown = false alarm "
                               f"(threshold {threshold:g})")
    return [Figure("gallery", "Validation images", path,
                   f"Radiographs from the validation folds (each scored by the fold model that never trained on it), "
                   f"chosen to include tail, medium and head findings. Under each: its labelled findings with the "
                   f"predicted probability, found (green, probability at least {threshold:g}) or MISSED (red), then "
                   f"findings predicted but not labelled (false alarms, brown).")]


def _preview_figure(data: ReportData, out: Path, seed: int) -> list[Figure]:
    if data.paths is None or not all(Path(p).is_file() for p in data.paths[:5]):
        data.notes.append("Augmentation preview left out: the training images were not found.")
        return []
    path = augmentation_preview(data, out / "augmentations.png", seed=seed)
    return [Figure("preview", "What the model was trained on", path,
                   "Training radiographs of this run through the augmentations its config switches on, one row per "
                   "operation (mixed images list every finding their label carries, with its weight).")]


# ------------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1180px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555} .note{background:#fff6e0;border-left:4px solid #E69F00;padding:.5em 1em}
table{border-collapse:collapse;font-size:.88em} th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td.name{text-align:left} .head{color:#0072B2} .medium{color:#B07800} .tail{color:#D55E00}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#444;max-width:60em}
.cards td{font-size:1.05em}
"""


def _num(value, path: str | None = None, digits: int = 4, attr: str = "data-metric") -> str:
    text = "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else (
        f"{value:,}" if isinstance(value, (int, np.integer)) else f"{value:.{digits}f}")
    key = f' {attr}="{html.escape(path)}"' if path else ""
    return f"<td{key}>{text}</td>"


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(data: ReportData, figures: list[Figure], extra: dict, threshold: float) -> str:
    result, p = data.result, data.metric_prefix
    cfg = data.cfg or {}
    title = f"cxrlt report: {data.name}"
    if data.kind == "run":
        m, t = cfg.get("model", {}), cfg.get("train", {})
        meta = (f"run {html.escape(str(data.source))}: {html.escape(str(m.get('backbone')))} at "
                f"{cfg.get('input', {}).get('size')} px, {t.get('folds')} folds, {t.get('epochs')} epochs, loss "
                f"{html.escape(str(cfg.get('loss', {}).get('name')))}; {len(data.ids):,} validation images.")
    else:
        meta = f"predictions {html.escape(str(data.source))} scored against {len(data.ids):,} labelled images."
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{meta} Generated {stamp} by cxrlt {__version__}.</p>']
    for note in data.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    f1_title = "mF1 at 0.5" if data.task == "multilabel" else "macro-F1"
    parts += ["<h2>Summary</h2>", '<table class="cards">',
              f"<tr><th>scope</th><th>mAP</th><th>mAUC</th><th>{f1_title}</th><th>findings scored</th></tr>",
              f'<tr><td class="name">{"out-of-fold (all folds pooled)" if data.kind == "run" else "all findings"}</td>'
              + _num(result["mAP"], p + "mAP") + _num(result["mAUC"], p + "mAUC") + _num(result["mF1"], p + "mF1")
              + _num(result["n_scored"], p + "n_scored") + "</tr>"]
    for g, stats in (result.get("groups") or {}).items():
        if stats:
            parts.append(f'<tr><td class="name {g}">{g} findings</td>' + _num(stats["mAP"], f"{p}groups/{g}/mAP")
                         + _num(stats["mAUC"], f"{p}groups/{g}/mAUC") + _num(stats["mF1"], f"{p}groups/{g}/mF1")
                         + _num(stats["n_classes"], f"{p}groups/{g}/n_classes") + "</tr>")
    parts.append('<tr><td class="name">chance (prevalence baseline)</td>'
                 + _num(result["prevalence_baseline_mAP"], p + "prevalence_baseline_mAP") + "<td></td><td></td><td></td></tr>")
    folds = data.metrics.get("folds") if data.kind == "run" else None
    if folds:
        cells = "".join(f"<td>{_span(stats['mean'], f'folds/{k}/mean', 'data-metric')} ± "
                        f"{_span(stats['std'], f'folds/{k}/std', 'data-metric')}</td>" if stats else "<td>n/a</td>"
                        for k, stats in ((k, folds.get(k)) for k in ("mAP", "mAUC", "mF1")))
        parts.append(f'<tr><td class="name">per fold: mean ± SD over {len(data.metrics.get("per_fold", []))} folds</td>'
                     f"{cells}<td></td></tr>")
        for i, f in enumerate(data.metrics.get("per_fold", [])):
            parts.append(f'<tr><td class="name">fold {i}</td>' + _num(f["mAP"], f"per_fold/{i}/mAP")
                         + _num(f["mAUC"], f"per_fold/{i}/mAUC") + _num(f["mF1"], f"per_fold/{i}/mF1") + "<td></td></tr>")
    parts.append("</table>")
    ece = extra.get("ece")
    if ece:
        parts.append(f"<p>Expected calibration error: {_span(ece['pooled'], 'ece/pooled')} over all (image, finding) "
                     f"pairs, {_span(ece['classwise'], 'ece/classwise')} averaged per finding (0 = probabilities "
                     "are frequencies).</p>")
    if data.task != "multilabel":  # the task's own scores, the confusion matrix and the per-class table
        from . import single_label as single_label_report

        parts += single_label_report.sections(result, p, folds if data.kind == "run" else None)
    if result.get("undefined"):
        parts.append('<p class="note">Not scored: ' + html.escape(", ".join(
            f"{u['class']} ({u['reason']})" for u in result["undefined"])) + ".</p>")
    for fig in figures:
        parts += [f'<h2 id="{fig.key}">{html.escape(fig.title)}</h2>', "<figure>",
                  f'<img src="{_img(fig.path)}" alt="{html.escape(fig.title)}">',
                  f"<figcaption>{html.escape(fig.caption)} (file: {html.escape(fig.path.name)})</figcaption>",
                  "</figure>"]
    parts += _class_table(data, extra, threshold)
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _span(value, path: str, attr: str = "data-report") -> str:
    text = "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"
    return f'<span {attr}="{html.escape(path)}">{text}</span>'


def _class_table(data: ReportData, extra: dict, threshold: float) -> list[str]:
    p = data.metric_prefix
    n_word = "training images" if data.kind == "run" else "labelled images"
    fold_col = bool(data.fold_metrics)
    parts = ['<h2 id="table">Per finding</h2>',
             f"<p>Most frequent first. Positives and prevalence are counted on the "
             f"{'validation (out-of-fold) images' if data.kind == 'run' else 'labelled images'}; F1 at threshold "
             f"{threshold:g}; ECE over 10 bins.</p>", "<table>",
             f"<tr><th>finding</th><th>group</th><th>{n_word}</th><th>positives scored</th><th>prevalence</th><th>AP</th>"
             "<th>AUC</th><th>F1</th><th>ECE</th>" + ("<th>AP per fold (min - max)</th>" if fold_col else "") + "</tr>"]
    ece = (extra.get("ece") or {}).get("per_class", {})
    for r in per_class_rows(data):
        c, key = r["class"], f"{p}per_class/{r['class']}"
        g = r["group"] or ""
        row = (f'<tr><td class="name {g}">{html.escape(c)}</td><td class="name {g}">{g or "-"}</td>'
               f"<td>{r['n_train']:,}</td>" + _num(r["n_pos"], key + "/n_pos") + _num(r["prevalence"], key + "/prevalence")
               + _num(r["ap"], key + "/ap") + _num(r["auc"], key + "/auc") + _num(r["f1"], key + "/f1")
               + _num(ece.get(c), f"ece/per_class/{c}", attr="data-report"))
        if fold_col:
            values = [v for v in r["ap_folds"] if v is not None]
            row += f"<td>{min(values):.4f} - {max(values):.4f}</td>" if values else "<td>n/a</td>"
        parts.append(row + "</tr>")
    parts.append("</table>")
    return parts


# ------------------------------------------------------------------------------------------------ entry

def build_report(source: Path, out: Path, *, labels: str | None = None, threshold: float = 0.5, gallery_n: int = 12,
                 seed: int = 0, with_preview: bool = True) -> Path:
    """Write out/index.html, the PNGs and report.json; returns the HTML path."""
    source = Path(source)
    if source.is_dir():
        data = load_run(runs.Run(source), labels)
    elif source.suffix.lower() == ".csv":
        data = load_submission(source, labels)
    elif not source.exists():
        raise ReportError(f"{source} does not exist: pass a run directory (runs/<name>) or a prediction CSV")
    else:
        raise ReportError(f"{source}: expected a run directory or a prediction CSV")
    out.mkdir(parents=True, exist_ok=True)
    figures, extra = make_figures(data, out, threshold=threshold, gallery_n=gallery_n, seed=seed,
                                  with_preview=with_preview)
    page = out / "index.html"
    atomic.write_text(page, render_html(data, figures, extra, threshold))
    atomic.write_json(out / "report.json", {"source": str(source), "kind": data.kind, "metrics": data.metrics,
                                            "ece": extra.get("ece"), "figures": [f.path.name for f in figures],
                                            "notes": data.notes, "threshold": threshold})
    return page


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.report", __doc__)
    parser.add_argument("source", type=Path, nargs="?", help="run directory (runs/<name>) or prediction/submission CSV")
    parser.add_argument("--run", type=Path, help="the run directory (the same as giving it as SOURCE)")
    parser.add_argument("--labels", help="label CSV: the truth for a prediction CSV; for a run, overrides data.labels")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder the report.html and its PNGs are written to")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability that counts as 'found' in the gallery")
    parser.add_argument("--gallery", type=int, default=12, help="validation images in the gallery (0: none)")
    parser.add_argument("--no-preview", action="store_true", help="leave out the augmentation preview")
    parser.add_argument("--seed", type=int, default=0, help="which images the gallery and preview show")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    if (args.source is None) == (args.run is None):
        parser.error("give one run directory or CSV: SOURCE or --run RUN")
    args.source = args.source or args.run
    with cli.errors():
        if not 0.0 < args.threshold < 1.0:
            raise ReportError(f"--threshold must be between 0 and 1, got {args.threshold}")
        page = build_report(args.source, args.out, labels=args.labels, threshold=args.threshold,
                            gallery_n=args.gallery, seed=args.seed, with_preview=not args.no_preview)
        print(f"wrote {page} (open it in a browser; PNGs beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
