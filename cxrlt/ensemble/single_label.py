"""Ensembles of single-label runs (one class or grade per image): the fold models of each run averaged (TTA),
the runs averaged with their weights, one probability column per class plus the predicted class.

Only probability averaging (ensemble.method mean): the mean of softmax outputs is itself a distribution over
the classes. For ordinal grades the file also carries each image's expected grade sum_k k p_k; because the
expectation is linear, the expected grade of the averaged probabilities IS the average of the members'
expected grades, so "average the expected grades" and "average the probabilities" are one operation here, and
`--decision expected` turns it into the predicted grade. Per-class thresholds, normal gating, fitted weights and
rank / logit combination are multi-label tools and are refused with a message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError, tasks
from ..evaluate import single_label as sl_metrics
from ..predict import aggregate
from ..runtime import runs
from ..utils import atomic
from .combine import combine, weights_of

log = logging.getLogger("cxrlt.ensemble")


def refuse_multilabel_settings(s: dict, args) -> None:
    problems = []
    if s["method"] != "mean":
        problems.append(f"ensemble.method {s['method']} (single-label runs average probabilities: mean)")
    if s["fit_weights"]:
        problems.append("--fit-weights (it maximises the multi-label OOF mAP; give --weights)")
    if s["thresholds"] not in (None, "none"):
        problems.append(f"ensemble.thresholds {s['thresholds']} (a single-label prediction is a class, not 0.5 cuts)")
    if s["normal_gating"]:
        problems.append("ensemble.normal_gating (a multi-label 'No Finding' rule)")
    if getattr(args, "sample_submission", None):
        problems.append("--sample-submission (a CXR-LT submission layout)")
    if problems:
        raise ConfigError("single-label runs cannot use " + "; ".join(problems))


def decision_of(run_list: list[runs.Run], requested: str | None, task: str) -> str:
    """The decision rule: --decision, else the one the runs' predict.ordinal_decision agrees on."""
    if requested:
        if task != "ordinal" and requested != "argmax":
            raise ConfigError(f"--decision {requested} is for ordinal grades; a {task} run takes the argmax")
        return requested
    rules = {tasks.ordinal_decision(run.config(), task) for run in run_list}
    if len(rules) > 1:
        raise ConfigError(f"the runs decide grades differently ({', '.join(sorted(rules))}); choose one with --decision")
    return rules.pop()


def prediction_frame(ids, probs: np.ndarray, classes, task: str, decision: str, id_column: str) -> pd.DataFrame:
    """id, one probability column per class, predicted (and expected_grade for ordinal grades)."""
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, id_column, list(ids))
    frame["predicted"] = np.asarray(list(classes), dtype=object)[sl_metrics.decide(probs, decision)]
    if task == "ordinal":
        frame["expected_grade"] = sl_metrics.expected_grade(probs)
    return frame


def check_probabilities(probs: np.ndarray, ids) -> None:
    """Every row a distribution over the classes (what a softmax average must be); the first bad id named."""
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1) \
        | (np.abs(probs.sum(axis=1) - 1.0) > 1e-3)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise runs.RunError(f"the ensemble's probabilities of {int(bad.sum())} images are not a distribution over "
                            f"the classes, first {ids[i]!r}: {probs[i].tolist()}")
    if len(set(map(str, ids))) != len(ids):
        raise runs.RunError("the image list names an image twice")


def run(run_list: list[runs.Run], s: dict, args, pooling: str, view_weights: dict, *, ensemble, load_oof) -> int:
    """`python -m cxrlt.ensemble` for single-label runs; returns the exit status. `ensemble` and `load_oof` are the
    ensembler's (each run's fold-and-TTA mean on the test list; the runs' OOF predictions with their labels)."""
    task = run_list[0].task()
    if {r.task() for r in run_list} != {task}:
        raise runs.RunError("the runs have different tasks: " + ", ".join(f"{r.root.name} {r.task()}" for r in run_list))
    refuse_multilabel_settings(s, args)
    decision = decision_of(run_list, getattr(args, "decision", None), task)
    weights = weights_of(len(run_list), s["weights"])
    try:
        oof_table, preds = load_oof(run_list)
        oof = aggregate.aggregate(combine(preds, weights, "mean"), oof_table.studies, pooling, views=oof_table.views,
                                  view_weights=view_weights)
        result = sl_metrics.evaluate(oof_table.labels, oof, list(oof_table.classes), task=task, decision=decision)
        print(f"OOF  {sl_metrics.headline(result)}")
    except runs.RunError as err:
        log.info("no out-of-fold scores for this ensemble: %s", err)
    table, probs = ensemble(run_list, args.labels, weights=weights, method="mean", image_root=args.image_root,
                            tta=args.tta)
    probs = aggregate.aggregate(probs, table.studies, pooling, views=table.views, view_weights=view_weights)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 rounding of the mean: rows sum to 1 again
    check_probabilities(probs, table.ids)
    id_column = args.id_column or table.id_column
    default_name = "+".join(r.root.name for r in run_list) + ".csv"
    out = Path(s["out"]) if s["out"] else Path("submissions") / default_name
    if out.is_dir() or str(s["out"] or "").endswith(("/", os.sep)):  # --out submissions/: a folder to write into
        out = out / default_name
    frame = prediction_frame(table.ids, probs, table.classes, task, decision, id_column)
    atomic.write_csv(out, frame, float_format="%.6g")
    partial = [p for p in (r.partial() for r in run_list) if p]
    print(f"wrote {out}: {len(table)} images x {len(table.classes)} classes + predicted ({decision}"
          + (", expected_grade" if task == "ordinal" else "") + f") from {len(run_list)} run(s); weights "
          f"{[round(float(w), 3) for w in weights]}, study aggregation {pooling}"
          + (f"; PARTIAL: {'; '.join(partial)}" if partial else ""))
    if table.has_labels:
        result = sl_metrics.evaluate(table.labels, probs, list(table.classes), task=task, decision=decision)
        atomic.write_json(out.with_suffix(".metrics.json"), result)
        print(sl_metrics.format_report(result, title=f"{Path(table.source).name} (ensemble, TTA)"))
        print(f"TEST {sl_metrics.headline(result)}")
    return 0
