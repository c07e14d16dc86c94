"""Per-class decision thresholds tuned on out-of-fold predictions (issue 4, G34; beyond seed 002).

Seed 002 (and CodaLab) score mF1 at a fixed 0.5. With a long tail and focal loss the probabilities
of rare classes rarely reach 0.5, so a per-class threshold t chosen on OOF predictions to maximise
F1 is the usual fix. CodaLab binarises the submitted probabilities at 0.5 itself, so instead of
binarising, `to_half` applies a per-class monotone piecewise-linear map sending t to 0.5
(0 -> 0, t -> 0.5, 1 -> 1): every class keeps its ranking, so AP and AUC are exactly unchanged,
and F1 at 0.5 after the map equals F1 at t before it.

runs/<name>/thresholds.json is written when a run's fold summary is assembled (train.summarize);
`python -m cxrlt.ensemble --thresholds oof|FILE` applies thresholds to a submission.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..utils import atomic
from ..utils.errors import UserError
from . import metrics

FILE_NAME = "thresholds.json"


class ThresholdsError(UserError):
    """A thresholds.json that cannot be applied (missing, not cxrlt's, another class list, a bad value)."""


NOTE = ("tuned to maximise each class's F1 on these out-of-fold predictions and scored on the same "
        "predictions, so mF1_tuned is optimistic; on new data expect less")


def tune(labels, probs, classes, *, tuned_on: str = "out-of-fold predictions") -> dict:
    """Thresholds maximising per-class F1 on (labels, probs), with F1 at 0.5 and at t per class."""
    classes = list(classes)
    t = metrics.tune_thresholds(labels, probs)
    at_half = metrics.evaluate(labels, probs, classes)
    at_t = metrics.evaluate(labels, probs, classes, thresholds=t)
    return {
        "tuned_on": tuned_on,
        "n_images": int(len(probs)),
        "classes": classes,
        "thresholds": [float(x) for x in t],
        "mF1_at_0.5": at_half["mF1"],
        "mF1_tuned": at_t["mF1"],
        "per_class": [{"class": c, "n_pos": a["n_pos"], "threshold": float(x), "f1_at_0.5": a["f1"], "f1_tuned": b["f1"]}
                      for c, x, a, b in zip(classes, t, at_half["per_class"], at_t["per_class"])],
        "note": NOTE,
    }


def save(path, info: dict) -> None:
    atomic.write_json(path, info)


def load(path, classes) -> np.ndarray:
    """Thresholds from a thresholds.json, in the order of `classes`; a mismatch or a bad value is named."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise ThresholdsError(f"threshold file {path} does not exist (a run writes it when all its folds are done)")
    try:
        info = json.loads(path.read_text())
        by_class = dict(zip(info["classes"], info["thresholds"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ThresholdsError(f"{path}: not a cxrlt thresholds.json ({err})") from None
    missing = [c for c in classes if c not in by_class]
    if missing:
        raise ThresholdsError(f"{path}: no threshold for {missing[:5]}; it was tuned for another class list")
    t = np.array([by_class[c] for c in classes], dtype=np.float64)
    bad = [c for c, x in zip(classes, t) if not 0 < x < 1]
    if bad:
        raise ThresholdsError(f"{path}: thresholds must lie strictly between 0 and 1; bad for {bad[:5]}")
    return t


def to_half(probs, thresholds) -> np.ndarray:
    """Per class, the monotone piecewise-linear map 0 -> 0, t -> 0.5, 1 -> 1 (float64, so p < t stays < 0.5)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))[None, :]
    if not ((t > 0) & (t < 1)).all():
        raise ValueError("thresholds must lie strictly between 0 and 1")
    out = np.where(p < t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1.0 - t))
    return np.clip(out, 0.0, 1.0)


def mf1_line(labels, probs, classes, thresholds, *, where: str = "") -> str:
    """'mF1 at 0.5 X | at tuned thresholds Y': the two ways every printed score gives mF1."""
    at_half = metrics.evaluate(labels, probs, list(classes))["mF1"]
    at_t = metrics.evaluate(labels, probs, list(classes), thresholds=thresholds)["mF1"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return f"mF1 at 0.5 {fmt(at_half)}  |  at per-class thresholds{where} {fmt(at_t)}"
