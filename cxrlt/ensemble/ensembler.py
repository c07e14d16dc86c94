"""Combine the fold models of one or more runs (with TTA) into a validated CXR-LT submission.

    python -m cxrlt.ensemble --runs runs/A runs/B --out submissions/ens.csv [--method mean|rank|logit]
                             [--weights 2 1 | --fit-weights] [--thresholds none|oof|FILE]
                             [--study-aggregation none|mean|max|view_mean|view_groups] [--normal-gating 0.5]
    python -m cxrlt.ensemble --config configs/09_ensemble_5_7.yaml     # seed 002's (5)+(7)
    python -m cxrlt.ensemble --check submissions/ens.csv [--labels test.csv]

Order of operations: the folds of each run are averaged (each fold TTA-averaged, cached by
cxrlt.predict); the runs are combined with equal weight per run (seed 002's (8)-(10), G16), or
--weights, or weights fitted on OOF predictions; optionally pooled per study (cxrlt.aggregate);
optionally normal-gated (--normal-gating W: abnormal scores x (1 - W p("No Finding")), or --normal-gating-power P:
x (1 - p("No Finding")) ** P, the CXR-LT 2026 winner's code with P = 0.5; combine.normal_gating);
optionally mapped so per-class OOF-tuned thresholds land on 0.5 (cxrlt.thresholds); then the CSV
is validated (every test id once, 26 columns in the official order, values finite in [0, 1]) and
written atomically with the .zip CodaLab takes: the CSV and a code/ folder (`code_folder`: cxrlt's
source, pip freeze, every run's resolved config and commands; --code DIR adds your own folder).
Out-of-fold and (for a labelled list) test scores are printed, mF1 both at 0.5 and at OOF-tuned
thresholds.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..predict import aggregate
from ..utils import atomic, cli
from .. import config
from ..evaluate import metrics
from ..runtime import runs
from ..evaluate import thresholds as thr
from .combine import METHODS, combine, fit_weights, normal_gating, weights_of

log = logging.getLogger("cxrlt.ensemble")

# ----------------------------------------------------------------------------- runs and their OOF

def find_runs(root: Path) -> list[runs.Run]:
    """Every run under `root` whose folds are all finished (the default when --runs is not given)."""
    found = []
    for config_path in sorted(Path(root).glob("*/config.yaml")):
        run = runs.Run(config_path.parent)
        if len(run.finished_folds()) == run.config()["train"]["folds"]:
            found.append(run)
    return found


def submission_layout(run_list: list[runs.Run], args, table=None):
    """(id column, class order, row order into `table` or None) of the submission: the runs' edition,
    or the official sample file (--sample-submission), which must name the same classes and images."""
    id_column, order = run_list[0].submission_layout()
    rows = None
    if getattr(args, "sample_submission", None):
        from . import submission

        ids = None if table is None else table.ids
        sample_id, order, sample_ids = submission.layout_from_sample(args.sample_submission, list(order), ids)
        id_column = sample_id
        if table is not None:
            rows = pd.Index([str(i) for i in table.ids]).get_indexer([str(i) for i in sample_ids])
    return args.id_column or id_column, list(order), rows


def check_same_classes(run_list: list[runs.Run]) -> None:
    if not run_list:
        raise runs.RunError("no finished runs to ensemble; train one first (python -m cxrlt.train) or pass --runs")
    if len({run.classes() for run in run_list}) > 1:
        raise runs.RunError("the runs were trained on different class lists: " + "; ".join(
            f"{run.root}: {len(run.classes())} classes" for run in run_list))


def check_shared_folds(run_list: list[runs.Run], why: str) -> None:
    """Refuse OOF-based fitting unless every run held out each training image in the same fold."""
    def folds_of(run):
        if not run.folds_csv.exists():
            raise runs.RunError(f"{run.root}: no folds.csv; {why} needs the runs' fold assignment")
        return pd.read_csv(run.folds_csv, dtype={"id": str}).set_index("id")["fold"]

    first = folds_of(run_list[0])
    for run in run_list[1:]:
        other = folds_of(run)
        same_ids = set(other.index) == set(first.index)
        moved = int((other.loc[first.index] != first).sum()) if same_ids else None
        if not same_ids or moved:
            detail = (f"it was trained on other images ({len(other)} vs {len(first)})" if not same_ids
                      else f"{moved} of {len(first)} images are in another fold")
            raise runs.RunError(
                f"{why} needs runs that share the same folds.csv, so that every image's OOF predictions come from "
                f"models that did not see it in every run; {run.root} differs from {run_list[0].root}: {detail}. "
                "Use --weights instead, or retrain with the same folds (copy folds.csv into the new run "
                "directory before training it)")


def load_oof(run_list: list[runs.Run]):
    """(label table, [OOF probabilities per run]) in the first run's row order; runs must share folds."""
    if len(run_list) > 1:
        check_shared_folds(run_list, "scoring the ensemble's out-of-fold predictions")
    table, first = runs.oof_with_labels(run_list[0])
    preds = [first]
    for run in run_list[1:]:
        if not run.oof_csv.exists():
            runs.oof_with_labels(run)  # raises the clear 'no oof.csv (k of K folds finished)' error
        ids, probs = runs.read_predictions(run.oof_csv, run_list[0].classes())
        if len(ids) != len(table) or set(ids) != set(table.ids):
            raise runs.RunError(f"{run.oof_csv} and {run_list[0].oof_csv} cover different images")
        position = pd.Series(np.arange(len(ids)), index=ids)
        preds.append(probs[position.loc[table.ids].to_numpy()])
    return table, preds


def study_settings(run_list: list[runs.Run], method: str | None, view_weights: dict | None) -> tuple[str, dict]:
    """The study aggregation to apply: given explicitly, else the one the runs' predict settings agree on."""
    def agreed(key, default):
        values = {repr(run.config().get("predict", {}).get(key, default)) for run in run_list}
        if len(values) > 1:
            raise config.ConfigError(f"the runs disagree on predict.{key} ({', '.join(sorted(values))}); "
                                     f"choose one with --{key.replace('_', '-')}")
        return run_list[0].config().get("predict", {}).get(key, default)

    method = method or agreed("study_aggregation", "none")
    weights = view_weights or agreed("view_weights", aggregate.DEFAULT_VIEW_WEIGHTS)
    return aggregate.check_method(method), weights


def ensemble(run_list: list[runs.Run], test_csv: str | None, *, weights=None, method: str = "mean",
             image_root=None, tta=None):
    """(table, probabilities) of the runs' fold-and-TTA means, combined with `method` and `weights`."""
    from ..predict import inference as predict

    check_same_classes(run_list)
    tests = {run.config()["data"]["test_labels"] for run in run_list}
    if test_csv is None:
        if len(tests) != 1 or None in tests:
            raise runs.RunError("the runs name different or no test lists (data.test_labels); pass --labels TEST.csv")
        test_csv = tests.pop()
    weights = weights_of(len(run_list), weights)
    table, preds = None, []
    for run, weight in zip(run_list, weights):
        table = predict.read_image_list(run, test_csv, image_root)
        preds.append(predict.predict_run(run, table, tta=tta))
        log.info("%s: %d folds, weight %.3f", run.root, len(run.finished_folds()), weight)
    return table, combine(preds, weights, method).astype(np.float32)


# ----------------------------------------------------------------------------- settings

def load_settings(path: Path | None) -> dict:
    """defaults.yaml's `ensemble:` section, overridden by an ensemble config file (one `ensemble:` section)."""
    settings = dict(config.defaults()["ensemble"])
    if path is None:
        return settings
    if not path.is_file():
        raise config.ConfigError(f"ensemble config {path} does not exist (see configs/08_ensemble_5_6.yaml)")
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise config.ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(user, dict) or set(user) != {"ensemble"} or not isinstance(user["ensemble"], dict):
        raise config.ConfigError(f"{path}: an ensemble config holds exactly one mapping, `ensemble:`; found "
                                 f"{sorted(user) if isinstance(user, dict) else type(user).__name__} "
                                 "(a training config goes to python -m cxrlt.train --config)")
    for key, value in user["ensemble"].items():
        if key not in settings:
            close = difflib.get_close_matches(key, list(settings), n=1)
            raise config.ConfigError(f"{path}: unknown setting ensemble.{key}" + (f"; did you mean {close[0]!r}?" if close else ""))
        settings[key] = value
    return settings


def validate_settings(s: dict) -> None:
    if s["method"] not in METHODS:
        raise config.ConfigError(f"ensemble.method must be one of {list(METHODS)}, got {s['method']!r}")
    if s["weights"] is not None and s["fit_weights"]:
        raise config.ConfigError("give ensemble weights or fit them (--fit-weights), not both")
    if not isinstance(s["fit_rounds"], int) or s["fit_rounds"] < 1:
        raise config.ConfigError(f"ensemble.fit_rounds must be a positive integer, got {s['fit_rounds']!r}")
    if s["study_aggregation"] is not None:
        aggregate.check_method(s["study_aggregation"])
    gating = s["normal_gating"]
    if isinstance(gating, bool) or not isinstance(gating, (int, float)) or not 0.0 <= gating <= 1.0:
        raise config.ConfigError(f"ensemble.normal_gating must be a number in [0, 1] (0 = off), got {gating!r}")
    power = s.get("normal_gating_power", 0.0)
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0.0 <= power <= 100.0:
        raise config.ConfigError(f"ensemble.normal_gating_power must be a number in [0, 100] (0 = off), got {power!r}")
    if gating and power:
        raise config.ConfigError("ensemble.normal_gating (linear) and ensemble.normal_gating_power are two forms of "
                                 "one step: set one of them")
    if s["runs"] is not None and (not isinstance(s["runs"], list) or not s["runs"]):
        raise config.ConfigError(f"ensemble.runs must be a non-empty list of run directories, got {s['runs']!r}")


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    from ..predict import inference as predict

    parser = cli.parser("python -m cxrlt.ensemble", __doc__)
    parser.add_argument("--config", type=Path, help="ensemble config (configs/08_ensemble_5_6.yaml ...); flags override it")
    parser.add_argument("--run", "--runs", dest="runs", nargs="+", action="extend",
                        help="run directories, repeatable (default: ensemble.runs, else every finished run in --runs-root)")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--method", choices=METHODS, help="mean (probabilities, default) | rank | logit")
    parser.add_argument("--weights", "--run-weights", dest="weights", nargs="+", type=float,
                        help="one weight per run, in --run order (default: equal; not train --weights, the backbone's)")
    parser.add_argument("--fit-weights", action="store_true", default=None,
                        help="fit run weights on OOF predictions to maximise OOF mAP (runs must share folds.csv)")
    parser.add_argument("--thresholds", help="none (default) | oof (tune on the ensemble's OOF) | path to a thresholds.json")
    parser.add_argument("--study-aggregation", choices=aggregate.METHODS,
                        help="pool scores over each study (default: the runs' predict.study_aggregation)")
    parser.add_argument("--view-weights", nargs="+", metavar="VIEW=W", help="for view_mean, e.g. PA=1 AP=1 LATERAL=0.5 default=1")
    parser.add_argument("--normal-gating", type=float, metavar="WEIGHT",
                        help="multiply every abnormal score by 1 - WEIGHT * p(No Finding / Normal); 0 = off (default)")
    parser.add_argument("--normal-gating-power", type=float, metavar="P",
                        help="multiply every abnormal score by (1 - p(No Finding / Normal)) ** P (the CXR-LT 2026 "
                             "task-1 winner's code: 0.5); 0 = off (default)")
    parser.add_argument("--labels", help="test image list CSV (default: the runs' data.test_labels)")
    parser.add_argument("--image-root", help="folder the test list's paths are relative to")
    parser.add_argument("--tta", nargs="+", choices=sorted(predict.TTA), help="TTA views (default: each run's)")
    parser.add_argument("--out", type=Path, help="the submission CSV to write; the zip goes beside it "
                                                 "(default: submissions/<run names>.csv)")
    parser.add_argument("--id-column", help="submission id column (default: the runs' edition's, e.g. dicom_id, "
                                            "ImageID for 2026, or the sample submission's)")
    parser.add_argument("--sample-submission", type=Path, metavar="FILE",
                        help="official sample submission: its header order and id list are used and checked")
    parser.add_argument("--edition", help="with --check and no --runs: the edition whose layout to check "
                                          "(default cxrlt2023)")
    parser.add_argument("--decision", choices=("argmax", "median", "expected"),
                        help="single-label ordinal runs: how the predicted grade is read from the averaged probabilities "
                             "(default: the runs' predict.ordinal_decision)")
    parser.add_argument("--no-zip", action="store_true", help="write the CSV only")
    parser.add_argument("--allow-partial", action="store_true",
                        help="zip a submission from runs whose folds are not all finished (their finished folds)")
    parser.add_argument("--code", type=Path, metavar="DIR",
                        help="your own code folder, packed under code/user/ in the zip beside cxrlt's source, "
                             "pip freeze and the runs' configs and commands (always packed)")
    parser.add_argument("--check", type=Path, metavar="FILE", help="only validate an existing submission CSV/zip and exit")
    cli.add_common(parser)
    return parser


def settings_from(args) -> dict:
    """defaults.yaml <- --config <- flags, validated."""
    s = load_settings(args.config)
    for key in ("runs", "method", "weights", "fit_weights", "thresholds", "study_aggregation", "normal_gating",
                "normal_gating_power", "out"):
        if getattr(args, key) is not None:
            s[key] = [str(p) for p in args.runs] if key == "runs" else getattr(args, key)
    if args.weights is not None and args.fit_weights is None:
        s["fit_weights"] = False  # explicit weights on the command line beat fit_weights in a config
    if args.view_weights:
        s["view_weights"] = aggregate.parse_view_weights(args.view_weights)
    validate_settings(s)
    return s


def out_of_fold(run_list: list[runs.Run], s: dict, pooling: str, view_weights: dict) -> dict:
    """Weights (given, equal or fitted), and the ensemble's OOF predictions when the runs allow them."""
    oof = {"table": None, "probs": None, "why": None, "tuned": None}
    if s["fit_weights"]:
        check_shared_folds(run_list, "--fit-weights")
    try:
        oof["table"], preds = load_oof(run_list)
    except runs.RunError as err:
        if s["fit_weights"] or s["thresholds"] == "oof":
            raise
        oof["why"], preds = str(err), None
    weights = s["weights"]
    if s["fit_weights"]:
        weights, info = fit_weights(preds, oof["table"].labels, s["method"], s["fit_rounds"])
        print(f"fitted weights ({s['method']}, {info['rounds']} rounds of greedy ensemble selection on OOF mAP): "
              + ", ".join(f"{r.root.name} {w:.3f}" for r, w in zip(run_list, weights)))
        print("  OOF mAP: " + ", ".join(f"{r.root.name} {m:.4f}" for r, m in zip(run_list, info["single_mAP"]))
              + f"; equal weights {info['equal_mAP']:.4f}; fitted {info['fitted_mAP']:.4f} "
              "(fitted on these OOF predictions: optimistic)")
    oof["weights"] = weights_of(len(run_list), weights)
    if preds is not None:
        table = oof["table"]
        oof["probs"] = aggregate.aggregate(combine(preds, oof["weights"], s["method"]), table.studies, pooling,
                                           views=table.views, view_weights=view_weights)
        oof["probs"] = normal_gating(oof["probs"], table.classes, s["normal_gating"], s["normal_gating_power"])
        oof["tuned"] = np.asarray(thr.tune(table.labels, oof["probs"], table.classes)["thresholds"])
    return oof


def thresholds_to_apply(s: dict, oof: dict, classes) -> tuple[np.ndarray | None, str | None]:
    """(thresholds to map to 0.5, where they come from), or (None, None) for CodaLab's plain 0.5."""
    if s["thresholds"] == "oof":
        return oof["tuned"], "tuned on the ensemble's OOF predictions"
    if s["thresholds"] not in (None, "none"):
        return thr.load(Path(s["thresholds"]), classes), str(s["thresholds"])
    return None, None


def main(argv=None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    cli.setup(args)
    with cli.errors():
        from . import submission  # also makes SubmissionError a user error for cli.errors()

        if args.check:
            return check(args)
        s = settings_from(args)
        run_list = [runs.Run(Path(p)) for p in s["runs"]] if s["runs"] else find_runs(args.runs_root)
        for run in run_list:
            run.config()  # fails clearly on a directory that is not a run
        if run_list and run_list[0].task() != "multilabel":  # one class per image: probabilities + the predicted class
            from . import single_label

            check_same_classes(run_list)
            pooling, view_weights = study_settings(run_list, s["study_aggregation"], s["view_weights"])
            return single_label.run(run_list, s, args, pooling, view_weights, ensemble=ensemble, load_oof=load_oof)
        partial = [p for p in (run.partial() for run in run_list) if p]
        if partial and not args.no_zip and not args.allow_partial:
            raise runs.RunError(f"unfinished run(s): {'; '.join(partial)} finished. A submission zip from them "
                                "needs --allow-partial (it then uses the finished folds); --no-zip writes the CSV "
                                "alone for a look; or finish training first (rerun the same train command)")
        check_same_classes(run_list)
        normal_gating(np.zeros((0, len(run_list[0].classes()))), run_list[0].classes(), s["normal_gating"],
                      s["normal_gating_power"])  # fail now
        pooling, view_weights = study_settings(run_list, s["study_aggregation"], s["view_weights"])
        oof = out_of_fold(run_list, s, pooling, view_weights)
        apply, source = thresholds_to_apply(s, oof, run_list[0].classes())

        table, probs = ensemble(run_list, args.labels, weights=oof["weights"], method=s["method"],
                                image_root=args.image_root, tta=args.tta)
        probs = aggregate.aggregate(probs, table.studies, pooling, views=table.views, view_weights=view_weights)
        probs = normal_gating(probs, table.classes, s["normal_gating"], s["normal_gating_power"])
        id_column, order, rows = submission_layout(run_list, args, table)
        idx = [list(table.classes).index(c) for c in order]
        submitted = probs if apply is None else thr.to_half(probs, apply)
        rows = np.arange(len(table)) if rows is None else rows
        default_name = "+".join(run.root.name for run in run_list) + ".csv"
        out = Path(s["out"]) if s["out"] else Path("submissions") / default_name
        if out.is_dir() or str(s["out"] or "").endswith(("/", os.sep)):  # --out submissions/: a folder to write into
            out = out / default_name
        code = None
        if not args.no_zip:
            from . import code_folder

            code = code_folder.collect(run_list, command=command, user_code=args.code)
        csv_path, zip_path = submission.write_submission(out, table.ids[rows], submitted[rows], classes=order,
                                                         model_classes=table.classes, id_column=id_column,
                                                         expected_ids=table.ids, make_zip=not args.no_zip, code=code)
        print(f"wrote {csv_path}" + (f" and {zip_path}" if zip_path else "")
              + f": {len(table)} images x {len(order)} classes from {len(run_list)} run(s); method {s['method']}, "
              f"weights {[round(float(w), 3) for w in oof['weights']]}, study aggregation {pooling}, "
              + (f"normal gating {s['normal_gating']:g}, " if s["normal_gating"] else "")
              + (f"normal gating power {s['normal_gating_power']:g}, " if s["normal_gating_power"] else "")
              + (f"thresholds mapped to 0.5 ({source})" if apply is not None else "no threshold map")
              + (f"; PARTIAL: {'; '.join(partial)}" if partial else ""))
        report_t = apply if apply is not None else oof["tuned"]
        report_oof(oof, report_t, run_list[0].groups(), source if s["thresholds"] not in ("oof", None, "none") else None)
        if table.has_labels:
            report_test(table, probs, idx, order, report_t, run_list[0].groups(), Path(csv_path))
    return 0


def report_oof(oof: dict, t, groups: dict, source: str | None) -> None:
    if oof["probs"] is None:
        log.info("no out-of-fold scores for this ensemble: %s", oof["why"])
        return
    table = oof["table"]
    result = metrics.evaluate(table.labels, oof["probs"], list(table.classes), groups=groups)
    where = f" from {source}" if source else " tuned on this OOF (optimistic)"
    print(f"OOF  mAP {result['mAP']:.4f}  mAUC {result['mAUC']:.4f}  "
          + thr.mf1_line(table.labels, oof["probs"], table.classes, t, where=where))


def report_test(table, probs, idx, order, t, groups: dict, csv_path: Path) -> None:
    """Score a labelled test list: per-class table, mF1 at 0.5 and at the OOF-tuned thresholds; JSON beside the CSV."""
    labels, raw = table.labels[:, idx], probs[:, idx]
    result = metrics.evaluate(labels, raw, order, groups=groups)
    t_order = None if t is None else np.asarray(t)[idx]
    if t_order is not None:
        result["mF1_tuned"] = metrics.evaluate(labels, raw, order, thresholds=t_order)["mF1"]
        result["thresholds"] = dict(zip(order, t_order.tolist()))
    atomic.write_json(csv_path.with_suffix(".metrics.json"), result)
    print(metrics.format_report(result, title=f"{Path(table.source).name} (ensemble, TTA)"))
    tuned = "n/a (no OOF predictions to tune thresholds on)" if t_order is None else f"{result['mF1_tuned']:.4f}"
    print(f"TEST mAP {result['mAP']:.4f}  mAUC {result['mAUC']:.4f}  mF1 at 0.5 {result['mF1']:.4f}  |  "
          f"at OOF-tuned thresholds {tuned}   (prevalence baseline mAP {result['prevalence_baseline_mAP']:.4f})")


def check(args) -> int:
    """--check FILE: validate a submission a user already has; expected ids from --labels when given."""
    from ..data import dataset
    from . import submission

    run_classes, run_id, edition = None, None, args.edition
    if args.runs:
        run_list = [runs.Run(Path(p)) for p in args.runs]
        check_same_classes(run_list)
        run_id, run_classes = run_list[0].submission_layout()
        edition = run_list[0].edition()
    id_column, classes, expected = submission.expected_layout(
        edition, args.sample_submission, args.id_column or (None if args.sample_submission else run_id), run_classes)
    if args.labels:
        listed = dataset.read_labels(args.labels, classes=list(classes), require_labels=False,
                                     allow_outside_root=True, edition=edition or "auto").ids
        if expected is not None and set(map(str, expected)) != set(map(str, listed)):
            raise submission.SubmissionError(f"{args.labels} and {args.sample_submission} list different images")
        expected = listed
    print(submission.check_file(args.check, classes=classes, expected_ids=expected, id_column=id_column,
                                edition=edition or (None if args.sample_submission else "cxrlt2023")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
