"""Keras callbacks that make a fold's training measurable and resumable.

Order matters and is fixed in `fold_callbacks`: score the epoch, keep the best model, write the
history, then let BackupAndRestore record the epoch as finished. A kill between any two steps
repeats at most the interrupted epoch, and every file written is whole (atomic writes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import atomic, metrics, models

log = logging.getLogger(__name__)


class ValidationMetrics(keras.callbacks.Callback):
    """Score the fold's validation split each epoch with the competition metric (macro mAP)."""

    def __init__(self, val_ds, y_true: np.ndarray, classes, groups: dict | None):
        super().__init__()
        self.val_ds, self.y_true, self.classes, self.groups = val_ds, y_true, list(classes), groups

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model.predict(self.val_ds, verbose=0)
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        result = metrics.evaluate(self.y_true, probs, self.classes, groups=self.groups)
        logs = logs if logs is not None else {}
        logs["val_mAP"], logs["val_mAUC"], logs["val_mF1"] = result["mAP"], result["mAUC"], result["mF1"]
        tail = (result.get("groups") or {}).get("tail") or {}
        if tail.get("mAP") is not None:
            logs["val_tail_mAP"] = tail["mAP"]
        log.info("epoch %d: loss %.4f  val mAP %.4f  mAUC %.4f  mF1 %.4f%s", epoch + 1, logs.get("loss", float("nan")),
                 result["mAP"], result["mAUC"], result["mF1"],
                 f"  tail mAP {tail['mAP']:.4f}" if tail.get("mAP") is not None else "")


class ModelSelector(keras.callbacks.Callback):
    """Save the probability model of the best epoch (by val mAP) or of the last one, atomically.

    The best score so far lives in best.json beside the model, so a resumed fold keeps comparing
    against the right number.
    """

    def __init__(self, model_to_save: keras.Model, path: Path, mode: str = "best", monitor: str = "val_mAP"):
        super().__init__()
        self.model_to_save, self.path, self.mode, self.monitor = model_to_save, Path(path), mode, monitor
        self.state_path = self.path.with_name("best.json")

    def _best(self) -> float:
        if self.state_path.exists():
            return float(json.loads(self.state_path.read_text())["score"])
        return -np.inf

    def on_epoch_end(self, epoch, logs=None):
        score = float((logs or {}).get(self.monitor, np.nan))
        if self.mode == "last" or (np.isfinite(score) and score > self._best()) or not self.path.exists():
            models.save(self.model_to_save, self.path)
            atomic.write_json(self.state_path, {"epoch": epoch + 1, "score": score, "monitor": self.monitor})


class HistoryWriter(keras.callbacks.Callback):
    """history.csv with one row per finished epoch; a repeated epoch (after a resume) replaces its row."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        rows = pd.read_csv(self.path) if self.path.exists() else pd.DataFrame()
        if len(rows):
            rows = rows[rows["epoch"] < epoch + 1]
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            row["lr"] = float(keras.ops.convert_to_numpy(lr))
        atomic.write_csv(self.path, pd.concat([rows, pd.DataFrame([row])], ignore_index=True))


def fold_callbacks(fold_dir: Path, model_to_save: keras.Model, val_ds, y_val, classes, groups, checkpoint: str):
    return [
        ValidationMetrics(val_ds, y_val, classes, groups),
        ModelSelector(model_to_save, fold_dir / "model.keras", mode=checkpoint),
        HistoryWriter(fold_dir / "history.csv"),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.BackupAndRestore(str(fold_dir / "backup"), double_checkpoint=True, delete_checkpoint=True),
    ]
