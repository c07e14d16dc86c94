"""tf.distribute for real on CPU: MirroredStrategy over two logical devices, MultiWorkerMirroredStrategy
over two worker processes on 127.0.0.1, mixed_bfloat16. Each runs in fresh processes (the device
layout and the cluster must be set before TensorFlow's first op)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlt.train import distribute

from .conftest import REPO, TINY

WORKER = Path(__file__).with_name("distributed_worker.py")


def _run_worker(mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(WORKER), mode], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_over_two_cpus_matches_one_device():
    result = _run_worker("mirrored")
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["mirrored_losses"], result["one_device_losses"], rtol=1e-4)
    # the two steps moved the weights, and both strategies moved them the same way
    assert result["max_weight_change"] > 1e-3
    assert result["max_weight_difference"] < 1e-3 * result["max_weight_change"]
    assert "multiple of the 2 replicas" in result["odd_batch_error"]


def test_jit_compiled_steps_train_on_one_device_and_under_mirrored_strategy():
    """--jit-compile failed at the first step (next(iterator) inside the compiled function); now the forward
    and backward pass compile and train like the plain step, k = 2 steps per call."""
    result = _run_worker("jit")
    for name in ("one", "mirrored"):
        plain, xla = result[f"{name}_plain"], result[f"{name}_xla"]
        assert xla["steps"] == plain["steps"] == 2
        np.testing.assert_allclose(xla["loss"], plain["loss"], rtol=1e-4)
        np.testing.assert_allclose(xla["weights"], plain["weights"], rtol=1e-4)
    assert result["mirrored_xla"]["replicas"] == 2


def test_the_masked_mean_is_over_the_global_batch_under_mirrored_strategy():
    result = _run_worker("masked")
    assert result["mirrored"]["replicas"] == 2
    np.testing.assert_allclose(result["mirrored"]["loss"], result["one"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(result["mirrored"]["weights"], result["one"]["weights"], rtol=1e-5)


def test_validation_spread_over_two_replicas_scores_as_one_device():
    """Each replica predicts its share of the 37 validation images (uneven: one replica idles in the last
    group); the gathered scores are in list order and equal one device's, before and after a training
    epoch, with and without TTA, and the epoch's val_mAP is the same."""
    result = _run_worker("validation")
    one, two = result["one"], result["mirrored"]
    assert one["replicas"] == 1 and two["replicas"] == 2
    for key in ("before", "tta", "after"):
        assert np.asarray(two[key]).shape == (37, 5)
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6)
    assert np.ptp(np.asarray(one["before"]), axis=0).min() > 1e-4  # rows differ: an order mix-up would show
    assert np.abs(np.asarray(one["after"]) - np.asarray(one["before"])).max() > 1e-3  # the epoch trained
    np.testing.assert_allclose(two["val_mAP"], one["val_mAP"], rtol=1e-6)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)


def test_mixed_bfloat16_training_with_focal_loss_and_mixers_stays_finite():
    result = _run_worker("bfloat16")
    assert result["policy"] == "mixed_bfloat16" and result["conv_compute_dtype"] == "bfloat16"
    assert result["logits_dtype"] == "float32"  # the head and the loss stay float32
    assert all(np.isfinite(result["losses"])) and result["logits_finite"]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_processes_train_together_and_only_the_chief_writes(tmp_path):
    from cxrlt.data.synthetic import make_demo

    make_demo(tmp_path / "data", n_patients=40, image_size=64)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    argv = ["--demo", "--set", f"data.demo_dir={tmp_path / 'data'}", "--set", "data.demo_patients=40",
            "--set", "data.demo_image_size=64", "--out", str(tmp_path / "runs"), "--name", "mw", "--epochs", "1",
            *TINY, "--batch-size", "8", "--fold", "0", "--set", "train.steps_per_epoch=2", "--strategy", "multiworker"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(tf_config)}
        procs.append(subprocess.Popen([sys.executable, "-m", "cxrlt.train", *argv], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for log in logs:
        assert "2 replica(s)" in log and "MultiWorkerMirroredStrategy" in log
    assert logs[0].count("epoch 1 state saved") == 1 and "state saved" not in logs[1]
    run = tmp_path / "runs" / "mw"
    assert (run / "fold0" / "done.json").is_file()  # the chief finished the fold: OOF, metrics, model
    assert list(pd.read_csv(run / "fold0" / "history.csv").epoch) == [1]
    assert sorted(p.name for p in run.rglob("*.keras")) == ["model.keras"]
    assert not [p for p in run.rglob(".backup-*")]  # the worker's scratch checkpoint was removed


def test_strategy_names_and_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.resolve_name("auto") == "one"  # no GPU, no cluster
    with pytest.raises(distribute.DistributeError, match="needs TF_CONFIG"):
        distribute.get_strategy("multiworker")
    with pytest.raises(distribute.DistributeError, match="must be one of"):
        distribute.resolve_name("horovod")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    assert distribute.tf_config_workers() == 2 and distribute.resolve_name("auto") == "multiworker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(distribute.DistributeError, match="not valid JSON"):
        distribute.tf_config_workers()


def test_learning_rate_scaling_rules():
    from cxrlt.config import ConfigError
    from cxrlt.model.optim import scaled_lr

    assert scaled_lr(1e-4, "none", 64, 8) == 1e-4
    assert scaled_lr(1e-4, "linear", 64, 8) == pytest.approx(8e-4)
    assert scaled_lr(1e-4, "sqrt", 32, 8) == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        scaled_lr(1e-4, "cubic", 64, 8)
