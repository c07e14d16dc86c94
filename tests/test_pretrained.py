"""python -m cxrlt weights: fails at once without internet; a weights folder it writes is checked at
--weights time (another backbone's file refused naming both) and loads into the right backbone."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cxrlt.model import models, pretrained

from .conftest import REPO


def test_without_internet_the_command_stops_with_what_to_do(tmp_path):
    """A fresh process whose Keras cache is empty and whose HTTP(S) goes to a closed local port: offline on any
    machine (the sandbox has no network anyway)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_HOME": str(tmp_path / "keras"), "TF_CPP_MIN_LOG_LEVEL": "3",
           **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}}
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    done = subprocess.run([sys.executable, "-m", "cxrlt", "weights", "--backbone", "efficientnetv2-b0",
                           "--out", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: could not download the ImageNet weights of efficientnetv2-b0" in done.stderr
    assert "needs internet" in done.stderr and "--weights" in done.stderr
    assert not (tmp_path / "w" / "efficientnetv2-b0.weights.h5").exists()


def test_a_weights_folder_loads_into_its_backbone_and_refuses_another(tmp_path):
    donor = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    for w in donor.weights[:5]:  # not the fresh initialisation a new build would have anyway
        w.assign(rng.normal(size=w.shape).astype(w.dtype))
    path = pretrained.save_backbone_weights(donor, "efficientnetv2-b0", tmp_path / "w")
    assert path.name == "efficientnetv2-b0.weights.h5" and (tmp_path / "w" / "efficientnetv2-b0.json").is_file()
    with pytest.raises(models.WeightsError, match=r"weights for the efficientnetv2-b0 backbone .* model.backbone is "
                                                  r"efficientnetv2-b1"):
        models.build("efficientnetv2-b1", 3, 32, weights=str(path))
    with pytest.raises(models.WeightsError, match=r"no convnext-tiny.weights.h5 \(it holds: efficientnetv2-b0"):
        models.build("convnext-tiny", 3, 32, weights=str(tmp_path / "w"))
    built = models.build("efficientnetv2-b0", 3, 32, weights=str(tmp_path / "w"))  # the folder form
    loaded = {w.path: w.numpy() for w in built.model.weights}
    for w in donor.weights:
        np.testing.assert_array_equal(loaded[w.path], w.numpy())
