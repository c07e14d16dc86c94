"""Single-label metrics in NumPy (one class or grade per image): what seed 000 (COVID-19 severity, per-class
precision / recall / F1 / AUC, one-vs-one macro AUC, accuracy, macro and weighted averages) and seed 003
(Balanced-MixUp: quadratic-weighted kappa, MCC and Kendall tau on EyePACS; MCC, balanced accuracy and macro-F1
on Hyper-Kvasir) report, checked against scikit-learn and SciPy in the tests.

Conventions (scikit-learn's, where it has one):
- the predicted class is read from the probabilities by a decision rule: argmax; for ordinal grades also
  median (the smallest grade whose cumulative probability reaches 0.5: CORN's own rule,
  coral_pytorch.dataset.corn_label_from_logits) or expected (the expected grade sum_k k p_k, rounded half up);
- precision / recall / F1 per class with zero_division 0; macro means over the classes present in the labels
  or the predictions (f1_score(average='macro')), weighted means by support;
- balanced accuracy: the mean recall over the classes present in the labels (balanced_accuracy_score);
- MCC: the multi-class R_K statistic (matthews_corrcoef), 0 when undefined;
- quadratic kappa over the K grades 0..K-1 (cohen_kappa_score(weights='quadratic', labels=range(K))): a grade
  nobody has still counts in the distances; Kendall tau-b between the true and predicted grades
  (scipy.stats.kendalltau), from the K x K table in O(K^2), so 55,000 test images cost nothing;
- AUC one-vs-rest per class (the multi-label roc_auc) and its macro mean; one-vs-one macro AUC as Hand & Till
  (roc_auc_score(multi_class='ovo')): each pair of classes scored on the images of the two classes, both
  directions averaged, pairs averaged. Classes without images are left out of the AUCs and listed.
The result carries mAP / mAUC / mF1 too (one-vs-rest AP, AUC, macro-F1), so the multi-label tables and plots read it.
"""

from __future__ import annotations

import math

import numpy as np

from . import metrics
from .metrics import _fmt  # one number format for both reports

DECISIONS = ("argmax", "median", "expected")
# per-fold summaries (mean / std / median over folds, seed 000's and seed 003's aggregates)
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "auc_ovo", "auc_ovr", "kappa", "kendall_tau",
                "mAP", "mAUC", "mF1")


# ------------------------------------------------------------------------------------------ inputs

def class_of(y_true) -> np.ndarray:
    """int [N] from one-hot rows [N, K] (or an int vector as is)."""
    y = np.asarray(y_true)
    if y.ndim == 1:
        return y.astype(np.int64)
    if y.ndim != 2 or not np.isin(y, (0.0, 1.0)).all() or not np.all(y.sum(axis=1) == 1):
        raise ValueError("single-label scores need one-hot label rows (exactly one 1 per image)")
    return np.argmax(y, axis=1).astype(np.int64)


def decide(probs, decision: str = "argmax") -> np.ndarray:
    """The predicted class of every row of `probs` [N, K] by `decision` (see the module docstring)."""
    p = np.asarray(probs, dtype=np.float64)
    if decision == "argmax":
        return np.argmax(p, axis=1).astype(np.int64)
    k = p.shape[1]
    if decision == "median":  # #{j <= K-2 : P(grade > j) > 0.5}, P(grade > j) = 1 - F_j
        survival = 1.0 - np.cumsum(p, axis=1)[:, :-1]
        return np.sum(survival > 0.5, axis=1).astype(np.int64)
    if decision == "expected":
        expected = p @ np.arange(k, dtype=np.float64) / np.maximum(p.sum(axis=1), 1e-12)
        return np.clip(np.floor(expected + 0.5), 0, k - 1).astype(np.int64)
    raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")


def expected_grade(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return p @ np.arange(p.shape[1], dtype=np.float64) / np.maximum(p.sum(axis=1), 1e-12)


# ------------------------------------------------------------------------------------------ metrics

def confusion(y, pred, k: int) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted class (sklearn's confusion_matrix)."""
    return np.bincount(np.asarray(y) * k + np.asarray(pred), minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else math.nan


def balanced_accuracy(cm: np.ndarray) -> float:
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else math.nan


def per_class_prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, F1 per class, 0 where undefined (zero_division=0)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def mcc(cm: np.ndarray) -> float:
    """Gorodkin's multi-class Matthews correlation R_K; 0 when a margin makes it undefined."""
    cm = cm.astype(np.float64)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    cov_pred_true = c * s - np.dot(p, t)
    cov_pred = s * s - np.dot(p, p)
    cov_true = s * s - np.dot(t, t)
    denom = math.sqrt(cov_pred * cov_true) if cov_pred > 0 and cov_true > 0 else 0.0
    return float(cov_pred_true / denom) if denom else 0.0


def quadratic_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights (i - j)^2 over the grades 0..K-1; NaN for an empty table."""
    cm = cm.astype(np.float64)
    n = cm.sum()
    k = cm.shape[0]
    if n == 0:
        return math.nan
    grades = np.arange(k, dtype=np.float64)
    w = (grades[:, None] - grades[None, :]) ** 2
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    denom = np.sum(w * expected)
    return float(1.0 - np.sum(w * cm) / denom) if denom else math.nan


def kendall_tau_b(cm: np.ndarray) -> float:
    """Kendall's tau-b between the row and column grades of a contingency table (scipy.stats.kendalltau of the
    paired grades); NaN when either side has a single grade."""
    cm = cm.astype(np.float64)
    n = cm.sum()
    # cells strictly below-right / below-left of (i, j): concordant / discordant partners
    below = np.cumsum(cm[::-1], axis=0)[::-1]                    # rows >= i
    below = np.vstack([below[1:], np.zeros((1, cm.shape[1]))])  # rows > i
    right = np.cumsum(below[:, ::-1], axis=1)[:, ::-1]           # columns >= j
    right = np.hstack([right[:, 1:], np.zeros((cm.shape[0], 1))])  # columns > j
    left = np.cumsum(below, axis=1)                               # columns <= j
    left = np.hstack([np.zeros((cm.shape[0], 1)), left[:, :-1]])  # columns < j
    concordant, discordant = np.sum(cm * right), np.sum(cm * left)
    pairs = n * (n - 1) / 2
    ties_true = np.sum(cm.sum(axis=1) * (cm.sum(axis=1) - 1) / 2)
    ties_pred = np.sum(cm.sum(axis=0) * (cm.sum(axis=0) - 1) / 2)
    denom = math.sqrt((pairs - ties_true) * (pairs - ties_pred)) if pairs > ties_true and pairs > ties_pred else 0.0
    return float((concordant - discordant) / denom) if denom else math.nan


def auc_ovr(y, probs) -> tuple[list[float | None], float | None]:
    """(one-vs-rest AUC per class (None without images or without others), their macro mean)."""
    probs = np.asarray(probs, dtype=np.float64)
    per = []
    for c in range(probs.shape[1]):
        positive = (y == c).astype(np.float64)
        per.append(None if positive.sum() in (0, len(y)) else metrics.roc_auc(positive, probs[:, c]))
    scored = [v for v in per if v is not None]
    return per, (float(np.mean(scored)) if scored else None)


def auc_ovo(y, probs) -> float | None:
    """Hand & Till's one-vs-one macro AUC over the pairs of classes that both have images."""
    probs = np.asarray(probs, dtype=np.float64)
    present = [c for c in range(probs.shape[1]) if np.any(y == c)]
    scores = []
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            rows = (y == a) | (y == b)
            a_true = (y[rows] == a).astype(np.float64)
            scores.append(0.5 * (metrics.roc_auc(a_true, probs[rows, a]) + metrics.roc_auc(1.0 - a_true, probs[rows, b])))
    return float(np.mean(scores)) if scores else None


def _finite(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def decision_scores(y, pred, k: int, ordinal: bool) -> dict:
    """The scores that depend on the predicted class only."""
    cm = confusion(y, pred, k)
    precision, recall, f1 = per_class_prf(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    used = (support + predicted) > 0  # sklearn's macro: the labels present in y_true or y_pred
    weights = support / support.sum() if support.sum() else np.zeros(k)
    out = {
        "accuracy": _finite(accuracy(cm)),
        "balanced_accuracy": _finite(balanced_accuracy(cm)),
        "macro_precision": float(precision[used].mean()) if used.any() else None,
        "macro_recall": float(recall[used].mean()) if used.any() else None,
        "macro_f1": float(f1[used].mean()) if used.any() else None,
        "weighted_precision": float(np.dot(weights, precision)),
        "weighted_recall": float(np.dot(weights, recall)),
        "weighted_f1": float(np.dot(weights, f1)),
        "mcc": _finite(mcc(cm)),
        "kappa": _finite(quadratic_kappa(cm)) if ordinal else None,
        "kendall_tau": _finite(kendall_tau_b(cm)) if ordinal else None,
    }
    return out, cm, (precision, recall, f1)


def evaluate(y_true, y_prob, classes, *, task: str = "multiclass", decision: str = "argmax",
             groups: dict | None = None) -> dict:
    """Every single-label score of probabilities [N, K] against one-hot labels (JSON-serialisable)."""
    classes = list(classes)
    probs = np.asarray(y_prob, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"predictions {probs.shape} must be [images, {len(classes)} classes]")
    if not np.isfinite(probs).all():
        bad = np.argwhere(~np.isfinite(probs))[0]
        raise ValueError(f"predictions contain NaN/inf, first at row {bad[0]}, column {bad[1]}")
    y = class_of(y_true)
    if len(y) != len(probs):
        raise ValueError(f"{len(y)} labels but {len(probs)} predictions")
    k, ordinal = len(classes), task == "ordinal"
    pred = decide(probs, decision)
    scores, cm, (precision, recall, f1) = decision_scores(y, pred, k, ordinal)
    per_auc, macro_auc = auc_ovr(y, probs)
    per_class, undefined = [], []
    for c, name in enumerate(classes):
        n_pos = int(np.sum(y == c))
        ap = metrics.average_precision((y == c).astype(np.float64), probs[:, c]) if 0 < n_pos < len(y) else None
        if per_auc[c] is None:
            undefined.append({"class": name, "reason": "no images" if n_pos == 0 else "no other images"})
        per_class.append({"class": name, "group": (groups or {}).get(name), "n_pos": n_pos,
                          "prevalence": n_pos / len(y) if len(y) else None, "n_pred": int(np.sum(pred == c)),
                          "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                          "auc": per_auc[c], "ap": _finite(ap)})
    aps = [r["ap"] for r in per_class if r["ap"] is not None]
    prevalence = np.bincount(y, minlength=k) / max(len(y), 1)
    scored = (prevalence > 0) & (prevalence < 1)
    result = {
        "task": task, "decision": decision, "n_images": int(len(y)), "n_classes": k,
        **scores,
        "auc_ovo": auc_ovo(y, probs), "auc_ovr": macro_auc,
        # validation cross-entropy of the probabilities (seed 000 keeps the epoch with the lowest)
        "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)))) if len(y) else None,
        # the multi-label tables' names: one-vs-rest AP and AUC, macro-F1 of the decided class
        "mAP": float(np.mean(aps)) if aps else None, "mAUC": macro_auc, "mF1": scores["macro_f1"],
        "n_scored": k - len(undefined), "undefined": undefined,
        "prevalence_baseline_mAP": float(prevalence[scored].mean()) if scored.any() else None,
        "confusion": cm.tolist(), "per_class": per_class,
    }
    if ordinal:
        result["mean_abs_error"] = float(np.mean(np.abs(pred - y))) if len(y) else None
        result["by_decision"] = {}
        for rule in DECISIONS:
            other, other_cm, _ = decision_scores(y, decide(probs, rule), k, True)
            result["by_decision"][rule] = {key: other[key] for key in ("kappa", "mcc", "kendall_tau", "accuracy",
                                                                      "balanced_accuracy", "macro_f1")}
    return result


def score(task: str, y_true, y_prob, classes, *, groups: dict | None = None, decision: str = "argmax", **kwargs) -> dict:
    """The scores of a task: multi-label (cxrlt.evaluate.metrics) or single-label (this module)."""
    if task in ("multiclass", "ordinal"):
        return evaluate(y_true, y_prob, classes, task=task, decision=decision, groups=groups)
    return metrics.evaluate(y_true, y_prob, classes, groups=groups, **kwargs)


def summary_keys(task: str) -> tuple[str, ...]:
    if task == "ordinal":
        return SUMMARY_KEYS
    if task == "multiclass":
        return tuple(k for k in SUMMARY_KEYS if k not in ("kappa", "kendall_tau"))
    return ("mAP", "mAUC", "mF1")


def format_report(result: dict, title: str = "") -> str:
    """Per-class table (support, precision, recall, F1, AUC, AP), the confusion matrix and the aggregates."""
    lines = [title] if title else []
    lines.append(f"{'class':<28}{'n':>7}{'pred':>7}{'prec':>8}{'recall':>8}{'F1':>8}{'AUC':>8}{'AP':>8}")
    for r in result["per_class"]:
        lines.append(f"{str(r['class'])[:27]:<28}{r['n_pos']:>7}{r['n_pred']:>7}{_fmt(r['precision']):>8}"
                     f"{_fmt(r['recall']):>8}{_fmt(r['f1']):>8}{_fmt(r['auc']):>8}{_fmt(r['ap']):>8}")
    names = [str(r["class"])[:7] for r in result["per_class"]]
    lines.append("confusion matrix (rows: true class, columns: predicted, " + result["decision"] + "):")
    lines.append(" " * 9 + "".join(f"{n:>8}" for n in names))
    for name, row in zip(names, result["confusion"]):
        lines.append(f"{name:>8} " + "".join(f"{v:>8}" for v in row))
    lines.append(f"accuracy {_fmt(result['accuracy'])}  balanced accuracy {_fmt(result['balanced_accuracy'])}  "
                 f"macro-F1 {_fmt(result['macro_f1'])}  MCC {_fmt(result['mcc'])}  AUC one-vs-one "
                 f"{_fmt(result['auc_ovo'])}  one-vs-rest {_fmt(result['auc_ovr'])}")
    if result["task"] == "ordinal":
        lines.append(f"quadratic kappa {_fmt(result['kappa'])}  Kendall tau {_fmt(result['kendall_tau'])}  "
                     f"mean absolute grade error {_fmt(result['mean_abs_error'])}   (decision {result['decision']})")
        for rule, s in result["by_decision"].items():
            lines.append(f"  by {rule:<9}: kappa {_fmt(s['kappa'])}  MCC {_fmt(s['mcc'])}  tau {_fmt(s['kendall_tau'])}"
                         f"  accuracy {_fmt(s['accuracy'])}")
    if result["undefined"]:
        lines.append("AUC not scored: " + ", ".join(f"{u['class']} ({u['reason']})" for u in result["undefined"]))
    return "\n".join(lines)


def headline(result: dict) -> str:
    """One line: the task's main numbers."""
    base = (f"accuracy {_fmt(result['accuracy'])}  B-ACC {_fmt(result['balanced_accuracy'])}  macro-F1 "
            f"{_fmt(result['macro_f1'])}  MCC {_fmt(result['mcc'])}  AUC ovo {_fmt(result['auc_ovo'])}")
    if result["task"] == "ordinal":
        base = f"quad-kappa {_fmt(result['kappa'])}  Kendall tau {_fmt(result['kendall_tau'])}  " + base
    return base
