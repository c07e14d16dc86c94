"""Which model `--init` (model.init) starts fold k from, and with which class names.

- `--init RUN` (a cxrlt run directory): fold k starts from RUN/fold<k>/model.keras, which is only sound when
  both runs split the same images into the same folds (their folds.csv agree): otherwise a fold's validation
  images could be training images of its source model. With other folds, name one model instead.
- `--init MODEL.keras`: every fold starts from that model. Its class names come from a classes.json beside
  it, else from the run directory it sits in (RUN/fold<j>/model.keras -> RUN/classes.json); a file with
  neither gives its backbone only (the whole head starts fresh, and the log says so). When the file sits in
  a run, the log warns how many of this fold's validation images were among its training images.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError
from ..runtime import runs

log = logging.getLogger(__name__)


def _folds(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str}).sort_values("id").reset_index(drop=True)


def same_folds(a: Path, b: Path) -> bool:
    fa, fb = _folds(a), _folds(b)
    return len(fa) == len(fb) and bool((fa["id"] == fb["id"]).all() and (fa["fold"] == fb["fold"]).all())


def classes_for(model_path: Path) -> list[str] | None:
    """The class names of a model file: classes.json beside it, else in its run directory, else None."""
    for candidate in (model_path.with_name("classes.json"), model_path.parent.parent / "classes.json"):
        if candidate.is_file():
            try:
                return list(json.loads(candidate.read_text())["classes"])
            except (ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"{candidate} is not a classes.json ({{\"classes\": [...]}}): {err}") from None
    return None


def resolve(init: str, run: runs.Run, k: int) -> tuple[Path, list[str] | None]:
    """(model file, its class names or None) that fold k of `run` starts from."""
    path = Path(init).expanduser()
    if path.is_dir():
        source = runs.Run(path)
        if not source.classes_json.is_file() or not source.folds_csv.is_file():
            raise ConfigError(f"--init {path}: not a cxrlt run directory (no classes.json / folds.csv); pass a run "
                              "directory or a .keras model file")
        if not same_folds(source.folds_csv, run.folds_csv):
            raise ConfigError(
                f"--init {path}: its folds.csv differs from this run's ({run.folds_csv}), so fold {k} cannot start "
                f"from its fold {k} (other images or other folds). Name one model for every fold instead, e.g. "
                f"--init {source.model_path(0)}")
        model = source.model_path(k)
        if not model.is_file():
            raise ConfigError(f"--init {path}: fold {k} has no model ({model}); finish that run's fold {k} first")
        return model, list(source.classes())
    if not path.is_file():
        raise ConfigError(f"--init {path}: no such run directory or model file")
    return path, classes_for(path)


def leaked(model_path: Path, run: runs.Run, k: int) -> int:
    """How many of fold k's validation images the source model (RUN/fold<j>/model.keras) trained on; 0 if unknown."""
    folds_csv, match = model_path.parent.parent / "folds.csv", re.fullmatch(r"fold(\d+)", model_path.parent.name)
    if not folds_csv.is_file() or match is None or not run.folds_csv.is_file():
        return 0
    source, target = _folds(folds_csv), _folds(run.folds_csv)
    trained = set(source.loc[source["fold"] != int(match.group(1)), "id"])
    return int(np.isin(target.loc[target["fold"] == k, "id"].to_numpy(), list(trained)).sum())


def initialise(init: str, run: runs.Run, k: int, target, classes) -> "transfer.InitReport":
    """Load fold k's source model and copy it into `target` (the probability model; call inside the strategy's
    scope); logs what was loaded and what was not."""
    from ..model import models, transfer

    path, source_classes = resolve(init, run, k)
    source = models.load(path)
    report = transfer.transfer(source, target, classes, source_classes, source_name=str(path))
    for line in report.lines():
        log.info("fold %d %s", k, line)
    overlap = leaked(path, run, k)
    if overlap:
        log.warning("fold %d: %d of its validation images were training images of %s: its validation scores are "
                    "optimistic (use --init RUN with the same folds.csv to avoid this)", k, overlap, path)
    return report
