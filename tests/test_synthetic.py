import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrlt.data import classes as cls
from cxrlt.data.synthetic import make_demo

C = list(cls.CXRLT2023)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), n_patients=250, image_size=64, seed=0)


def test_layout_matches_cxrlt_2023(demo):
    for csv in (demo.train_csv, demo.test_csv):
        frame = pd.read_csv(csv)
        assert list(frame.columns) == ["dicom_id", "study_id", "ViewPosition", "path", *C]
        assert frame.path.str.fullmatch(r"files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f-]{44}\.jpg").all()
        assert set(np.unique(frame[C].to_numpy())) <= {0, 1}
        assert (frame[frame["No Finding"] == 1][C].sum(axis=1) == 1).all()  # No Finding is exclusive
        assert (frame.groupby("study_id")[C].nunique() == 1).all().all()  # a study's images share labels


def test_split_by_patient_and_long_tail(demo):
    train, test = pd.read_csv(demo.train_csv), pd.read_csv(demo.test_csv)
    patient = lambda f: set(f.path.str.extract(r"/p(\d{8})/")[0])  # noqa: E731
    assert not patient(train) & patient(test)
    counts = train[C].sum()
    rho = spearmanr(counts.to_numpy(), [cls.CXRLT2023_TRAIN_COUNTS[c] for c in C]).statistic
    assert rho > 0.8
    assert counts.idxmax() in ("Support Devices", "Lung Opacity", "Cardiomegaly")
    assert counts.min() >= 8 and test[C].sum().min() >= 1


def test_deterministic_and_reused(demo, tmp_path):
    again = make_demo(tmp_path / "again", n_patients=250, image_size=64, seed=0)
    assert again.train_csv.read_bytes() == demo.train_csv.read_bytes()
    first = pd.read_csv(demo.train_csv).path[0]
    assert (again.root / first).read_bytes() == (demo.root / first).read_bytes()
    stamp = again.train_csv.stat().st_mtime_ns
    make_demo(tmp_path / "again", n_patients=250, image_size=64, seed=0)
    assert again.train_csv.stat().st_mtime_ns == stamp  # complete set reused, not rewritten


def test_images_are_grey_and_findings_learnable(demo):
    def load(csv):
        frame = pd.read_csv(csv)
        x = np.stack([np.asarray(Image.open(demo.root / p)) for p in frame.path]).astype(np.float32) / 255
        return x, frame[C].to_numpy()

    (xtr, ytr), (xte, yte) = load(demo.train_csv), load(demo.test_csv)
    assert xtr.shape[1:] == (64, 64)  # 8-bit grey
    small = lambda x: x.reshape(len(x), 32, 2, 32, 2).mean(axis=(2, 4)).reshape(len(x), -1)  # noqa: E731
    aucs = []
    for j in range(len(C)):
        if ytr[:, j].min() == ytr[:, j].max() or yte[:, j].min() == yte[:, j].max():
            continue
        probe = LogisticRegression(C=0.05, max_iter=300).fit(small(xtr), ytr[:, j])
        aucs.append(roc_auc_score(yte[:, j], probe.predict_proba(small(xte))[:, 1]))
    assert len(aucs) >= 20 and np.mean(aucs) > 0.7, np.mean(aucs)
