"""The run directory: one folder that fully describes a run, and the rules for resuming it.

runs/<name>/
  config.yaml          resolved config (a rerun with a different one is refused unless --force)
  folds.csv            image id -> patient -> fold (made once, reused on every resume)
  fold<k>/model.keras  the fold's selected model (probabilities out)
  fold<k>/history.csv  one row per epoch; fold<k>/backup/ mid-training state (BackupAndRestore)
  fold<k>/oof.csv      the fold's validation predictions (TTA); fold<k>/done.json marks it finished
  oof.csv, metrics.json   out-of-fold predictions of all folds and their scores
  predictions/         cached test-set predictions per image list
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import atomic


class RunError(ValueError):
    pass


@dataclass(frozen=True)
class Run:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def oof_csv(self) -> Path:
        return self.root / "oof.csv"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def classes_json(self) -> Path:
        return self.root / "classes.json"

    def classes(self) -> tuple[str, ...]:
        return tuple(self._class_info()["classes"])

    def groups(self) -> dict[str, str]:
        return self._class_info()["groups"]

    def _class_info(self) -> dict:
        if not self.classes_json.exists():
            raise RunError(f"{self.root}: no classes.json; is this a cxrlt run directory?")
        return json.loads(self.classes_json.read_text())

    def fold_dir(self, k: int) -> Path:
        return self.root / f"fold{k}"

    def model_path(self, k: int) -> Path:
        return self.fold_dir(k) / "model.keras"

    def done_path(self, k: int) -> Path:
        return self.fold_dir(k) / "done.json"

    def is_done(self, k: int) -> bool:
        return self.done_path(k).exists() and self.model_path(k).exists()

    def config(self) -> dict:
        if not self.config_path.exists():
            raise RunError(f"{self.root} is not a cxrlt run (no config.yaml); train one with python -m cxrlt.train")
        return yaml.safe_load(self.config_path.read_text())

    def finished_folds(self) -> list[int]:
        k = self.config()["train"]["folds"]
        return [i for i in range(k) if self.is_done(i)]


def write_predictions(path: Path, ids: np.ndarray, probs: np.ndarray, classes, extra: dict | None = None) -> None:
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "id", ids)
    for i, (key, values) in enumerate((extra or {}).items()):
        frame.insert(1 + i, key, values)
    atomic.write_csv(path, frame, float_format="%.6g")


def read_predictions(path: Path, classes) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path, dtype={"id": str})
    return frame["id"].to_numpy(), frame[list(classes)].to_numpy(dtype=np.float32)


def mark_done(run: Run, k: int, info: dict) -> None:
    atomic.write_text(run.done_path(k), json.dumps(info, indent=2, default=str))
