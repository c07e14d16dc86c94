"""--init (model.init): a run starts from another run's fold model; the backbone is copied whole, the head only
for classes matched by name; fold k takes fold k of a run with the same folds, else one named model."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrlt.config import ConfigError
from cxrlt.model import models, transfer
from cxrlt.runtime import runs
from cxrlt.train import init_from

SIZE = 32


def _run_dir(root, classes, folds):
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    pd.DataFrame({"id": [f"i{n}" for n in range(len(folds))], "patient": range(len(folds)), "fold": folds}).to_csv(
        root / "folds.csv", index=False)
    return runs.Run(root)


def test_a_source_with_classes_abc_initialises_a_target_with_cad(tmp_path, caplog):
    source_run = _run_dir(tmp_path / "src", ["A", "B", "C"], [0, 1, 0, 1])
    source = models.build("efficientnetv2-b0", 3, SIZE, weights="none").model
    for k in (0, 1):
        source_run.fold_dir(k).mkdir()
    models.save(source, source_run.model_path(1))
    shutil.copy(source_run.model_path(1), source_run.model_path(0))
    target_run = _run_dir(tmp_path / "dst", ["C", "A", "D"], [0, 1, 0, 1])

    target = models.build("efficientnetv2-b0", 3, SIZE, weights="none").model
    fresh_kernel = target.get_layer("logits").kernel.numpy().copy()
    fresh_bias = target.get_layer("logits").bias.numpy().copy()
    assert np.abs(source.get_layer("stem_conv").kernel.numpy() - target.get_layer("stem_conv").kernel.numpy()).max() > 0
    with caplog.at_level(logging.INFO, logger="cxrlt"):
        report = init_from.initialise(str(source_run.root), target_run, 1, target, ["C", "A", "D"])
    for (_, a), (_, b) in zip(transfer._body(source), transfer._body(target)):  # the whole backbone (BN stats too)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # ... checked without the code's own walk too: every weight outside the head, by its path (BN statistics included)
    theirs = {w.path: w.numpy() for w in source.weights if not w.path.startswith("logits")}
    ours = {w.path: w.numpy() for w in target.weights if not w.path.startswith("logits")}
    assert len(ours) > 300 and ours.keys() == theirs.keys() and report.backbone_tensors >= len(ours) - 5
    for path, value in theirs.items():
        np.testing.assert_array_equal(ours[path], value, err_msg=path)
    kernel_s, kernel_t = source.get_layer("logits").kernel.numpy(), target.get_layer("logits").kernel.numpy()
    np.testing.assert_array_equal(kernel_t[:, 0], kernel_s[:, 2])  # C
    np.testing.assert_array_equal(kernel_t[:, 1], kernel_s[:, 0])  # A
    np.testing.assert_array_equal(kernel_t[:, 2], fresh_kernel[:, 2])  # D: fresh
    np.testing.assert_array_equal(target.get_layer("logits").bias.numpy()[2], fresh_bias[2])
    assert (report.copied, report.fresh, report.unused) == (["C", "A"], ["D"], ["B"])
    text = caplog.text
    assert "head loaded for 2 class(es): C, A" in text and "fresh head for 1 new class(es): D" in text
    assert "not in this run (dropped): B" in text and str(source_run.model_path(1)) in text

    # other folds: fold k cannot start from fold k; the error names the way out
    other = _run_dir(tmp_path / "other", ["C", "A", "D"], [1, 0, 0, 1])
    with pytest.raises(ConfigError, match=r"folds.csv differs.*--init .*fold0/model.keras"):
        init_from.resolve(str(source_run.root), other, 0)
    # one named model: its run's classes.json names its classes; its training images in fold k are counted
    path, classes = init_from.resolve(str(source_run.model_path(0)), other, 0)
    assert classes == ["A", "B", "C"] and init_from.leaked(path, other, 0) == 1  # i1 trains fold 0's model
    # a bare .keras file: backbone only, the whole head fresh, and the log says why
    bare = tmp_path / "bare" / "m.keras"
    bare.parent.mkdir()
    shutil.copy(source_run.model_path(0), bare)
    assert init_from.resolve(str(bare), other, 0) == (bare, None)
    report = transfer.transfer(source, target, ["C", "A", "D"], None)
    assert report.fresh == ["C", "A", "D"] and "class names are unknown" in " ".join(report.lines())
    # another backbone is refused, naming the first tensor that differs
    with pytest.raises(transfer.InitError, match="another backbone.*first difference"):
        transfer.transfer(_tiny(), target, ["C", "A", "D"], ["A", "B", "C"])

def _tiny():
    """A model with another 'backbone' (one conv) and the same head name."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
