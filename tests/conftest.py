"""Shared fixtures. Trained runs are session-scoped: a model build + first fit step costs ~40 s here."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NIH1000 = SHARED_DATA / "nih1000"
FULLRES = SHARED_DATA / "cxr_fullres"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks into the node ids
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n 2 --dist loadgroup` (make test) every test of one trained run goes to one worker,
    so each session fixture (below, and test_single_label.py's) is trained once, not once per worker."""
    for item in items:
        for name in ("demo_run", "nih_run", "single_label_run"):
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
                break


def pytest_collection_finish(session):
    """On an xdist worker under --dist loadgroup, each grouped test's node id must carry its group (xdist's
    side channel to the scheduler); pytest 9.2 broke that silently (pytest-dev/pytest-xdist#1386)."""
    if getattr(session.config.option, "loadgroup", False):
        lost = [item.nodeid for item in session.items
                if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup would not group {lost[0]} (and {len(lost) - 1} more): this "
                                    "pytest / pytest-xdist pair ignores xdist_group marks; install setup.cfg's pins")


def need(path: Path) -> Path:
    """The real-data tests read ../shared/data beside the checkout; fail (not skip) when it is absent."""
    assert path.exists(), f"{path} is missing: the test data lives in ../shared/data beside the checkout"
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def grey_images(tmp_path):
    """Three small images on disk: 8-bit PNG, 8-bit JPEG, RGB PNG."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    p1 = write_png(tmp_path / "img" / "a.png", a)
    p2 = tmp_path / "img" / "b.jpg"
    Image.fromarray(a).save(p2, quality=95)
    p3 = write_png(tmp_path / "img" / "c.png", np.stack([a] * 3, -1))
    return tmp_path, [p1, p2, p3]


# Tiny but real: EfficientNetV2-B0 from scratch at 32 px, 2 folds. Shared by every test that needs a trained run.
TINY = ["--backbone", "efficientnetv2-b0", "--weights", "none", "--size", "32", "--folds", "2",
        "--batch-size", "16", "--set", "predict.batch_size=64", "--set", "train.verbose=0"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """(root, train argv, submission path) of a 2-epoch, 2-fold demo run ensembled into a submission.

    Trained the hard way: the first attempt runs in a subprocess that is killed (SIGKILL) as soon as
    fold 0 has checkpointed epoch 1, i.e. in epoch 2; the same command then resumes it in-process.
    What the resumed run logged is kept in root/resume.log, the first attempt's stderr in
    root/first_attempt.stderr for the tests.
    """
    from cxrlt.ensemble import ensembler as ensemble
    from cxrlt.train import kfold as train

    root = tmp_path_factory.mktemp("demo")
    argv = ["--demo", "--out", str(root / "runs"), "--name", "demo", "--epochs", "2",
            "--set", f"data.demo_dir={root / 'data'}", "--set", "data.demo_patients=120", "--set", "input.cache=true",
            *TINY]
    checkpoint = root / "runs" / "demo" / "fold0" / "backup" / "checkpoint"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "cxrlt.train", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not checkpoint.exists():
        assert first.poll() is None, f"the first attempt ended early:\n{first.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no epoch-1 checkpoint within 15 minutes"
        time.sleep(0.1)
    first.kill()
    (root / "first_attempt.stderr").write_text(first.communicate()[1])  # a CLI's stderr, for test_logs
    handler, logger = logging.FileHandler(root / "resume.log"), logging.getLogger("cxrlt")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert train.main(argv) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
    out = root / "submissions" / "demo.csv"
    assert ensemble.main(["--runs", str(root / "runs" / "demo"), "--out", str(out)]) == 0
    return root, argv, out


@pytest.fixture(scope="session")
def nih_run(tmp_path_factory):
    """nih1000 split by patient into a training list and a held-out test list; (root, submission path)."""
    from cxrlt.ensemble import ensembler as ensemble
    from cxrlt.train import kfold as train

    root = tmp_path_factory.mktemp("nih")
    frame = pd.read_csv(need(NIH1000) / "labels.csv")
    test_patients = frame.patient_id.drop_duplicates().sample(frac=0.2, random_state=0)
    frame[~frame.patient_id.isin(test_patients)].to_csv(root / "train.csv", index=False)
    frame[frame.patient_id.isin(test_patients)].to_csv(root / "test.csv", index=False)
    argv = ["--labels", str(root / "train.csv"), "--image-root", str(NIH1000), "--test-labels", str(root / "test.csv"),
            "--set", f"data.test_image_root={NIH1000}", "--out", str(root / "runs"), "--name", "nih",
            "--epochs", "1", *TINY]
    assert train.main(argv) == 0
    out = root / "nih.csv"
    assert ensemble.main(["--runs", str(root / "runs" / "nih"), "--out", str(out)]) == 0
    return root, out
