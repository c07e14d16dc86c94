"""Single-label label files: one class (multiclass) or one grade (ordinal) per image, read into the same
`LabelTable` the multi-label path uses, with one-hot rows, so samplers, mixers and prediction files work unchanged.

Two layouts are accepted:
- one label column: `data.label_column`, else a column named ``label``, ``grade`` or ``level`` (Kaggle's
  EyePACS trainLabels.csv), holding class names or indices 0..K-1 (grades);
- one-hot columns: one 0/1 column per class with exactly one 1 per row.

`read_table` reads any label file for a task; with ``task="auto"`` it decides first (`detect`): a label
column means multiclass; a CXR-LT edition's class columns mean multilabel (whatever the rows hold); a generic
file's 0/1 columns mean multiclass when every row holds exactly one 1, multilabel otherwise. Auto never
guesses ordinal: grades in order are the user's statement (data.task ordinal). One log line says what was
found and why. Everything else about the file (paths, ids, patients, studies, exclusions, the image-root
rules) is `dataset.read_labels`' business.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import tasks as task_rules
from . import classes as cls, dataset, editions as eds

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "grade", "level")  # level: the header of Kaggle's EyePACS trainLabels.csv
# Column names a prediction CSV uses besides the classes (runs.write_predictions): no class may take them.
RESERVED = ("id", "fold", "predicted")
_SEPARATORS = re.compile(r"[|;,]")
_INTEGER = re.compile(r"^[+-]?\d+(?:\.0*)?$")


class SingleLabelError(dataset.LabelFileError):
    """A single-label file whose rows do not hold exactly one known class; the message names the lines."""


@dataclass(frozen=True)
class Detected:
    task: str             # multilabel | multiclass | ordinal
    form: str             # column (one label column) | one_hot (0/1 columns) | multi_hot | undecided (auto, a
                          #   generic file of 0/1 columns whose rows must be looked at: read_table does)
    column: str | None    # the label column of the column form
    why: str


def read_header(csv_path) -> list[str] | None:
    """The header row as the reader will see it (stripped names, BOM dropped); None when the file cannot be
    read this way (dataset.read_labels then names the problem)."""
    try:
        with open(csv_path, "r", encoding="utf-8-sig", newline="") as handle:
            for row in csv.reader(handle):
                if any(cell.strip() for cell in row):
                    return [cell.strip() for cell in row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def label_column_of(columns: Sequence[str], label_column: str | None, where: str) -> str | None:
    """The label column: `label_column` (which must exist), else the first of LABEL_COLUMNS present."""
    if label_column:
        if label_column not in columns:
            close = difflib.get_close_matches(label_column, list(columns), n=1)
            raise SingleLabelError(f"{where}: no label column {label_column!r} (data.label_column / --label-column); "
                                   f"columns are {list(columns)[:12]}" + (f"; did you mean {close[0]!r}?" if close else ""))
        return label_column
    return next((c for c in LABEL_COLUMNS if c in columns), None)


def detect(csv_path, requested: str = "auto", *, label_column: str | None = None, edition: str = "auto",
           table: dataset.LabelTable | None = None) -> Detected:
    """Which task and layout a label file is. `table`: the file already read as 0/1 columns (for the
    one-1-per-row test of a generic file); without it only the header is used where that decides."""
    where = str(csv_path)
    if requested == "multilabel":
        return Detected("multilabel", "multi_hot", None, "data.task multilabel")
    columns = read_header(csv_path) or []
    column = label_column_of(columns, label_column, where)
    if column is not None:
        why = (f"data.task {requested}" if requested != "auto" else
               f"one label column {column!r} (class names or indices): one class per image")
        return Detected("multiclass" if requested == "auto" else requested, "column", column, why)
    if requested != "auto":
        return Detected(requested, "one_hot", None, f"data.task {requested}, 0/1 columns (one-hot)")
    found = eds.detect(columns, where) if edition == "auto" else None
    if edition not in ("auto", "generic") or (found is not None and found.edition is not None):
        name = edition if edition != "auto" else found.name
        return Detected("multilabel", "multi_hot", None, f"a CXR-LT edition's file ({name}): multi-label by definition")
    if table is None:
        return Detected("multilabel", "undecided", None, "0/1 columns of a generic file")
    if table.labels is None:
        return Detected("multilabel", "multi_hot", None, "no label column and no labels to look at")
    per_row = table.labels.sum(axis=1)
    if table.labels.shape[1] >= 2 and np.all(per_row == 1):
        return Detected("multiclass", "one_hot", None,
                        f"every one of its {len(per_row)} rows has exactly one 1 among {table.labels.shape[1]} 0/1 "
                        "columns (one-hot); set data.task multilabel if the rows only happen to hold one finding")
    several, none = int(np.sum(per_row > 1)), int(np.sum(per_row == 0))
    return Detected("multilabel", "multi_hot", None, f"0/1 columns with {several} rows holding several 1s and {none} "
                                                      "rows none")


def read_table(csv_path, *, task: str = "auto", label_column: str | None = None, image_root=None,
               classes="edition", require_labels: bool = True, uncertain: str = "error",
               allow_outside_root: bool = False, check_files: bool = False, edition: str = "auto",
               exclude=None, split: str | None = None, index_dir=None) -> tuple[dataset.LabelTable, Detected]:
    """(table, what was detected) for a label file of `task` (auto: detected and logged). Multi-label files go
    to dataset.read_labels unchanged; single-label rows come back one-hot, `table.task` set. `exclude`, `split`
    and `index_dir` are read_labels' (rows left out, the rows of one split, the image-root index's folder)."""
    common = dict(image_root=image_root, allow_outside_root=allow_outside_root, check_files=check_files,
                  exclude=exclude, split=split, index_dir=index_dir)
    where = str(csv_path)
    detected = detect(csv_path, task, label_column=label_column, edition=edition)
    if detected.form == "column":
        table = _read_column(csv_path, detected, classes, require_labels, edition, common)
    else:
        table = dataset.read_labels(csv_path, classes=classes, require_labels=require_labels, uncertain=uncertain,
                                    edition=edition, **common)
        if detected.form == "undecided":
            detected = detect(csv_path, task, label_column=label_column, edition=edition, table=table)
        if detected.task != "multilabel":
            table = _one_hot(table, detected.task, where)
    if task == "auto":
        log.info("%s: task %s (auto-detected: %s)", where, detected.task, detected.why)
    if detected.task != "multilabel":
        _check_class_names(table.classes, where)
        if table.labels is not None and require_labels:  # a training file: a class it lacks cannot be learnt
            _warn_empty_classes(table, where)
    return table, detected


# --------------------------------------------------------------------------------------- the two layouts

def _one_hot(table: dataset.LabelTable, task: str, where: str) -> dataset.LabelTable:
    """A table of 0/1 columns as a single-label table: every row must hold exactly one 1."""
    if table.labels is None:
        return replace(table, task=task)
    if table.mask is not None:
        raise SingleLabelError(f"{where}: uncertain (-1 / blank) labels cannot be ignored in a single-label task: "
                               "each image needs its one class")
    per_row = table.labels.sum(axis=1)
    several, none = np.flatnonzero(per_row > 1), np.flatnonzero(per_row == 0)
    if len(several):
        i = several[0]
        both = [c for c, v in zip(table.classes, table.labels[i]) if v > 0.5]
        raise SingleLabelError(
            f"{where}: {len(several)} rows have two or more labels, first image {table.ids[i]!r} ({', '.join(both)}); "
            f"a {task} task takes exactly one class per image (set data.task multilabel if images can have several)")
    if len(none):
        raise SingleLabelError(f"{where}: {len(none)} rows have no label (every 0/1 column is 0), first image "
                               f"{table.ids[none[0]]!r}; a {task} task needs exactly one 1 per row")
    return replace(table, task=task)


def _read_column(csv_path, detected: Detected, classes, require_labels: bool, edition: str,
                 common: dict) -> dataset.LabelTable:
    """The label-column layout: dataset.read_labels for everything but the labels, then the column parsed."""
    where = str(csv_path)
    frame = dataset._read_csv(Path(csv_path))  # the same parse read_labels makes (line numbers as the index)
    table = dataset.read_labels(csv_path, classes=[], require_labels=False, uncertain="error",
                                edition="generic" if edition == "auto" else edition, **common)
    rows = _rows_of(frame, table, where)
    cells = frame[detected.column].to_numpy(dtype=object)[rows]
    lines = frame.index.to_numpy()[rows]
    names = _class_list(classes)
    blank = np.array([_blank(c) for c in cells], dtype=bool)
    if blank.all() and not require_labels:  # an unlabelled image list (a test list with an empty column)
        return replace(table, classes=tuple(names or ()), labels=None, task=detected.task)
    if blank.any():
        raise SingleLabelError(f"{where}: {int(blank.sum())} rows have no {detected.column!r} (lines "
                               f"{_lines(lines[blank])}); every image needs its class")
    texts = [str(c).strip() for c in cells]
    _refuse_several(texts, names, lines, where, detected.column)
    index, names = _indices(texts, names, lines, where, detected)
    labels = np.zeros((len(texts), len(names)), np.float32)
    labels[np.arange(len(texts)), index] = 1.0
    return replace(table, classes=tuple(names), labels=labels, mask=None, task=detected.task)


def _rows_of(frame, table: dataset.LabelTable, where: str) -> np.ndarray:
    """Positions in `frame` of the table's images, in the table's order (read_labels may have dropped excluded
    rows; ids are the id column, or the path as written, exactly as read_labels makes them)."""
    id_col = table.id_column if table.id_column in frame.columns else None
    source = frame[id_col] if id_col else frame[next(c for c in dataset.PATH_COLUMNS if c in frame.columns)]
    position = {str(v).strip(): i for i, v in enumerate(source.to_numpy(dtype=object)) if not _blank(v)}
    try:
        return np.array([position[str(i)] for i in table.ids], dtype=np.int64)
    except KeyError as err:  # ids made from file stems (an edition's file without its id column)
        raise SingleLabelError(f"{where}: cannot match image {err.args[0]!r} to its row; give the file an id "
                               f"column ({', '.join(dataset.ID_COLUMNS)}) or a path column") from None


def _class_list(classes) -> list[str] | None:
    """data.classes as the single-label class list: an explicit list (or a schema/edition name), None to infer."""
    if classes in (None, "edition", "auto"):
        return None
    if isinstance(classes, str):
        if classes in eds.EDITIONS:
            return list(eds.EDITIONS[classes].classes)
        return list(cls.resolve_schema(classes))
    return [str(c) for c in classes]


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        str(value).strip().lower() in ("",) + tuple(dataset.MISSING_TEXTS)


def _refuse_several(texts: list[str], names: list[str] | None, lines, where: str, column: str) -> None:
    """A cell naming two classes ('COVID-19|ARDS', 'A;B', '"1,3"') is two labels, not a class name."""
    known = set(names or ())
    for text, line in zip(texts, lines):
        if text in known or not _SEPARATORS.search(text):
            continue
        parts = [p.strip() for p in _SEPARATORS.split(text) if p.strip()]
        if len(parts) >= 2:
            raise SingleLabelError(f"{where}: line {line}, column {column!r} holds {len(parts)} labels ({text!r}); "
                                   "a single-label task takes exactly one class per image (set data.task multilabel "
                                   "with one 0/1 column per class if images can have several)")


def _indices(texts: list[str], names: list[str] | None, lines, where: str, detected: Detected):
    """(class index per row, class names). Names are matched first; integers are indices 0..K-1 (grades)."""
    integer = np.array([bool(_INTEGER.match(t)) for t in texts])
    if names is None:
        if integer.all():
            values = np.array([int(float(t)) for t in texts])
            if (values < 0).any():
                bad = np.flatnonzero(values < 0)[0]
                raise SingleLabelError(f"{where}: line {lines[bad]}: grade {texts[bad]!r} is out of range; grades and "
                                       f"class indices count from 0")
            names = [str(k) for k in range(int(values.max()) + 1)]
            return values, names
        numbers = [t for t, i in zip(texts, integer) if not i and _number(t)]
        if numbers and detected.task == "ordinal":
            bad = texts.index(numbers[0])
            raise SingleLabelError(f"{where}: line {lines[bad]}: grade {numbers[0]!r} is out of range; grades are "
                                   "whole numbers 0..K-1")
        if detected.task == "ordinal":
            raise SingleLabelError(f"{where}: an ordinal task's grades are numbers 0..K-1, or names whose order "
                                   f"data.classes lists (e.g. [none, mild, moderate, severe]); found names such as "
                                   f"{sorted(set(texts))[:4]}")
        names = sorted(set(texts))
        lookup = {n: k for k, n in enumerate(names)}
        return np.array([lookup[t] for t in texts]), names
    lookup = {n: k for k, n in enumerate(names)}
    out = np.empty(len(texts), np.int64)
    for r, text in enumerate(texts):
        if text in lookup:
            out[r] = lookup[text]
            continue
        if integer[r]:
            value = int(float(text))
            if 0 <= value < len(names):
                out[r] = value
                continue
            raise SingleLabelError(f"{where}: line {lines[r]}: grade {text!r} is out of range: data.classes names "
                                   f"{len(names)} classes, so grades run 0..{len(names) - 1}")
        if _number(text):
            raise SingleLabelError(f"{where}: line {lines[r]}: grade {text!r} is out of range: grades are whole "
                                   f"numbers 0..{len(names) - 1}")
        close = difflib.get_close_matches(text, names, n=1)
        raise SingleLabelError(f"{where}: line {lines[r]}, column {detected.column!r}: unknown class {text!r}"
                               + (f" (did you mean {close[0]!r}?)" if close else "")
                               + f"; the classes are {names[:12]}{' ...' if len(names) > 12 else ''} (a class the "
                               "training file lacks must be listed in data.classes)")
    return out, names


def _number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _lines(lines, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in lines[:limit])
    return shown + (f" (+{len(lines) - limit} more)" if len(lines) > limit else "")


def _check_class_names(names, where: str) -> None:
    clash = [n for n in names if n in RESERVED]
    if clash:
        raise SingleLabelError(f"{where}: class name(s) {clash} would collide with the prediction files' own columns "
                               f"({', '.join(RESERVED)}); rename them (data.classes maps indices to names)")


def _warn_empty_classes(table: dataset.LabelTable, where: str) -> None:
    empty = [c for c, n in zip(table.classes, table.labels.sum(axis=0)) if n == 0]
    if empty:
        log.warning("%s: no image of class %s (the model still has an output for it)", where, ", ".join(empty))


# ------------------------------------------------------------------------------------------- the run's task

def resolve_task(cfg: dict, csv_path, **read_kwargs) -> tuple[dataset.LabelTable, Detected]:
    """Read the training file for cfg's data.task (auto: detected), then settle the config for that task in place
    (config.tasks.apply_task_defaults, the checks of schema.task_problem): what the run saves is explicit."""
    from ..config import schema

    d = cfg["data"]
    table, detected = read_table(csv_path, task=d["task"], label_column=d.get("label_column"), **read_kwargs)
    if d["task"] == "auto":
        task_rules.apply_task_defaults(cfg, detected.task)
    problem = schema.task_problem(cfg, detected.task)
    if problem:
        raise schema.ConfigError(f"{problem} (task {detected.task}: {detected.why})")
    return table, detected


def class_index(table: dataset.LabelTable) -> np.ndarray:
    """int64 [N]: each image's class (single-label tables only)."""
    if table.labels is None:
        raise SingleLabelError(f"{table.source}: has no labels")
    return np.argmax(table.labels, axis=1).astype(np.int64)


def majority_flags(table: dataset.LabelTable, majority_classes) -> tuple[np.ndarray, list[str]]:
    """(minority flag per image, the majority classes) for seed 000's routing in a single-label task: the named
    classes (augment.majority_classes) take the majority pipeline, every other class the minority one; by
    default the most frequent class is the majority (seed 000's code: Healthy against severities 1-5)."""
    counts = table.class_counts()
    names = list(table.classes)
    if majority_classes is None:
        majority = [names[int(np.argmax(counts))]]
    else:
        majority = [str(c) for c in majority_classes]
        unknown = [c for c in majority if c not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            raise SingleLabelError(f"augment.majority_classes names {unknown} not among the classes {names[:12]}"
                                   + (f" (did you mean {close[0]!r}?)" if close else ""))
    columns = [names.index(c) for c in majority]
    return table.labels[:, columns].sum(axis=1) < 0.5, majority


def is_single_label_table(table: dataset.LabelTable) -> bool:
    return task_rules.is_single_label(table.task)

