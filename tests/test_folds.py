import numpy as np
import pandas as pd
import pytest

from cxrlt.data.dataset import read_labels
from cxrlt.data.folds import FoldError, load_or_make_folds, make_folds

from .conftest import NIH1000, need


def _many_images_per_patient(tmp_path, n_patients=120, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        base = (rng.random(6) < np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.03])).astype(int)
        for i in range(rng.integers(1, 8)):
            rows.append({"path": f"p{p}_{i}.png", "patient_id": p, **{f"c{j}": v for j, v in enumerate(base)}})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "l.csv", index=False)
    return read_labels(tmp_path / "l.csv")


def test_no_patient_in_two_folds_and_every_image_in_one(tmp_path):
    table = _many_images_per_patient(tmp_path)
    folds = make_folds(table, k=5, seed=3)
    assert folds.shape == (len(table),) and set(folds) == set(range(5))
    per_patient = pd.Series(folds).groupby(table.patients).nunique()
    assert (per_patient == 1).all()


def test_stratified_rare_classes_reach_every_fold():
    table = read_labels(need(NIH1000) / "labels.csv")
    folds = make_folds(table, k=5, seed=42)
    assert (pd.Series(folds).groupby(table.patients).nunique() == 1).all()
    # Iterative stratification handles the rarest classes first: each class reaches as many folds
    # as it has patients (Hernia: 9 images of 2 patients -> 2 folds; Pneumonia: 9 patients -> all 5).
    for j, c in enumerate(table.classes):
        positive = table.labels[:, j] == 1
        assert len(set(folds[positive])) == min(5, len(set(table.patients[positive]))), c
    sizes = np.bincount(folds)
    assert sizes.min() > 0.5 * sizes.max()


def test_folds_are_seeded_saved_and_reused(tmp_path):
    table = _many_images_per_patient(tmp_path)
    np.testing.assert_array_equal(make_folds(table, 4, seed=1), make_folds(table, 4, seed=1))
    assert not np.array_equal(make_folds(table, 4, seed=1), make_folds(table, 4, seed=2))
    first = load_or_make_folds(tmp_path / "folds.csv", table, 4, seed=1)
    again = load_or_make_folds(tmp_path / "folds.csv", table, 4, seed=999)  # saved folds win over a new seed
    np.testing.assert_array_equal(first, again)
    with pytest.raises(FoldError, match="4 folds but the config asks for 5"):
        load_or_make_folds(tmp_path / "folds.csv", table, 5, seed=1)


def test_impossible_k_is_refused(tmp_path):
    table = _many_images_per_patient(tmp_path, n_patients=3)
    with pytest.raises(FoldError, match="k >= 2"):
        make_folds(table, k=1)
    with pytest.raises(FoldError, match="3 patients cannot fill 5 folds"):
        make_folds(table, k=5)
