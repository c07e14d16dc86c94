"""Study-level aggregation (G19): every image of a study gets the study's pooled scores.

In CXR-LT the labels belong to the study (the radiology report), so the frontal and lateral images
of one study carry the same findings; pooling their scores lets one view's evidence help the other.
Methods: `mean`, `max`, `view_mean` (mean weighted by view, e.g. frontal 1.0, lateral 0.5), `view_groups`
(CXR-LT 2024, 5th in task 1: the mean of the frontal images and the mean of the lateral images, then the
mean of the two; a study with one group takes that group's mean), or `none` (the default: seed 002 scores
each image on its own and shows no evidence for pooling). `view_groups` splits the views as the team's
published code does (`postprocess.get_frontal`: `ViewPosition.str.contains('AP|PA', case=False, na=False)`):
a view naming AP or PA (PA, AP, AP AXIAL, PA LLD, ...) is frontal, every other one is in the other group,
a blank ViewPosition (about 4 % of MIMIC's images) included; that is the grouping the team's score was
measured with, so it is the one cxrlt follows.
Metrics stay per image. A study's images belong to one patient, hence to one fold, so pooling
out-of-fold predictions never mixes in a model that saw the study.

    python -m cxrlt.aggregate --run runs/demo                    # measure every method on a run's OOF
    python -m cxrlt.aggregate --pred P.csv --labels test.csv     # ... on any labelled prediction CSV
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..config import ConfigError, defaults

from ..config.schema import STUDY_AGGREGATIONS as METHODS
# Views with no entry of their own take `default`; names are compared upper-cased (MIMIC ViewPosition).
DEFAULT_VIEW_WEIGHTS = defaults()["predict"]["view_weights"]  # defaults.yaml is the one copy


# view_groups: a view is frontal when its ViewPosition contains one of these (case-insensitive), as in the
# CXR-LT 2024 5th-place team's get_frontal; every other view, blank included, is in the lateral group
FRONTAL_MARKS = ("AP", "PA")


def is_frontal(view) -> bool:
    """The 5th-place team's rule: 'AP' or 'PA' anywhere in the ViewPosition (NaN / blank: no)."""
    text = "" if view is None or (isinstance(view, float) and np.isnan(view)) else str(view).upper()
    return any(mark in text for mark in FRONTAL_MARKS)


class AggregationError(ConfigError):
    """A bad aggregation setting (a user error: cli.errors() prints it)."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise AggregationError(f"study aggregation must be one of {list(METHODS)}, got {method!r}")
    return method


def view_weights_of(views, weights: dict | None = None) -> np.ndarray:
    """One weight per image from its view name; unknown or empty views take weights['default']."""
    weights = {str(k).strip().upper(): v for k, v in (weights or DEFAULT_VIEW_WEIGHTS).items()}
    bad = {k: v for k, v in weights.items() if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0}
    if bad:
        raise AggregationError(f"view weights must be finite numbers >= 0, got {bad}")
    default = float(weights.get("DEFAULT", 1.0))
    return np.array([float(weights.get(str(v).strip().upper(), default)) for v in views], dtype=np.float64)


def aggregate(probs: np.ndarray, studies, method: str = "mean", *, views=None,
              view_weights: dict | None = None) -> np.ndarray:
    """[N, C] scores where each image's row is its study's pooled row (same order as `probs`).

    `view_mean` weights images by view; a study whose weights are all 0 falls back to the plain mean.
    Runs in O(N log N) with sorted segment reductions, so it is cheap for 264,849 images.
    """
    check_method(method)
    probs = np.asarray(probs)
    if method == "none":
        return probs.copy()
    studies = np.asarray(studies).astype(str)
    if len(studies) != len(probs):
        raise AggregationError(f"{len(studies)} study ids for {len(probs)} prediction rows")
    if len(probs) == 0:
        return probs.copy()
    _, inverse = np.unique(studies, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sorted_group = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    values = probs[order].astype(np.float64)
    if method == "max":
        pooled = np.maximum.reduceat(values, starts, axis=0)
    else:
        views = views if views is not None else [""] * len(probs)
        if method == "mean":
            w = np.ones(len(probs))
        elif method == "view_groups":
            w = view_group_weights(inverse, views)
        else:
            w = view_weights_of(views, view_weights)
        w = w[order]
        sizes = np.diff(np.r_[starts, len(values)])
        w_sum = np.add.reduceat(w, starts)
        weighted = np.add.reduceat(values * w[:, None], starts, axis=0)
        plain = np.add.reduceat(values, starts, axis=0) / sizes[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = np.where(w_sum[:, None] > 0, weighted / w_sum[:, None], plain)
    out = np.empty_like(values)
    out[order] = pooled[np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(values)]))]
    return out.astype(probs.dtype, copy=False)


def view_group_weights(study_index: np.ndarray, views) -> np.ndarray:
    """Per-image weights that turn a study's weighted mean into the mean of its group means (view_groups):
    1 / (images of the same study and group) / (groups in the study)."""
    if len(views) != len(study_index):
        raise AggregationError(f"{len(views)} view names for {len(study_index)} prediction rows")
    lateral = np.array([not is_frontal(v) for v in views], dtype=np.int64)
    _, group, group_size = np.unique(study_index.astype(np.int64) * 2 + lateral, return_inverse=True,
                                     return_counts=True)
    has = np.zeros((int(study_index.max()) + 1, 2), bool)
    has[study_index, lateral] = True
    return 1.0 / group_size[group] / has.sum(axis=1)[study_index]


def study_sizes(studies) -> dict[int, int]:
    """{images per study: number of studies}: how much there is to pool at all."""
    _, counts = np.unique(np.asarray(studies).astype(str), return_counts=True)
    sizes, n = np.unique(counts, return_counts=True)
    return {int(s): int(k) for s, k in zip(sizes, n)}


def measure(labels, probs, studies, views, classes, *, groups=None, view_weights=None, tune_thresholds=False) -> dict:
    """Per-image metrics of every method on the same predictions: {method: {mAP, mAUC, mF1, ...}}.

    With `tune_thresholds`, also mF1 at per-class thresholds tuned on these same predictions (optimistic).
    """
    from ..evaluate import metrics

    out = {}
    for method in METHODS:
        pooled = aggregate(probs, studies, method, views=views, view_weights=view_weights)
        result = metrics.evaluate(labels, pooled, classes, groups=groups)
        row = {k: result[k] for k in ("mAP", "mAUC", "mF1")}
        if tune_thresholds:
            from ..evaluate import thresholds as thr

            tuned = thr.tune(labels, pooled, classes)
            row["mF1_tuned"] = tuned["mF1_tuned"]
        row["tail_mAP"] = ((result.get("groups") or {}).get("tail") or {}).get("mAP")
        out[method] = row
    return out


def format_measurement(rows: dict, title: str) -> str:
    lines = [title, f"{'method':<11}{'mAP':>9}{'mAUC':>9}{'mF1@0.5':>9}{'mF1@t':>9}{'tail mAP':>10}   (delta mAP vs none)"]
    base = rows["none"]["mAP"]
    for method, row in rows.items():
        f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"{method:<11}{f(row['mAP']):>9}{f(row['mAUC']):>9}{f(row['mF1']):>9}"
                     f"{f(row.get('mF1_tuned')):>9}{f(row.get('tail_mAP')):>10}   {row['mAP'] - base:+.4f}")
    if any(row.get("mF1_tuned") is not None for row in rows.values()):
        lines.append("mF1@t: at per-class thresholds tuned on these same predictions (optimistic)")
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..utils import cli
    from ..data import dataset
    from ..evaluate import align as evaluate
    from ..runtime import runs

    parser = cli.parser("python -m cxrlt.aggregate", __doc__)
    parser.add_argument("--run", type=Path, help="measure on this run's out-of-fold predictions")
    parser.add_argument("--pred", type=Path, help="or: a prediction CSV (id column + class columns) ...")
    parser.add_argument("--labels", type=Path, help="... and the labelled list it predicts (with study ids)")
    parser.add_argument("--view-weights", nargs="+", metavar="VIEW=W", help="e.g. PA=1 AP=1 LATERAL=0.5 default=1")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        weights = parse_view_weights(args.view_weights) if args.view_weights else None
        if args.run:
            run = runs.Run(args.run)
            table, probs = runs.oof_with_labels(run)
            groups, title = run.groups(), f"{run.root.name} out-of-fold"
        elif args.pred and args.labels:
            from ..data import classes as cls

            table = dataset.read_labels(args.labels, allow_outside_root=True)
            probs = evaluate.align(args.pred, table)
            groups, title = cls.class_groups(table.classes, table.class_counts()), f"{args.pred.name} vs {args.labels.name}"
        else:
            raise runs.RunError("pass --run RUN, or --pred PRED.csv with --labels LABELS.csv")
        rows = measure(table.labels, probs, table.studies, table.views, list(table.classes), groups=groups,
                       view_weights=weights, tune_thresholds=True)
        sizes = study_sizes(table.studies)
        print(format_measurement(rows, f"{title}: {len(table)} images in {sum(sizes.values())} studies "
                                       f"(images per study: {sizes})"))
        if args.json:
            from ..utils import atomic

            atomic.write_json(args.json, {"title": title, "study_sizes": sizes, "methods": rows,
                                          "view_weights": weights or DEFAULT_VIEW_WEIGHTS})
    return 0


def parse_view_weights(items) -> dict:
    """['PA=1', 'LATERAL=0.5'] -> {'PA': 1.0, 'LATERAL': 0.5}; bad items name themselves."""
    out = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise AggregationError(f"view weight {item!r} must look like VIEW=NUMBER, e.g. LATERAL=0.5")
    view_weights_of([], out)  # validates the numbers
    return out


if __name__ == "__main__":
    sys.exit(main())
