"""Shared fixtures. Trained runs are session-scoped: a model build + first fit step costs ~40 s here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NIH1000 = SHARED_DATA / "nih1000"
FULLRES = SHARED_DATA / "cxr_fullres"


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
