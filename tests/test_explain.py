"""Grad-CAM on the two backbone families, checked against the closed form it has for a GAP + dense head."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from cxrlt.report import explain
from cxrlt.model import models
from cxrlt.data import pipeline

from .conftest import FULLRES, need

SIZE = 96  # backbones downsample by 32: a 3 x 3 feature map, enough for the maps to differ in space


@pytest.fixture(scope="module")
def radiograph():
    path = need(FULLRES) / "images" / "ARDSSevere.png"
    return pipeline.decode_image(tf.constant(str(path)), SIZE)[None].numpy()


@pytest.mark.parametrize("backbone", ["efficientnetv2-b0", "convnext-tiny"])
def test_gradcam_is_class_specific_and_equals_cam(backbone, radiograph):
    model = models.build(backbone, 4, SIZE, weights="none").model
    dense = model.get_layer("logits")
    kernel, bias = (np.array(w) for w in dense.get_weights())
    kernel[:, 1] = -kernel[:, 0]  # class 1 scores the exact opposite evidence of class 0
    dense.set_weights([kernel, bias])

    maps = explain.gradcam(model, radiograph, [0, 1])
    assert maps.shape == (2, 1, SIZE, SIZE)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert not np.allclose(maps[0], maps[1], atol=0.05)

    # Through GAP and a dense layer the gradient of logit c w.r.t. channel k is W[k, c] / (h * w) at every
    # position, so Grad-CAM must equal CAM (Zhou et al. 2016): ReLU(features @ W[:, c]), resized, / max.
    layer = explain.feature_layer(model)
    if backbone.startswith("efficientnet"):
        assert layer.name == "top_activation"
    else:  # Keras 3.15's ConvNeXt(include_top=False) ends in an auto-named LayerNormalization, not a block output
        assert isinstance(layer, tf.keras.layers.LayerNormalization)
    features = tf.keras.Model(model.inputs, layer.output)(radiograph)
    assert features.shape[1:3] == (3, 3)
    for c in (0, 1):
        cam = tf.nn.relu(tf.tensordot(features, kernel[:, c], axes=1))[..., None]
        cam = tf.image.resize(cam, (SIZE, SIZE), method="bilinear")[..., 0].numpy()
        cam = cam / cam.max() if cam.max() > 0 else cam
        np.testing.assert_allclose(maps[c], cam, atol=2e-4)
    assert maps.max() == pytest.approx(1.0)  # opposite weights: at least one of the two maps has evidence


def test_explain_command_on_the_demo_run(demo_run, tmp_path, caplog):
    root, _, _ = demo_run
    run_dir = root / "runs" / "demo"
    image = next((root / "data").rglob("*.jpg"))
    out = tmp_path / "explain"
    with caplog.at_level(logging.INFO, logger="cxrlt.explain"):
        assert explain.main(["--run", str(run_dir), "--image", str(image), "--class", "nodule", "Pleural Effusion",
                             "--out", str(out)]) == 0
    info = json.loads((out / f"{image.stem}_gradcam.json").read_text())
    assert info["classes"] == ["Nodule", "Pleural Effusion"] and info["folds"] == [0, 1]
    assert info["layer"] == "top_activation" and info["feature_map"] == [1, 1]  # the fixture trains at 32 px
    assert "cannot localise" in caplog.text
    assert all(0.0 < p < 1.0 for p in info["probabilities"].values()) and len(info["probabilities"]) == 26
    maps = np.load(out / f"{image.stem}_maps.npz")["maps"]
    assert maps.shape == (2, 32, 32) and maps.min() >= 0.0 and maps.max() <= 1.0
    for name in info["files"]:
        assert (out / name).stat().st_size > 0
    assert {f"{image.stem}_nodule.png", f"{image.stem}_pleural_effusion.png", f"{image.stem}_gradcam.png"} <= set(info["files"])


def test_explain_names_a_misspelt_finding(demo_run, tmp_path, capsys):
    root, _, _ = demo_run
    image = next((root / "data").rglob("*.jpg"))
    with pytest.raises(SystemExit) as exit_info:
        explain.main(["--run", str(root / "runs" / "demo"), "--image", str(image), "--class", "Nodul",
                      "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "did you mean ['Nodule']" in capsys.readouterr().err
