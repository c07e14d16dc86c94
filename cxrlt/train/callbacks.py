"""Keras callbacks that make a fold's training measurable: per-epoch validation mAP, best-model
selection, history.csv.

cxrlt.engine drives them as `fit` would, in the order `fold_callbacks` gives, and records the epoch
as finished (its checkpoint) only after all of them ran: a kill between any two steps repeats at
most the interrupted epoch, and every file written is whole (atomic writes). Only the chief process
gets the callbacks that score, select and write; every worker predicts its share of the validation images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from ..utils import atomic
from ..config import tasks
from ..config.schema import LOWER_IS_BETTER
from ..evaluate import metrics, single_label
from ..model import models

log = logging.getLogger(__name__)


class ValidationMetrics(keras.callbacks.Callback):
    """Score the fold's validation split each epoch with the competition metric (macro mAP)."""

    def __init__(self, predict_probs, y_true: np.ndarray, classes, groups: dict | None, score: bool = True,
                 task: str = "multilabel", decision: str = "argmax"):
        """`predict_probs()` returns the current model's probabilities for the validation images, [N, C].
        Every worker calls it (the prediction is spread over all of them); only the chief (`score`) scores.
        A single-label `task` logs its own scores too (val_mcc, val_kappa, ...: train.monitor picks one)."""
        super().__init__()
        self.predict_probs, self.y_true, self.classes, self.groups = predict_probs, y_true, list(classes), groups
        self.score, self.task, self.decision = score, task, decision

    def on_epoch_end(self, epoch, logs=None):
        probs = self.predict_probs()
        if not self.score:
            return
        if self.task != "multilabel":
            return self._single_label(epoch, probs, logs)
        result = metrics.evaluate(self.y_true, probs, self.classes, groups=self.groups)
        logs = logs if logs is not None else {}
        logs["val_mAP"], logs["val_mAUC"], logs["val_mF1"] = result["mAP"], result["mAUC"], result["mF1"]
        tail = (result.get("groups") or {}).get("tail") or {}
        if tail.get("mAP") is not None:
            logs["val_tail_mAP"] = tail["mAP"]
        log.info("epoch %d: loss %.4f  val mAP %.4f  mAUC %.4f  mF1 %.4f%s", epoch + 1, logs.get("loss", float("nan")),
                 result["mAP"], result["mAUC"], result["mF1"],
                 f"  tail mAP {tail['mAP']:.4f}" if tail.get("mAP") is not None else "")


    def _single_label(self, epoch, probs, logs):
        result = single_label.evaluate(self.y_true, probs, self.classes, task=self.task, decision=self.decision,
                                       groups=self.groups)
        logs = logs if logs is not None else {}
        logs["val_mAP"], logs["val_mAUC"], logs["val_mF1"] = result["mAP"], result["mAUC"], result["mF1"]
        for name, key in tasks.MONITOR_KEYS.items():
            if name not in ("map", "mauc", "mf1") and result.get(key) is not None:
                logs[f"val_{name}"] = result[key]
        log.info("epoch %d: loss %.4f  val %s", epoch + 1, logs.get("loss", float("nan")), single_label.headline(result))


class ModelSelector(keras.callbacks.Callback):
    """Save the probability model of the best epoch (by val mAP) or of the last one, atomically.

    The best score so far lives in best.json beside the model, so a resumed fold keeps comparing
    against the right number.
    """

    def __init__(self, model_to_save: keras.Model, path: Path, mode: str = "best", monitor: str = "val_mAP",
                 lower_is_better: bool = False):
        super().__init__()
        self.model_to_save, self.path, self.mode, self.monitor = model_to_save, Path(path), mode, monitor
        self.state_path = self.path.with_name("best.json")
        self.sign = -1.0 if lower_is_better else 1.0  # a loss is best at its minimum

    def _best(self) -> float:
        if self.state_path.exists():
            return self.sign * float(json.loads(self.state_path.read_text())["score"])
        return -np.inf

    def on_epoch_end(self, epoch, logs=None):
        score = float((logs or {}).get(self.monitor, np.nan))
        if self.mode == "last" or (np.isfinite(score) and self.sign * score > self._best()) or not self.path.exists():
            models.save(self.model_to_save, self.path)
            atomic.write_json(self.state_path, {"epoch": epoch + 1, "score": score, "monitor": self.monitor})


class LossEpoch(keras.callbacks.Callback):
    """Tell a loss with an epoch switch (``set_epoch``: LDAM's DRW) which epoch starts. On every worker (each
    has its own loss); a resumed fold's first epoch sets it too, so a resume switches exactly as a straight run."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def on_epoch_begin(self, epoch, logs=None):
        if self.loss.set_epoch(epoch) and epoch == self.loss.switch_epoch:
            log.info("epoch %d: %s switches on its deferred re-weighting", epoch + 1, type(self.loss).__name__)


class HistoryWriter(keras.callbacks.Callback):
    """history.csv with one row per finished epoch; a repeated epoch (after a resume) replaces its row."""

    def __init__(self, path: Path, optimizer=None):
        super().__init__()
        self.path, self.optimizer = Path(path), optimizer

    def on_epoch_end(self, epoch, logs=None):
        rows = pd.read_csv(self.path) if self.path.exists() else pd.DataFrame()
        if len(rows):
            rows = rows[rows["epoch"] < epoch + 1]
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        if self.optimizer is not None:
            row["lr"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        atomic.write_csv(self.path, pd.concat([rows, pd.DataFrame([row])], ignore_index=True))


def fold_callbacks(fold_dir: Path, model_to_save: keras.Model, predict_probs, y_val, classes, groups, checkpoint: str,
                   optimizer=None, chief: bool = True, task: str = "multilabel", monitor: str = "map",
                   decision: str = "argmax") -> list[keras.callbacks.Callback]:
    """One fold's callbacks, in the order they must run: on the chief all of them; on another worker only its
    part of the validation prediction (model selection, the files and the stop decision are the chief's).
    `monitor`: the train.monitor name whose val_ score selects the best epoch (map: val_mAP, as always)."""
    if not chief:
        return [ValidationMetrics(predict_probs, y_val, classes, groups, score=False, task=task, decision=decision)]
    key = {"map": "val_mAP", "mauc": "val_mAUC", "mf1": "val_mF1"}.get(monitor, f"val_{monitor}")
    return [
        ValidationMetrics(predict_probs, y_val, classes, groups, task=task, decision=decision),
        ModelSelector(model_to_save, fold_dir / "model.keras", mode=checkpoint, monitor=key,
                      lower_is_better=monitor in LOWER_IS_BETTER),
        HistoryWriter(fold_dir / "history.csv", optimizer),
    ]
