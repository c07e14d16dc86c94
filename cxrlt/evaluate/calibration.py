"""Calibration of predicted probabilities: reliability bins and expected calibration error (ECE).

CXR-LT reports calibration and no seed measures it (inventory §12), so the definitions are the
usual ones (Guo et al. 2017, Naeini et al. 2015), written out here:
- predictions are put in `n_bins` equal-width bins over [0, 1] (p = 1 falls in the last bin);
- per bin: its share of predictions, their mean probability ("confidence") and the fraction that are
  positive ("observed frequency");
- ECE = sum over bins of share x |observed frequency - confidence|, 0 for perfectly calibrated.
For multi-label output every (image, finding) pair is one binary prediction: `pooled` ECE bins all of
them together (dominated by frequent findings and by the many confident negatives), `classwise`
averages each finding's own ECE with equal weight, as macro mAP does.
"""

from __future__ import annotations

import numpy as np


def bin_index(y_prob, n_bins: int = 10) -> np.ndarray:
    return np.clip((np.asarray(y_prob, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability(y_true, y_prob, n_bins: int = 10) -> dict:
    """Per-bin counts, mean confidence and observed frequency (NaN for empty bins) of flat arrays."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_prob = np.asarray(y_prob, dtype=np.float64).ravel()
    if y_true.shape != y_prob.shape:
        raise ValueError(f"labels {y_true.shape} and probabilities {y_prob.shape} differ in size")
    idx = bin_index(y_prob, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=y_prob, minlength=n_bins) / count
        frequency = np.bincount(idx, weights=y_true, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "confidence": confidence, "frequency": frequency}


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """ECE of flat arrays of 0/1 labels and probabilities; NaN when there is nothing to score."""
    bins = reliability(y_true, y_prob, n_bins)
    total = bins["count"].sum()
    if total == 0:
        return float("nan")
    used = bins["count"] > 0
    gaps = np.abs(bins["frequency"][used] - bins["confidence"][used])
    return float(np.sum(bins["count"][used] / total * gaps))


def multilabel_ece(y_true, y_prob, n_bins: int = 10) -> dict:
    """{'pooled': ECE over all (image, class) pairs, 'classwise': mean per-class ECE, 'per_class': [...]}."""
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    per_class = [expected_calibration_error(y_true[:, j], y_prob[:, j], n_bins) for j in range(y_true.shape[1])]
    finite = [v for v in per_class if np.isfinite(v)]
    return {"pooled": expected_calibration_error(y_true, y_prob, n_bins),
            "classwise": float(np.mean(finite)) if finite else float("nan"), "per_class": per_class}
