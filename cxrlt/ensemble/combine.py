"""How the predictions of several runs become one: probability, rank or logit averaging, and weights fitted on OOF.

Pure NumPy on [N, C] arrays, so every rule is testable without a model. Seed 002 averages
probabilities with equal weight per config (G16); rank and logit averaging and fitted weights are
the usual alternatives, offered as options.
"""

from __future__ import annotations

import numpy as np

from .. import config
from ..evaluate import metrics
from ..runtime import runs

from ..config.schema import ENSEMBLE_METHODS as METHODS
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before taking logits


def weights_of(n: int, weights=None) -> np.ndarray:
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise runs.RunError(f"weights: need {n} non-negative numbers (one per run) with a positive sum, got {weights}")
    return w / w.sum()


def mean_average(preds, weights=None) -> np.ndarray:
    """Weighted mean of probabilities: seed 002's rule and the default."""
    w = weights_of(len(preds), weights)
    return sum(wi * np.asarray(p, np.float64) for wi, p in zip(w, preds))


def logit_average(preds, weights=None) -> np.ndarray:
    """sigmoid of the weighted mean logit: a weighted geometric mean of the odds; confident runs count more."""
    w = weights_of(len(preds), weights)
    z = sum(wi * _logit(p) for wi, p in zip(w, preds))
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def rank_average(preds, weights=None) -> np.ndarray:
    """Weighted mean of per-class normalised ranks, put back on the probability scale.

    Ranks make runs with differently calibrated outputs count equally. Raw mean ranks would sit
    near 0.5 for half the images, which ruins F1 at 0.5 (how CodaLab scores mF1), so each class's
    ranking is given the values of the probability mean (its sorted values, assigned in rank order;
    tied ranks share their mean): the ordering, hence AP and AUC, is the rank average's, the
    value distribution is the mean ensemble's. Where the mean has tied values, images with
    different mean ranks would get one value and the ranking would be lost (two runs, three
    images: AP 0.50 -> 0.33), so such ties are broken by the rank average itself (`_break_ties`).
    """
    from scipy.stats import rankdata

    w = weights_of(len(preds), weights)
    n = len(preds[0])
    scale = max(n - 1, 1)
    ranks = sum(wi * (rankdata(np.asarray(p, np.float64), axis=0) - 1) / scale for wi, p in zip(w, preds))
    ranks = np.round(ranks, 12)  # equal rank sums stay tied whatever the float rounding of the weights
    values = np.sort(mean_average(preds, w), axis=0)
    out = np.empty_like(values)
    for j in range(values.shape[1]):
        order = np.argsort(ranks[:, j], kind="stable")
        column = np.empty(n)
        column[order] = values[:, j]
        _, tie = np.unique(ranks[:, j], return_inverse=True)
        out[:, j] = _break_ties(np.bincount(tie, column) / np.bincount(tie))[tie]
    return out


def _break_ties(level: np.ndarray) -> np.ndarray:
    """Strictly increasing values for the rank groups, `level` (non-decreasing, one per distinct mean
    rank in rank order) changed only where neighbours are equal.

    A run of k equal values v is spread over part of the gap to its neighbouring value, away from
    0.5: upwards for v >= 0.5, downwards for v < 0.5, so that no 0.5 decision (CodaLab's mF1) changes
    and no value crosses its neighbours or leaves [0, 1]. (At 0 or 1, where there is no room away
    from 0.5, the run spreads towards 0.5 but stops short of it.)"""
    level = level.astype(np.float64).copy()
    n = len(level)
    if n < 2:
        return level
    new = np.r_[True, np.diff(level) != 0]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n]
    for a, b in zip(starts, ends):
        k = b - a
        if k == 1:
            continue
        v = level[a]
        lo = level[a - 1] if a > 0 else 0.0
        hi = level[b] if b < n else 1.0
        t = np.arange(k, dtype=np.float64) / k
        if v >= 0.5 and hi > v:
            level[a:b] = v + t * (hi - v) / 2
        elif v < 0.5 and lo < v:
            level[a:b] = v - t[::-1] * (v - lo) / 2
        elif v >= 0.5:  # v = 1 at the top: downwards, staying at or above 0.5
            floor = max(lo, 0.5)
            level[a:b] = v - t[::-1] * (v - floor) / 2
        else:  # v = 0 at the bottom: upwards, staying below 0.5
            ceil = min(hi, 0.5)
            level[a:b] = v + t * (ceil - v) / 2
    return level


# --------------------------------------------------------------- rank averaging one image at a time

def rank_reference(scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's reference distribution per class from its scores [n, C] (its OOF predictions): for each class
    the distinct values, ascending, and their mid-ranks scaled to 0..1 (ties share their mean position), padded
    to one length by repeating the last point; returns (values [C, M], ranks [C, M], points per class [C])."""
    scores = np.asarray(scores, np.float64)
    n, c = scores.shape
    if n < 2:
        raise runs.RunError("rank averaging one image at a time needs a run's OOF predictions of >= 2 images")
    values, ranks, counts = np.zeros((c, n)), np.zeros((c, n)), np.zeros(c, np.int64)
    for j in range(c):
        u, inverse = np.unique(np.sort(scores[:, j]), return_inverse=True)  # positions below are sorted ones
        mid = np.bincount(inverse, weights=np.arange(n, dtype=np.float64)) / np.bincount(inverse) / (n - 1)
        m = len(u)
        values[j, :m], ranks[j, :m], counts[j] = u, mid, m
        values[j, m:], ranks[j, m:] = u[-1], mid[-1]
    return values, ranks, counts


def _interp(x, xp, fp) -> np.ndarray:
    """Per class j, np.interp(x[:, j], xp[j], fp[j]) (clamped at the ends), for padded xp/fp rows."""
    return np.stack([np.interp(x[:, j], xp[j], fp[j]) for j in range(x.shape[1])], axis=1)


def reference_rank_average(preds, references, weights=None) -> np.ndarray:
    """Rank averaging that scores each image on its own (what an exported model can do; cxrlt.export).

    `rank_average` ranks the images of one list against each other, so an image's score depends on the
    rest of the batch. Here each run's score s_r of class j becomes its position in that run's reference
    distribution (its OOF scores: F_r(s) = the mid-rank, linearly interpolated between the distinct reference
    values, clamped to 0..1), the positions are averaged with the run weights, q = sum w_r F_r(s_r), and q is
    put back on the probability scale by the weighted mean of the runs' reference quantile functions,
    sum w_r F_r^-1(q). Monotone in every run's score (the ordering is a rank average); for one run it
    returns the run's own probabilities inside its reference range (F^-1(F(s)) = s)."""
    w = weights_of(len(preds), weights)
    preds = [np.asarray(p, np.float64) for p in preds]
    q = sum(wi * _interp(p, values, ranks) for wi, p, (values, ranks, _) in zip(w, preds, references))
    return sum(wi * _interp(q, ranks, values) for wi, (values, ranks, _) in zip(w, references))


COMBINE = {"mean": mean_average, "rank": rank_average, "logit": logit_average}


def combine(preds, weights=None, method: str = "mean") -> np.ndarray:
    if method not in COMBINE:
        raise config.ConfigError(f"ensemble method must be one of {list(METHODS)}, got {method!r}")
    if len({np.shape(p) for p in preds}) != 1:
        raise runs.RunError(f"predictions to combine have different shapes: {[np.shape(p) for p in preds]}")
    return COMBINE[method](preds, weights)


def mean_ap(labels, probs) -> float:
    """Macro AP over the classes that have positives and negatives (as metrics.evaluate scores it)."""
    labels = np.asarray(labels)
    aps = [metrics.average_precision(labels[:, j], probs[:, j]) for j in range(labels.shape[1])
           if 0 < labels[:, j].sum() < len(labels)]
    return float(np.mean(aps)) if aps else float("nan")


def fit_weights(preds, labels, method: str = "mean", rounds: int = 20) -> tuple[np.ndarray, dict]:
    """Run weights maximising OOF mAP by greedy ensemble selection with replacement (Caruana et al. 2004).

    Start from the best single run; each round adds one more copy of the run that gives the best
    mAP; the best bag seen wins. Weights are multiples of 1/(size of the bag). Because the best
    single run is the starting bag, the fitted mAP is never below it on the data it was fitted on
    (and being fitted there, it is optimistic).
    """
    singles = [mean_ap(labels, p) for p in preds]
    counts = np.zeros(len(preds))
    counts[int(np.argmax(singles))] = 1
    best_counts, best = counts.copy(), max(singles)
    for _ in range(rounds):
        trials = []
        for i in range(len(preds)):
            trial = counts.copy()
            trial[i] += 1
            trials.append((mean_ap(labels, combine(preds, trial, method)), -i))
        score, neg_i = max(trials)
        counts[-neg_i] += 1
        if score > best + 1e-12:
            best, best_counts = score, counts.copy()
    weights = best_counts / best_counts.sum()
    info = {"method": method, "rounds": rounds, "single_mAP": singles,
            "equal_mAP": mean_ap(labels, combine(preds, None, method)),
            "fitted_mAP": mean_ap(labels, combine(preds, weights, method)), "weights": weights.tolist()}
    return weights, info


# ----------------------------------------------------------------------------- normal gating

NORMAL_CLASSES = ("No Finding", "Normal")  # CXR-LT 2023 / 2024 call it "No Finding"; "Normal" in other editions


def normal_index(classes, flag: str = "--normal-gating") -> int:
    """The column of "No Finding" (or "Normal") among `classes`, which normal gating keeps and gates by."""
    lower = [str(c).strip().lower() for c in classes]
    found = [lower.index(n.lower()) for n in NORMAL_CLASSES if n.lower() in lower]
    if not found:
        raise config.ConfigError(f"{flag} needs a normal class ({' or '.join(map(repr, NORMAL_CLASSES))}) "
                                 f"among the runs' classes; they are {', '.join(map(str, classes))}")
    return found[0]


def normal_gating(probs, classes, weight: float, power: float = 0.0) -> np.ndarray:
    """Every abnormal class's score times a gate that falls as p_normal, the image's score for "No Finding" (or
    "Normal"), rises; p_normal itself is kept. Two forms, one at a time (0 = off):

    * linear, ``weight`` w in [0, 1]: ``p * (1 - w * p_normal)`` (the 2026 winner's README);
    * power, ``power`` P >= 0: ``p * (1 - p_normal) ** P``, what the CXR-LT 2026 task-1 winner's code runs
      (hieuphamha19/CXR_LT ``inference.py`` ``postprocess_normal_gating``, ``--normal_alpha 0.5``)."""
    weight, power = float(weight), float(power)
    if not 0.0 <= weight <= 1.0:
        raise config.ConfigError(f"normal gating weight must be in [0, 1], got {weight}")
    if not 0.0 <= power:
        raise config.ConfigError(f"normal gating power must be >= 0, got {power}")
    if weight and power:
        raise config.ConfigError("give the linear normal gating (--normal-gating) or the power form "
                                 "(--normal-gating-power), not both")
    probs = np.asarray(probs)
    if weight == 0.0 and power == 0.0:
        return probs
    j = normal_index(classes, "--normal-gating-power" if power else "--normal-gating")
    normal = probs[:, j:j + 1].astype(np.float64)
    gate = np.clip(1.0 - normal, 0.0, 1.0) ** power if power else 1.0 - weight * normal
    out = probs.astype(np.float64) * gate
    out[:, j] = probs[:, j]
    return out.astype(probs.dtype, copy=False)
