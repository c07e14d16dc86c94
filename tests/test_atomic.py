"""A full disk while writing a checkpoint or a submission leaves the previous good file intact.

Two ways to fail a write, both with real files on disk: ENOSPC injected into the fsync that
cxrlt.atomic does before its rename, and a real kernel refusal in the middle of writing (the
process's file-size limit, RLIMIT_FSIZE: write() fails with EFBIG exactly as it fails with ENOSPC
on a full disk, inside Keras', h5py's, zipfile's or pandas' own write calls).
"""

from __future__ import annotations

import contextlib
import errno
import resource
import signal

import keras
import numpy as np
import pandas as pd
import pytest

from cxrlt.utils import atomic
from cxrlt.data import classes as cls
from cxrlt.model import models
from cxrlt.ensemble.submission import read_submission, write_submission


@pytest.fixture
def enospc_on_fsync(monkeypatch):
    calls = []

    def full(fd):
        calls.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    return calls


@contextlib.contextmanager
def file_size_limit(n_bytes: int):
    """Writes that would grow any file past n_bytes fail with EFBIG (SIGXFSZ ignored, as a full disk)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def _model(seed: int, units: int = 600) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((units,))
    return keras.Model(inputs, keras.layers.Dense(units, activation="sigmoid", name="probabilities")(inputs))


def test_text_csv_and_json_writes_keep_the_old_file_on_enospc(tmp_path, enospc_on_fsync):
    for name, write in [("a.txt", lambda p: atomic.write_text(p, "new")),
                        ("b.json", lambda p: atomic.write_json(p, {"new": 1})),
                        ("c.csv", lambda p: atomic.write_csv(p, pd.DataFrame({"new": [1]})))]:
        (tmp_path / name).write_text("old good content")
        with pytest.raises(atomic.DiskFullError, match=f"no space left writing .*{name}.*previous file is intact"):
            write(tmp_path / name)
        assert (tmp_path / name).read_text() == "old good content"
    assert len(enospc_on_fsync) == 3
    assert _files(tmp_path) == ["a.txt", "b.json", "c.csv"]  # no temporary files left


def test_checkpoint_save_keeps_the_previous_model_on_enospc(tmp_path, monkeypatch):
    good, newer = _model(1, units=8), _model(2, units=8)
    models.save(good, tmp_path / "model.keras")
    before = (tmp_path / "model.keras").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(atomic.DiskFullError):
        models.save(newer, tmp_path / "model.keras")
    monkeypatch.undo()
    assert (tmp_path / "model.keras").read_bytes() == before
    assert _files(tmp_path) == ["model.keras"]
    x = np.ones((1, 8), "float32")
    np.testing.assert_allclose(models.load(tmp_path / "model.keras").predict(x, verbose=0),
                               good.predict(x, verbose=0), rtol=1e-6)


def test_checkpoint_save_keeps_the_previous_model_when_a_write_fails_midway(tmp_path):
    good, newer = _model(1), _model(2)  # 600 x 600 floats: a ~1.4 MB weights file
    models.save(good, tmp_path / "model.keras")
    before = (tmp_path / "model.keras").read_bytes()
    assert len(before) > 1_000_000
    with file_size_limit(300_000), pytest.raises(atomic.DiskFullError, match="model.keras \\(File too large\\)"):
        models.save(newer, tmp_path / "model.keras")  # fails inside Keras' own zip writing
    assert (tmp_path / "model.keras").read_bytes() == before
    assert _files(tmp_path) == ["model.keras"]
    models.load(tmp_path / "model.keras", num_classes=600)  # still a whole, loadable model


def test_submission_keeps_the_previous_csv_and_zip_when_the_disk_fills(tmp_path):
    classes = list(cls.CXRLT2023)
    ids = [f"d{i:05d}" for i in range(3000)]
    rng = np.random.default_rng(0)
    csv, zipped = write_submission(tmp_path / "sub.csv", ids, rng.random((3000, 26)), classes=classes,
                                   expected_ids=ids)
    before = csv.read_bytes(), zipped.read_bytes()
    with file_size_limit(len(before[0]) // 3), pytest.raises(atomic.DiskFullError, match="sub.csv"):
        write_submission(csv, ids, rng.random((3000, 26)), classes=classes, expected_ids=ids)
    assert (csv.read_bytes(), zipped.read_bytes()) == before
    assert _files(tmp_path) == ["sub.csv", "sub.zip"]
    got_ids, _ = read_submission(csv, classes=classes)
    assert list(got_ids) == ids


def test_submission_csv_and_zip_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """A full disk while zipping (after the new CSV is written) must not leave a new CSV beside an old zip."""
    import zipfile

    classes = list(cls.CXRLT2023)
    ids = [f"d{i:05d}" for i in range(50)]
    rng = np.random.default_rng(1)
    csv, zipped = write_submission(tmp_path / "sub.csv", ids, rng.random((50, 26)), classes=classes)
    before = csv.read_bytes(), zipped.read_bytes()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    with pytest.raises(atomic.DiskFullError, match="previous file is intact"):
        write_submission(csv, ids, rng.random((50, 26)), classes=classes)
    assert (csv.read_bytes(), zipped.read_bytes()) == before
    assert _files(tmp_path) == ["sub.csv", "sub.zip"]
    monkeypatch.undo()
    csv, zipped = write_submission(csv, ids, rng.random((50, 26)), classes=classes)
    with zipfile.ZipFile(zipped) as archive:
        assert archive.read("sub.csv") == csv.read_bytes() != before[0]
