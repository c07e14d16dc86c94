"""Learned study fusion (CheXFusion stage 2, python -m cxrlt.fuse): the model's key-padding mask, study stacks,
and a fused run of the session demo run that trains on every fold, is OOF-scored and is ensembled like any run."""

import json
import os
import shutil
import logging

import numpy as np
import pandas as pd
import pytest

from cxrlt.config import ConfigError
from cxrlt.data import classes as cls
from cxrlt.ensemble import ensembler as ensemble, submission
from cxrlt.predict import fusion
from cxrlt.runtime import runs
from cxrlt.train import fuse

# Tiny fusion settings (the defaults are CheXFusion's 768-d, 8 heads, FFN 2048).
TINY = ["--set", "fuse.dim=16", "--set", "fuse.heads=2", "--set", "fuse.ffn_dim=32", "--set", "fuse.batch_size=8"]


def test_key_padding_mask_makes_a_study_independent_of_its_empty_slots(tmp_path):
    from cxrlt.model import fusion as fusion_model, models

    built = fusion_model.build(5, (3, 3, 8), max_images=3, dim=16, layers=2, num_heads=2, ffn_dim=32)
    model = built.model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 3, 8)).astype("float32")
    valid = np.array([[1, 0, 0], [1, 1, 0]], "float32")  # study 0: one image, study 1: two
    views = np.array([[0, 1, 2], [2, 0, 3]], "int32")
    out = model([x, valid, views]).numpy()

    junk, junk_views = x.copy(), views.copy()
    junk[0, 1:] = 1e3 * rng.normal(size=junk[0, 1:].shape)
    junk[1, 2] = -55.0
    junk_views[0, 1:], junk_views[1, 2] = 3, 1
    layer = model.get_layer("logits")
    layer.padding_token.assign(rng.normal(size=16).astype("float32") * 10)  # what an empty slot's tokens hold
    np.testing.assert_allclose(model([junk, valid, junk_views]).numpy(), out, atol=1e-5)

    # The same study in a model with 2 slots (same weights) scores the same: the slot count is masked out too.
    small = fusion_model.build(5, (3, 3, 8), max_images=2, dim=16, layers=2, num_heads=2, ffn_dim=32).model
    small.set_weights(model.get_weights())
    np.testing.assert_allclose(small([x[:, :2], valid[:, :2], views[:, :2]]).numpy(), out, atol=1e-5)
    # The order of a study's images does not matter (no slot embedding).
    swap = [1, 0, 2]
    np.testing.assert_allclose(model([x[:, swap], valid[:, swap], views[:, swap]]).numpy(), out, atol=1e-5)

    # ... while what is in a real image slot does: the mask is what hides the empty ones.
    unmasked = model([junk, np.ones_like(valid), junk_views]).numpy()
    assert np.abs(unmasked[0] - out[0]).max() > 1e-3 and np.abs(unmasked[1] - out[1]).max() > 1e-3
    changed = x.copy()
    changed[0, 0] += 1.0
    assert np.abs(model([changed, valid, views]).numpy()[0] - out[0]).max() > 1e-4

    # A fused fold model round-trips through cxrlt's checked loader (the allow-list knows StudyFusion).
    models.save(model, tmp_path / "model.keras")
    np.testing.assert_allclose(models.load(tmp_path / "model.keras", num_classes=5)([x, valid, views]).numpy(), out,
                               atol=1e-6)


def test_study_stacks_split_big_studies_and_give_every_image_its_study_score():
    studies = np.array(["a", "b", "a", "a", "c", "a", "a", "a", "b"])
    views = np.array(["LATERAL", "PA", "PA", "AP", "", "LL", "PA", "weird", "AP"])
    ids = np.array([f"i{n}" for n in range(9)])
    stacks = fusion.study_stacks(studies, views, ids, max_images=4)
    assert stacks.slots.shape == (4, 4)  # study a (6 images): 2 chunks of 3; b and c: one each
    used = stacks.slots[stacks.slots >= 0]
    assert sorted(used.tolist()) == list(range(9))  # every image in exactly one slot
    for m, row in enumerate(stacks.slots):
        assert len({studies[i] for i in row[row >= 0]}) == 1 and (row >= 0).sum() >= 1
        assert studies[row[0]] == ["a", "b", "c"][stacks.owner[m]]
    a_chunks = stacks.slots[stacks.owner == 0]
    assert sorted((a_chunks >= 0).sum(axis=1).tolist()) == [3, 3]
    assert stacks.views[0, 0] == 0 and fusion.view_ids(["pa", "AP", "Lateral", "LL", "", "oblique"]).tolist() == \
        [0, 1, 2, 2, 3, 3]
    stack_scores = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    per_image = fusion.to_images(stack_scores, stacks)
    a_mean = stack_scores[stacks.owner == 0].mean()
    np.testing.assert_allclose(per_image[studies == "a"], a_mean)
    assert per_image[1, 0] == per_image[8, 0] == stack_scores[stacks.owner == 1][0, 0]
    # Mapping a subset's stacks onto rows of a bigger feature file keeps empty slots empty.
    mapped = stacks.rows(np.arange(100, 109))
    assert ((mapped.slots >= 0) == (stacks.slots >= 0)).all() and mapped.slots[mapped.slots >= 0].min() == 100


def test_fused_run_trains_every_fold_is_oof_scored_and_ensembles(demo_run, tmp_path, caplog, capsys):
    root, _, _ = demo_run
    source = root / "runs" / "demo"
    argv = ["--run", str(source), "--out", str(tmp_path), "--name", "fused", "--epochs", "2",
            "--set", "predict.tta=[identity]", *TINY]
    assert fuse.main(argv) == 0
    printed = capsys.readouterr().out
    run = runs.Run(tmp_path / "fused")
    assert run.is_fused and run.finished_folds() == [0, 1]
    folds = pd.read_csv(run.folds_csv, dtype={"id": str})
    assert folds.equals(pd.read_csv(source / "folds.csv", dtype={"id": str}))  # the source's folds
    table, oof = runs.oof_with_labels(run)  # covers every training image exactly once, in the label list
    assert sorted(table.ids) == sorted(folds["id"]) and np.isfinite(oof).all() and (0 <= oof).all() and (oof <= 1).all()
    frame = pd.DataFrame(oof).assign(study=table.studies)
    assert (frame.groupby("study").nunique() == 1).all().all()  # one score per study
    assert any(n > 1 for n in pd.Series(table.studies).value_counts())  # ... and the demo has multi-image studies
    for k in (0, 1):
        done = json.loads(run.done_path(k).read_text())
        assert done["source_model_sha256"] == fusion.file_sha256(runs.Run(source).model_path(k))
        assert not (run.fold_dir(k) / "features").exists()  # a finished fold's feature cache is gone
        val = folds[folds["fold"] == k]["id"]
        assert set(pd.read_csv(run.fold_dir(k) / "oof.csv", dtype={"id": str})["id"]) == set(val)
    fused_map = json.loads(run.metrics_json.read_text())["oof"]["mAP"]
    source_map = json.loads((source / "metrics.json").read_text())["oof"]["mAP"]
    assert f"OOF mAP {fused_map:.4f}" in printed and f"OOF mAP {source_map:.4f}" in printed
    print(f"demo OOF mAP: source {source_map:.4f}, fused {fused_map:.4f}")

    with caplog.at_level(logging.INFO, logger="cxrlt"):  # a rerun skips the finished folds
        assert fuse.main(argv) == 0
    assert "fold 0 already fused; skipping" in caplog.text and "fold 1 already fused; skipping" in caplog.text
    with pytest.raises(ConfigError, match="fuse.dim: 16 -> 32"):
        fuse.fuse(source, out=tmp_path, name="fused", overrides={**dict(s.split("=") for s in TINY[1::2]),
                                                                  "fuse.dim": "32", "fuse.epochs": "2",
                                                                  "predict.tta": "[identity]"})
    with pytest.raises(runs.RunError, match="not the model fold 0"):
        fusion.source_extractor(run, 0, sha256="0" * 64)
    # ... and as a user meets it: the source's fold-0 model replaced (here by its fold-1 model) after fusing
    model0 = runs.Run(source).model_path(0)
    original, stat = model0.read_bytes(), model0.stat()
    try:
        shutil.copy(runs.Run(source).model_path(1), model0)
        with pytest.raises(runs.RunError, match="not the model fold 0"):
            fusion.source_extractor(run, 0)  # the sha256 recorded in fold 0's done.json
    finally:
        model0.write_bytes(original)  # demo_run is shared by other tests (its prediction caches key on the mtime)
        os.utime(model0, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ConfigError, match="source run's settings"):
        fuse.fuse(source, out=tmp_path, name="other", overrides={"model.dropout": "0.5"})

    out = tmp_path / "sub" / "fused.csv"  # the ensembler takes the fused run (test images through its study heads)
    assert ensemble.main(["--runs", str(run.root), "--out", str(out)]) == 0
    test = pd.read_csv(root / "data" / "test.csv", dtype={"dicom_id": str})
    assert submission.check_file(out, classes=cls.CXRLT2023, expected_ids=test["dicom_id"].to_numpy()).startswith("OK")
    sub = pd.read_csv(out, dtype={"dicom_id": str}).set_index("dicom_id").loc[test["dicom_id"]]
    assert (sub.assign(study=test["study_id"].to_numpy()).groupby("study").nunique() == 1).all().all()
    both = tmp_path / "sub" / "both.csv"  # with its source: shared folds, so OOF-fitted weights work
    assert ensemble.main(["--runs", str(source), str(run.root), "--fit-weights", "--out", str(both)]) == 0
    assert "fitted weights" in capsys.readouterr().out
