"""Patient-grouped, multi-label stratified K-fold: no patient is ever in two folds.

Labels are aggregated per patient (the union of the patient's images), the patients are split with
iterative stratification (Sechidis et al., the `iterative-stratification` package) so that even the
rarest classes are spread over the folds, and every image inherits its patient's fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic
from .dataset import LabelTable
from ..utils.errors import UserError


class FoldError(UserError):
    pass


def make_folds(table: LabelTable, k: int = 5, seed: int = 42) -> np.ndarray:
    """Fold index (0..k-1) for every image of `table`."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if k < 2:
        raise FoldError(f"K-fold needs k >= 2, got {k}")
    if table.labels is None:
        raise FoldError(f"{table.source}: folds need labels")
    if table.task != "multilabel":
        return make_single_label_folds(table, k, seed)
    patients, inverse = np.unique(table.patients, return_inverse=True)
    if len(patients) < k:
        raise FoldError(f"{table.source}: {len(patients)} patients cannot fill {k} folds")
    per_patient = np.zeros((len(patients), table.labels.shape[1]), dtype=np.float32)
    np.maximum.at(per_patient, inverse, table.labels)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    patient_fold = np.empty(len(patients), dtype=np.int64)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(patients)), per_patient)):
        patient_fold[val] = fold
    return patient_fold[inverse]


def make_single_label_folds(table: LabelTable, k: int = 5, seed: int = 42) -> np.ndarray:
    """Fold per image for one class per image: scikit-learn's StratifiedGroupKFold, stratified by the class and
    grouped by patient (a file without a patient column: every image its own group, i.e. plain stratified
    K-fold, as seed 000's and seed 003's cross-validation). A class with fewer images (or patients) than k
    cannot be in every fold; the folds are still made, and the log says so."""
    import logging
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    y = np.argmax(table.labels, axis=1)
    groups = np.unique(table.patients, return_inverse=True)[1]
    if groups.max() + 1 < k:
        raise FoldError(f"{table.source}: {groups.max() + 1} patients cannot fill {k} folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(y), -1, dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for f, (_, val) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            fold[val] = f
    for w in caught:
        logging.getLogger(__name__).warning("%s: %s", table.source, w.message)
    if (fold < 0).any() or len(np.unique(fold)) != k:
        raise FoldError(f"{table.source}: could not fill {k} folds from {len(y)} images")
    return fold


def load_or_make_folds(path: str | Path, table: LabelTable, k: int, seed: int) -> np.ndarray:
    """Reuse a run's saved folds (so a resumed or extended run never reshuffles) or make and save them."""
    path = Path(path)
    if path.exists():
        saved = pd.read_csv(path, dtype={"id": str})
        if len(saved) != len(table) or set(saved["id"]) != set(table.ids):
            raise FoldError(
                f"{path} was made for a different image list ({len(saved)} rows vs {len(table)} now); "
                "use a new --out/--name or delete the run directory"
            )
        folds = saved.set_index("id").loc[table.ids, "fold"].to_numpy(dtype=np.int64)
        if folds.max() + 1 != k:
            raise FoldError(f"{path} has {folds.max() + 1} folds but the config asks for {k}")
        return folds
    folds = make_folds(table, k=k, seed=seed)
    atomic.write_csv(path, pd.DataFrame({"id": table.ids, "patient": table.patients, "fold": folds}))
    return folds
