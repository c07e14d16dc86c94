"""train -> predict -> ensemble -> submission, for real, on the demo set and on NIH ChestX-ray (nih1000).

Each run is trained once per session (EfficientNetV2-B0 from scratch, tiny images, few steps)
and shared by the tests below.
"""

from __future__ import annotations

import json
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

from cxrlt.data import classes as cls
from cxrlt.evaluate import align as evaluate
from cxrlt.train import kfold as train
from cxrlt.ensemble.submission import check_file


def test_demo_submission_is_complete_and_in_official_order(demo_run):
    root, _, out = demo_run
    sub = pd.read_csv(out)
    test = pd.read_csv(root / "data" / "test.csv")
    assert list(sub.columns) == ["dicom_id", *cls.CXRLT2023]
    assert sorted(sub.dicom_id) == sorted(test.dicom_id.astype(str))
    values = sub[list(cls.CXRLT2023)].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    with zipfile.ZipFile(out.with_suffix(".zip")) as z:  # the CSV, then the code/ folder (every edition)
        names = z.namelist()
        assert names[0] == "demo.csv" and "code/runs/demo/config.yaml" in names and "code/pip_freeze.txt" in names
        assert all(n.startswith("code/") for n in names[1:])
    assert "OK" in check_file(out, classes=cls.CXRLT2023, expected_ids=test.dicom_id.astype(str).to_numpy())


def test_demo_run_directory_describes_itself(demo_run):
    root, _, _ = demo_run
    run = root / "runs" / "demo"
    for name in ("config.yaml", "folds.csv", "classes.json", "oof.csv", "metrics.json"):
        assert (run / name).is_file(), name
    folds = pd.read_csv(run / "folds.csv")
    assert (folds.groupby("patient").fold.nunique() == 1).all()
    oof = pd.read_csv(run / "oof.csv")
    train_ids = pd.read_csv(root / "data" / "train.csv").dicom_id.astype(str)
    assert sorted(oof.id.astype(str)) == sorted(train_ids)  # every training image exactly once
    for k in (0, 1):
        history = pd.read_csv(run / f"fold{k}" / "history.csv")
        assert list(history.epoch) == [1, 2] and "val_mAP" in history
        assert (run / f"fold{k}" / "model.keras").is_file() and (run / f"fold{k}" / "done.json").is_file()
        assert list((run / f"fold{k}" / "tensorboard").glob("events.out.tfevents.*"))  # scalars + one augmented batch
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["folds"]) >= {"mAP", "mAUC", "mF1"} and 0 <= metrics["oof"]["mAP"] <= 1


def test_from_python_train_returns_the_run_and_bad_input_raises_not_exits(demo_run, tmp_path):
    """The README's "Use from Python": kfold.train(cfg) is the command without the process around it. On the
    finished demo run it resumes (nothing left to train) and returns the Run that the ensembler takes; a missing
    label file raises the LabelFileError the command prints, not SystemExit."""
    from cxrlt import config
    from cxrlt.data.dataset import LabelFileError
    from cxrlt.ensemble import ensembler
    from cxrlt.utils.errors import UserError

    root, _, out = demo_run
    run = train.train(config.load(root / "runs" / "demo" / "config.yaml"))
    assert run.root == root / "runs" / "demo" and run.finished_folds() == [0, 1]
    test, probs = ensembler.ensemble([run], None)  # the run's own test list; the cached fold predictions
    written = pd.read_csv(out, dtype={"dicom_id": str}).set_index("dicom_id")
    np.testing.assert_allclose(probs, written.loc[[str(i) for i in test.ids], list(test.classes)].to_numpy(), atol=1e-6)
    with pytest.raises(LabelFileError, match="missing.csv") as raised:
        train.train(config.load(overrides={"data": {"labels": str(tmp_path / "missing.csv")},
                                           "out": str(tmp_path / "runs")}))
    assert isinstance(raised.value, UserError)


def test_a_fold_killed_mid_epoch_resumes_after_its_last_finished_epoch(demo_run):
    root, _, _ = demo_run
    log = (root / "resume.log").read_text()
    assert "fold 0: resuming after epoch 1 of 2" in log  # the SIGKILLed attempt had finished epoch 1 only
    assert "fold 1: resuming" not in log
    run = root / "runs" / "demo"
    assert list(pd.read_csv(run / "fold0" / "history.csv").epoch) == [1, 2]  # each epoch once, none lost
    assert json.loads((run / "fold0" / "best.json").read_text())["epoch"] in (1, 2)
    assert not (run / "fold0" / "backup").exists()  # resume state is dropped once the fold is done


def test_a_training_cli_prints_no_tensorflow_error_records(demo_run):
    """The first attempt of the demo run (`python -m cxrlt.train`, Mosaic on the host, killed in epoch 2) wrote
    no TensorFlow C++ record to stderr: no `E0000 ... oneDNN supports DT_INT32 only on platforms with AVX-512`
    (the int32 ops of the old host-side Mosaic triggered it, once per process)."""
    root, _, _ = demo_run
    stderr = (root / "first_attempt.stderr").read_text()
    assert "oneDNN" not in stderr and not re.search(r"^[EWF]\d{4} ", stderr, re.M), stderr[-3000:]


def test_a_killed_and_resumed_fold_ends_bit_identical_to_an_uninterrupted_one(demo_run, tmp_path):
    """The product path (python -m cxrlt.train, shuffling, Mosaic and the RAM cache on): fold 0 of demo_run was
    SIGKILLed in epoch 2 and resumed; the same fold trained straight through gives the same bits."""
    from cxrlt.model import models

    root, argv, _ = demo_run
    straight = [*argv, "--out", str(tmp_path / "runs"), "--fold", "0"]  # the later --out and --fold win
    assert train.main(straight) == 0
    resumed, uninterrupted = root / "runs" / "demo" / "fold0", tmp_path / "runs" / "demo" / "fold0"
    assert (resumed / "history.csv").read_bytes() == (uninterrupted / "history.csv").read_bytes()
    assert json.loads((resumed / "best.json").read_text()) == json.loads((uninterrupted / "best.json").read_text())
    a, b = (models.load(d / "model.keras") for d in (resumed, uninterrupted))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_accelerator_mode_killed_after_epoch_1_resumes_bit_identical(tmp_path, caplog):
    """augment.device accelerator on the product path (python -m cxrlt.train: uint8 batches and seeds from
    tf.data, augmentation and Mosaic in the train step). One training serves as both runs: it is paused
    (SIGSTOP) once epoch 1's checkpoint exists, its run directory copied (what a SIGKILL at that moment
    leaves on disk: every file is written atomically), and then let finish uninterrupted; the copy is
    resumed and must end with the same bits. With the README's one-GPU recipe for seed 002's batch 8 (batch 2 x
    train.accumulate 4, refused before issue 28: Mosaic now mixes the update's 8 images), so that the resumed
    stream's offset (epochs x steps x micro-batches) and the mix groups are the product path's too."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from cxrlt.model import models

    from .conftest import REPO

    argv = ["--demo", "--name", "acc", "--epochs", "2", "--fold", "0", "--set", f"data.demo_dir={tmp_path / 'data'}",
            "--set", "data.demo_patients=20", "--set", "augment.device=accelerator", "--backbone", "mobilenetv2",
            "--weights", "none", "--size", "32", "--folds", "2", "--batch-size", "2", "--set", "train.steps_per_epoch=3",
            "--set", "train.accumulate=4", "--set", "predict.batch_size=64", "--set", "train.verbose=0"]
    runs, snapshot, straight = tmp_path / "runs", tmp_path / "snapshot", tmp_path / "straight"
    argv += ["--out", str(runs)]  # the resumed run must sit where it was trained (--out is part of its config)
    first = subprocess.Popen([sys.executable, "-m", "cxrlt.train", *argv], env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 900
        while not (runs / "acc" / "fold0" / "backup" / "checkpoint").exists():
            assert first.poll() is None, f"the run ended early:\n{first.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no epoch-1 checkpoint within 15 minutes"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        shutil.copytree(runs, snapshot)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=900)
    finally:
        first.kill()  # no-op once it has ended
    assert first.returncode == 0, err[-3000:]
    runs.rename(straight)  # the uninterrupted run
    snapshot.rename(runs)  # the killed one, back in its place
    resumed, fold = runs / "acc" / "fold0", straight / "acc" / "fold0"
    assert not (resumed / "done.json").exists() and list(pd.read_csv(resumed / "history.csv").epoch) == [1]
    with caplog.at_level("INFO", logger="cxrlt"):
        assert train.main(argv) == 0
    assert "fold 0: resuming after epoch 1 of 2" in caplog.text
    assert (resumed / "history.csv").read_bytes() == (fold / "history.csv").read_bytes()
    assert json.loads((resumed / "best.json").read_text()) == json.loads((fold / "best.json").read_text())
    a, b = (models.load(d / "model.keras") for d in (resumed, fold))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_eight_cpu_replicas_train_seed002s_batch_of_8_on_the_product_path(tmp_path):
    """distribute.cpu_replicas 8: `python -m cxrlt.train --strategy mirrored` on a CPU trains 8 replicas (a dry
    run of an 8-GPU config), with seed 002's batch 8 (one image per replica, refused before issue 28) and the
    default Mosaic, in accelerator mode: the step gathers the 8 uint8 images and mixes them, each replica
    keeping its own row. It finishes the fold: training, validation and the OOF prediction on 8 replicas."""
    import subprocess
    import sys

    from .conftest import REPO

    argv = ["--demo", "--name", "r8", "--out", str(tmp_path / "runs"), "--set", f"data.demo_dir={tmp_path / 'data'}",
            "--set", "data.demo_patients=20", "--strategy", "mirrored", "--set", "distribute.cpu_replicas=8",
            "--set", "augment.device=accelerator", "--batch-size", "8", "--fold", "0", "--epochs", "1",
            "--set", "train.steps_per_epoch=1", "--backbone", "mobilenetv2", "--weights", "none", "--size", "32",
            "--folds", "2", "--set", "predict.batch_size=64", "--set", "predict.tta=[identity]",
            "--set", "train.verbose=0"]
    done = subprocess.run([sys.executable, "-m", "cxrlt.train", *argv], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 replica(s)" in done.stderr and "mix partners from 8 images per update" in done.stderr
    assert "augmentation and mixing on the accelerator" in done.stderr
    fold = tmp_path / "runs" / "r8" / "fold0"
    assert (fold / "done.json").exists() and list(pd.read_csv(fold / "history.csv").epoch) == [1]


def test_rerun_skips_finished_folds_and_refuses_another_config(demo_run, caplog):
    root, argv, _ = demo_run
    run = root / "runs" / "demo"
    before = (run / "fold0" / "model.keras").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert train.main(argv) == 0
    assert (run / "fold0" / "model.keras").stat().st_mtime_ns == before
    assert "fold 0 already finished" in caplog.text
    with pytest.raises(SystemExit) as exc:
        train.main([*argv, "--lr", "0.5"])
    assert exc.value.code == 2


def test_evaluate_scores_the_submission_against_the_labels(demo_run, tmp_path, capsys):
    root, _, out = demo_run
    assert evaluate.main(["--pred", str(out), "--labels", str(root / "data" / "test.csv"),
                          "--classes", "cxrlt2023", "--json", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads(out.with_suffix(".metrics.json").read_text())
    assert result["mAP"] == pytest.approx(saved["mAP"], abs=1e-3)  # same scores via the CSV (6 decimals)
    assert {"mAP", "mAUC", "mF1", "per_class"} <= set(result)
    broken = tmp_path / "broken.csv"
    pd.read_csv(out).iloc[:-1].to_csv(broken, index=False)
    assert evaluate.main(["--pred", str(broken), "--labels", str(root / "data" / "test.csv"), "--classes", "cxrlt2023"]) == 2
    assert "no prediction" in capsys.readouterr().err


def test_nih_submission_has_every_test_image_once(nih_run):
    root, out = nih_run
    sub = pd.read_csv(out)
    test = pd.read_csv(root / "test.csv")
    nih_classes = [c for c in test.columns if c not in ("path", "patient_id", "study_id", "view")]
    # generic data: the CSV's class order; no id column, so the path column (as written) is the id
    assert list(sub.columns) == ["path", *nih_classes]
    assert sorted(sub.path) == sorted(test.path)
    assert sub[nih_classes].notna().all().all()
    assert len(list((root / "runs" / "nih" / "predictions").rglob("fold*.csv"))) == 2  # cached per fold


def test_missing_data_says_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "PhysioNet" in err and "--demo" in err and "--labels" in err
