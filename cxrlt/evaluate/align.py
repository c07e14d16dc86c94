"""Score any prediction CSV (id column + one probability column per class) against a label CSV.

    python -m cxrlt.evaluate --pred submissions/ens.csv --labels development.csv [--json metrics.json]

Prints the per-class table (AP, AUC, F1 at 0.5), the macro means, the head/medium/tail means and the
prevalence baseline; exits with status 2 and a clear message when the two files do not match.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic, cli
from ..data import classes as cls, dataset
from . import metrics
from ..utils.errors import UserError


class MismatchError(UserError):
    pass


def align(pred_csv: Path, table: dataset.LabelTable, id_column: str | None = None) -> np.ndarray:
    """Predictions reordered to the label table's rows and classes; every mismatch is named."""
    if not pred_csv.is_file():
        raise MismatchError(f"prediction file {pred_csv} does not exist")
    frame = pd.read_csv(pred_csv, dtype={id_column or "dicom_id": str, "id": str})
    id_column = id_column or frame.columns[0]
    if id_column not in frame.columns:
        raise MismatchError(f"{pred_csv}: no id column {id_column!r}; columns start {list(frame.columns)[:3]}")
    missing_cols = [c for c in table.classes if c not in frame.columns]
    if missing_cols:
        raise MismatchError(f"{pred_csv}: missing prediction columns for {missing_cols[:5]}"
                            + (f" and {len(missing_cols) - 5} more" if len(missing_cols) > 5 else ""))
    ids = frame[id_column].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise MismatchError(f"{pred_csv}: {len(dup)} duplicate ids, e.g. {list(dup[:5])}")
    missing = sorted(set(table.ids) - set(ids))
    extra = sorted(set(ids) - set(table.ids))
    if missing or extra:
        raise MismatchError(f"{pred_csv} and {table.source} list different images: {len(missing)} labelled ids have "
                            f"no prediction (e.g. {missing[:3]}), {len(extra)} predicted ids have no label (e.g. {extra[:3]})")
    values = frame.set_index(id_column).loc[table.ids, list(table.classes)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MismatchError(f"{pred_csv}: {int(bad.sum())} missing or non-finite values, e.g. id {table.ids[r]}, "
                            f"column {table.classes[c]!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrlt.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="prediction CSV: id column then class columns")
    parser.add_argument("--labels", required=True, type=Path, help="label CSV with the same ids")
    parser.add_argument("--classes", default="auto", help="cxrlt2023 | nih14 | auto (the label CSV's 0/1 columns)")
    parser.add_argument("--id-column", help="id column of the prediction CSV (default: its first column)")
    parser.add_argument("--json", type=Path, help="also write the metrics as JSON (keys mAP, mAUC, mF1, per_class)")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    try:
        table = dataset.read_labels(args.labels, classes=args.classes, allow_outside_root=True)
        probs = align(args.pred, table, args.id_column)
        groups = cls.class_groups(table.classes, table.class_counts())
        result = metrics.evaluate(table.labels, probs, list(table.classes), groups=groups)
    except (MismatchError, dataset.LabelFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(metrics.format_report(result, title=f"{args.pred.name} vs {args.labels.name}"))
    if args.json:
        atomic.write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
