"""Average the fold models of one or more runs (with TTA) into a validated CXR-LT submission.

    python -m cxrlt.ensemble --runs runs/effv2s_768 runs/convnext_s_512 --out submissions/ens.csv

Folds are averaged inside a run, then runs are averaged with equal weight (or --weights), as seed
002's ensembles (8)-(10). The CSV has the id column then the classes in the official order; it is
validated (every test id once, values finite in [0, 1]) before it is written, atomically, with the
.zip CodaLab takes. If the image list carries labels, the ensemble is scored too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from . import atomic, classes as cls, cli, metrics, runs

log = logging.getLogger("cxrlt.ensemble")


def find_runs(root: Path) -> list[runs.Run]:
    """Every run under `root` whose folds are all finished (the default when --runs is not given)."""
    found = []
    for config_path in sorted(root.glob("*/config.yaml")):
        run = runs.Run(config_path.parent)
        if len(run.finished_folds()) == run.config()["train"]["folds"]:
            found.append(run)
    return found


def submission_order(classes) -> list[str]:
    """CXR-LT's official column order when the classes are CXR-LT's, else the training order."""
    return list(cls.CXRLT2023) if set(classes) == set(cls.CXRLT2023) else list(classes)


def ensemble(run_list: list[runs.Run], test_csv: str | None, *, weights=None, image_root=None, tta=None):
    """(table, probabilities) of the weighted mean over runs of each run's fold-and-TTA mean."""
    from . import predict

    if not run_list:
        raise runs.RunError("no finished runs to ensemble; train one first (python -m cxrlt.train) or pass --runs")
    class_lists = {run.classes() for run in run_list}
    if len(class_lists) > 1:
        raise runs.RunError("the runs were trained on different class lists: " + "; ".join(
            f"{run.root}: {len(run.classes())} classes" for run in run_list))
    tests = {run.config()["data"]["test_labels"] for run in run_list}
    if test_csv is None:
        if len(tests) != 1 or None in tests:
            raise runs.RunError("the runs name different or no test lists (data.test_labels); pass --labels TEST.csv")
        test_csv = tests.pop()
    weights = np.ones(len(run_list)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(run_list) or (weights < 0).any() or weights.sum() <= 0:
        raise runs.RunError(f"--weights needs {len(run_list)} non-negative numbers with a positive sum")
    weights = weights / weights.sum()
    table, total = None, None
    for run, weight in zip(run_list, weights):
        table = predict.read_image_list(run, test_csv, image_root)
        probs = predict.predict_run(run, table, tta=tta)
        total = probs * weight if total is None else total + probs * weight
        log.info("%s: %d folds, weight %.3f", run.root, len(run.finished_folds()), weight)
    return table, total.astype(np.float32)


def main(argv=None) -> int:
    from . import predict

    parser = argparse.ArgumentParser(prog="python -m cxrlt.ensemble", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, help="run directories (default: every finished run in --runs-root)")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per run (default: equal)")
    parser.add_argument("--labels", help="test image list CSV (default: the runs' data.test_labels)")
    parser.add_argument("--image-root", help="folder the test list's paths are relative to")
    parser.add_argument("--tta", nargs="+", choices=sorted(predict.TTA), help="TTA views (default: each run's)")
    parser.add_argument("--out", type=Path, help="submission CSV (default: submissions/<run names>.csv)")
    parser.add_argument("--id-column", default="dicom_id")
    parser.add_argument("--no-zip", action="store_true")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        from . import submission

        run_list = [runs.Run(p) for p in args.runs] if args.runs else find_runs(args.runs_root)
        for run in run_list:
            run.config()  # fails clearly on a directory that is not a run
        table, probs = ensemble(run_list, args.labels, weights=args.weights, image_root=args.image_root, tta=args.tta)
        order = submission_order(table.classes)
        probs = probs[:, [list(table.classes).index(c) for c in order]]
        out = args.out or Path("submissions") / ("+".join(run.root.name for run in run_list) + ".csv")
        csv_path, zip_path = submission.write_submission(out, table.ids, probs, classes=order, id_column=args.id_column,
                                                         expected_ids=table.ids, make_zip=not args.no_zip)
        print(f"wrote {csv_path}" + (f" and {zip_path}" if zip_path else "")
              + f": {len(table)} images x {len(order)} classes from {len(run_list)} run(s)")
        if table.has_labels:
            labels = table.labels[:, [list(table.classes).index(c) for c in order]]
            groups = run_list[0].groups()
            result = metrics.evaluate(labels, probs, order, groups=groups)
            atomic.write_json(Path(csv_path).with_suffix(".metrics.json"), result)
            print(metrics.format_report(result, title=f"{Path(table.source).name} (ensemble, TTA)"))
            print(f"TEST mAP {result['mAP']:.4f}  mAUC {result['mAUC']:.4f}  mF1 {result['mF1']:.4f}   "
                  f"(prevalence baseline mAP {result['prevalence_baseline_mAP']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
