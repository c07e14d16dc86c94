"""Score any prediction CSV (id column + one probability column per class) against a label CSV.

    python -m cxrlt.evaluate --pred submissions/ens.csv --labels development.csv [--json metrics.json]

Prints the per-class table (AP, AUC, F1 at 0.5), the macro means, the head/medium/tail means and the
prevalence baseline; exits with status 2 and a clear message when the two files do not match.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic, cli
from ..data import dataset
from . import metrics, single_label
from ..utils.errors import UserError


class PredictionFileError(UserError):
    """A prediction table that does not match its classes or its images; the message names the id
    and the column, so the user can fix the file instead of guessing."""


MismatchError = PredictionFileError  # the name `python -m cxrlt.evaluate` users catch


def some_of(values, n: int = 5) -> str:
    values = list(values)
    return f"{values[:n]}" + (f" (+{len(values) - n} more)" if len(values) > n else "")


def check_table(frame: pd.DataFrame, classes, *, id_column: str, expected_ids=None, reference: str = "the test list",
                ordered: bool = False, probabilities: bool = False) -> np.ndarray:
    """The one check of a prediction table (an id column + one column per class), for `evaluate` and for
    submissions alike; returns the values [rows of `expected_ids` (else the frame's order), classes].

    `ordered`: the class columns must follow the id column exactly in `classes` order (CodaLab reads
    columns by position); otherwise they are found by name and extra columns are ignored.
    `probabilities`: values must lie in [0, 1] (a submission); otherwise any finite score ranks."""
    classes = list(classes)
    columns = list(frame.columns)
    if ordered:
        if not columns or columns[0] != id_column:
            raise PredictionFileError(f"the first column must be {id_column!r}, found {columns[:1]}")
        got = columns[1:]
        if got != classes:
            missing = [c for c in classes if c not in got]
            extra = [c for c in got if c not in classes]
            if missing or extra:
                raise PredictionFileError(f"class columns differ: missing {some_of(missing)}, unexpected {some_of(extra)}")
            pos = next(i for i, (a, b) in enumerate(zip(got, classes)) if a != b)
            raise PredictionFileError(f"class columns are out of order: column {pos + 2} is {got[pos]!r}, "
                                      f"the official order has {classes[pos]!r} there")
    else:
        if id_column not in columns:
            raise PredictionFileError(f"no id column {id_column!r}; columns start {columns[:3]}")
        missing = [c for c in classes if c not in columns]
        if missing:
            raise PredictionFileError(f"missing prediction columns for {some_of(missing)}")
    ids = frame[id_column].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise PredictionFileError(f"{len(dup)} duplicate ids: {some_of(dup)}")
    rows = np.arange(len(frame))
    if expected_ids is not None:
        expected = [str(i) for i in expected_ids]
        missing, unexpected = sorted(set(expected) - set(ids)), sorted(set(ids) - set(expected))
        if missing or unexpected:
            raise PredictionFileError(f"the ids differ from {reference}: {len(missing)} missing (no prediction) "
                                      f"{some_of(missing)}, {len(unexpected)} unexpected {some_of(unexpected)}")
        rows = pd.Index(ids).get_indexer(expected)
    values = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)[rows]
    bad = ~np.isfinite(values)
    if probabilities:
        bad |= (values < 0) | (values > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "finite probabilities in [0, 1]" if probabilities else "finite numbers"
        raise PredictionFileError(f"{int(bad.sum())} values are not {what}; first: id {ids.iloc[rows[r]]!r}, "
                                  f"column {classes[c]!r}, value {frame[classes[c]].iloc[rows[r]]!r}")
    return values


def align(pred_csv: Path, table: dataset.LabelTable, id_column: str | None = None) -> np.ndarray:
    """Predictions reordered to the label table's rows and classes; every mismatch is named."""
    if not pred_csv.is_file():
        raise MismatchError(f"prediction file {pred_csv} does not exist")
    frame = pd.read_csv(pred_csv, dtype={id_column or "dicom_id": str, "id": str, "ImageID": str, "dicom_id": str})
    try:
        return check_table(frame, table.classes, id_column=id_column or frame.columns[0], expected_ids=table.ids,
                           reference=str(table.source))
    except PredictionFileError as err:
        raise MismatchError(f"{pred_csv}: {err}") from None


def read_truth(args) -> dataset.LabelTable:
    """The label CSV for --task (auto: detected and logged). A single-label file's classes are the prediction
    CSV's class columns (every column but the id and the predicted class), so names and grades are checked
    against what was predicted and a class missing from a small test list still scores in its place."""
    from ..data import single_label as single_label_data

    found = single_label_data.detect(args.labels, args.task, label_column=args.label_column, edition=args.edition)
    classes = args.classes
    if found.form == "column" and args.classes == "edition" and args.pred.is_file():
        header = pd.read_csv(args.pred, nrows=0).columns.tolist()
        id_column = args.id_column or header[0]
        classes = [c for c in header if c != id_column and c not in single_label_data.RESERVED + ("expected_grade",)]
    table, _ = single_label_data.read_table(args.labels, task=args.task, label_column=args.label_column,
                                            classes=classes, allow_outside_root=True, edition=args.edition)
    return table


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.evaluate", __doc__)
    parser.add_argument("--pred", required=True, type=Path, help="prediction CSV: id column then class columns")
    parser.add_argument("--labels", required=True, type=Path, help="label CSV with the same ids")
    parser.add_argument("--classes", default="edition",
                        help="edition (the edition's classes, default) | cxrlt2023 | nih14 | auto (the label CSV's 0/1 columns)")
    parser.add_argument("--edition", default="auto", help="auto (from the label CSV's columns) | cxrlt2023 | "
                        "cxrlt2024-task1 | cxrlt2024-task2 (score the 26 task-2 classes of a 40-class file) | "
                        "cxrlt2026-task1 | generic")
    parser.add_argument("--id-column", help="id column of the prediction CSV (default: its first column)")
    parser.add_argument("--json", type=Path, help="also write the metrics as JSON (keys mAP, mAUC, mF1, per_class)")
    parser.add_argument("--task", default="auto", choices=("auto", "multilabel", "multiclass", "ordinal"),
                        help="auto: multiclass for a label column (label / grade / level, or --label-column) or one-hot "
                             "rows of a generic file, multilabel otherwise; ordinal grades must be named")
    parser.add_argument("--label-column", help="single-label: the label CSV's column of class names or indices")
    parser.add_argument("--decision", default="argmax", choices=single_label.DECISIONS,
                        help="single-label: how the predicted class is read from the probabilities (ordinal: "
                             "argmax | median | expected)")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    try:
        table = read_truth(args)
        probs = align(args.pred, table, args.id_column)
        from ..data import editions

        groups = editions.class_groups(table.edition, table.classes, table.class_counts())
        if table.task != "multilabel" and args.decision != "argmax" and table.task != "ordinal":
            raise ValueError(f"--decision {args.decision} is for ordinal grades (--task ordinal)")
        result = single_label.score(table.task, table.labels, probs, list(table.classes), groups=groups,
                                    decision=args.decision)
    except (MismatchError, dataset.LabelFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = single_label.format_report if table.task != "multilabel" else metrics.format_report
    print(report(result, title=f"{args.pred.name} vs {args.labels.name}"))
    if args.json:
        atomic.write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
