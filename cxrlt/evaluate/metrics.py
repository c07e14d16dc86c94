"""CXR-LT metrics in NumPy: macro mAP (primary), mAUC, mF1 at 0.5, per class and per head/medium/tail.

Identical to scikit-learn's average_precision_score / roc_auc_score / f1_score (zero_division=0),
which the tests check. A class with no positive (or no negative) image cannot be scored: it is
listed under `undefined` and left out of every mean, never averaged in as 0 or NaN (G13).

For the seed 003-style ablation tables: per-class binary MCC and balanced accuracy at the same
thresholds, macro-averaged (mMCC, mBACC; G14, checked against matthews_corrcoef and
balanced_accuracy_score). Quadratic kappa and Kendall tau are not offered: they need one ordinal
label per image, and CXR labels are multi-label and unordered.
"""

from __future__ import annotations

import math

import numpy as np

GROUPS = ("head", "medium", "tail")


def _check(y_true: np.ndarray, y_prob: np.ndarray, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    if y_true.shape != y_prob.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and predictions {y_prob.shape} must be the same [images, classes] shape")
    if n_classes is not None and y_true.shape[1] != n_classes:
        raise ValueError(f"{y_true.shape[1]} label columns but {n_classes} class names")
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (mixed/soft labels are for training, not scoring)")
    if not np.isfinite(y_prob).all():
        bad = np.argwhere(~np.isfinite(y_prob))[0]
        raise ValueError(f"predictions contain NaN/inf, first at row {bad[0]}, column {bad[1]}")
    return y_true, y_prob


def average_precision(y_true, y_score) -> float:
    """Step-wise AP over the ranking, ties grouped as scikit-learn does; NaN without positives."""
    y_true, y_score = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    n_pos = y_true.sum()
    if n_pos == 0:
        return math.nan
    order = np.argsort(-y_score, kind="mergesort")
    y_sorted, s_sorted = y_true[order], y_score[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true, y_score) -> float:
    """Mann-Whitney U with average ranks for ties; NaN with only one class present."""
    y_true, y_score = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    n_pos = y_true.sum()
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(y_score, kind="mergesort")
    s_sorted = y_score[order]
    ranks = np.empty(len(y_score), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], len(s_sorted)]
    average = (starts + ends + 1) / 2.0  # 1-based average rank of each tie block
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_at(y_true, y_score, threshold: float = 0.5) -> float:
    """F1 of `score >= threshold`; 0 when there is nothing to predict or find (zero_division=0)."""
    y_true = np.asarray(y_true) == 1
    pred = np.asarray(y_score) >= threshold
    tp = np.sum(y_true & pred)
    denom = y_true.sum() + pred.sum()
    return float(2 * tp / denom) if denom else 0.0


def _confusion(y_true, y_score, threshold: float) -> tuple[float, float, float, float]:
    y_true = np.asarray(y_true) == 1
    pred = np.asarray(y_score) >= threshold
    tp, fp = float(np.sum(y_true & pred)), float(np.sum(~y_true & pred))
    fn, tn = float(np.sum(y_true & ~pred)), float(np.sum(~y_true & ~pred))
    return tp, fp, fn, tn


def mcc_at(y_true, y_score, threshold: float = 0.5) -> float:
    """Binary Matthews correlation of `score >= threshold` (G14: per class, then macro-averaged);
    0 when a confusion-matrix margin is empty, as scikit-learn's matthews_corrcoef."""
    tp, fp, fn, tn = _confusion(y_true, y_score, threshold)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def balanced_accuracy_at(y_true, y_score, threshold: float = 0.5) -> float:
    """(TPR + TNR) / 2 of `score >= threshold`; NaN without positives or without negatives."""
    tp, fp, fn, tn = _confusion(y_true, y_score, threshold)
    if tp + fn == 0 or tn + fp == 0:
        return math.nan
    return 0.5 * (tp / (tp + fn) + tn / (tn + fp))


def prevalence_baseline(y_true) -> float:
    """The mAP of a constant predictor: AP of a constant score is the class prevalence."""
    y_true = np.asarray(y_true, dtype=np.float64)
    prevalence = y_true.mean(axis=0)
    scored = (prevalence > 0) & (prevalence < 1)
    return float(prevalence[scored].mean()) if scored.any() else math.nan


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def evaluate(y_true, y_prob, classes, *, groups: dict[str, str] | None = None, thresholds=0.5) -> dict:
    """Per-class AP/AUC/F1 and their macro means (JSON-serialisable)."""
    classes = list(classes)
    y_true, y_prob = _check(y_true, y_prob, len(classes))
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(classes),))
    per_class, undefined = [], []
    for j, name in enumerate(classes):
        n_pos = int(y_true[:, j].sum())
        row = {"class": name, "group": (groups or {}).get(name), "n_pos": n_pos,
               "prevalence": n_pos / len(y_true) if len(y_true) else None,
               "ap": None, "auc": None, "f1": None, "mcc": None, "bacc": None, "threshold": float(thresholds[j])}
        if n_pos == 0 or n_pos == len(y_true):
            undefined.append({"class": name, "reason": "no positives" if n_pos == 0 else "no negatives"})
        else:
            row.update(ap=average_precision(y_true[:, j], y_prob[:, j]), auc=roc_auc(y_true[:, j], y_prob[:, j]),
                       f1=f1_at(y_true[:, j], y_prob[:, j], thresholds[j]),
                       mcc=mcc_at(y_true[:, j], y_prob[:, j], thresholds[j]),
                       bacc=balanced_accuracy_at(y_true[:, j], y_prob[:, j], thresholds[j]))
        per_class.append(row)
    result = {
        "mAP": _mean(r["ap"] for r in per_class),
        "mAUC": _mean(r["auc"] for r in per_class),
        "mF1": _mean(r["f1"] for r in per_class),
        "mMCC": _mean(r["mcc"] for r in per_class),  # per-class binary MCC / balanced accuracy at the
        "mBACC": _mean(r["bacc"] for r in per_class),  # thresholds, macro-averaged (G14)
        "n_images": int(len(y_true)),
        "n_classes": len(classes),
        "n_scored": len(classes) - len(undefined),
        "undefined": undefined,
        "prevalence_baseline_mAP": prevalence_baseline(y_true),
        "per_class": per_class,
    }
    if groups:
        result["groups"] = {}
        for g in GROUPS:
            rows = [r for r in per_class if r["group"] == g and r["ap"] is not None]
            result["groups"][g] = None if not rows else {
                "mAP": _mean(r["ap"] for r in rows), "mAUC": _mean(r["auc"] for r in rows),
                "mF1": _mean(r["f1"] for r in rows), "n_classes": len(rows)}
    return result


def tune_thresholds(y_true, y_prob, grid=None) -> np.ndarray:
    """Per-class threshold maximising F1 on the given (out-of-fold) data; beyond seed 002's fixed 0.5.

    0.5 is always a candidate, so the tuned F1 is never below the F1 at 0.5 on the same data.
    """
    y_true, y_prob = _check(y_true, y_prob)
    grid = np.unique(np.r_[np.linspace(0.01, 0.99, 99) if grid is None else np.asarray(grid, dtype=np.float64), 0.5])
    best = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        if y_true[:, j].sum() == 0:
            continue
        scores = [f1_at(y_true[:, j], y_prob[:, j], t) for t in grid]
        top = int(np.argmax(scores))
        if scores[top] > f1_at(y_true[:, j], y_prob[:, j], 0.5):
            best[j] = grid[top]
    return best


def summarize_folds(results: list[dict], keys=("mAP", "mAUC", "mF1")) -> dict:
    """Mean, population std (ddof=0, seed 000) and median (seed 003) of per-fold scores (G31)."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in results if r.get(key) is not None], dtype=np.float64)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)),
                    "median": float(np.median(values)), "values": values.tolist()} if len(values) else None
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_report(result: dict, title: str = "") -> str:
    """A per-class table, then the means, the group means and the prevalence baseline."""
    lines = [title] if title else []
    lines.append(f"{'class':<28}{'group':<8}{'n_pos':>7}{'prev':>8}{'AP':>8}{'AUC':>8}{'F1':>8}")
    for r in result["per_class"]:
        lines.append(f"{r['class'][:27]:<28}{(r['group'] or '-'):<8}{r['n_pos']:>7}{_fmt(r['prevalence']):>8}"
                     f"{_fmt(r['ap']):>8}{_fmt(r['auc']):>8}{_fmt(r['f1']):>8}")
    lines.append(f"mean over {result['n_scored']}/{result['n_classes']} scored classes: mAP {_fmt(result['mAP'])}  "
                 f"mAUC {_fmt(result['mAUC'])}  mF1 {_fmt(result['mF1'])}   "
                 f"(prevalence baseline mAP {_fmt(result['prevalence_baseline_mAP'])})")
    for g, stats in (result.get("groups") or {}).items():
        if stats:
            lines.append(f"  {g:<7} ({stats['n_classes']:>2} classes): mAP {_fmt(stats['mAP'])}  "
                         f"mAUC {_fmt(stats['mAUC'])}  mF1 {_fmt(stats['mF1'])}")
    if result["undefined"]:
        lines.append("not scored: " + ", ".join(f"{u['class']} ({u['reason']})" for u in result["undefined"]))
    return "\n".join(lines)
