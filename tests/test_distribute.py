"""tf.distribute for real on CPU: MirroredStrategy over two logical devices, MultiWorkerMirroredStrategy
over two worker processes on 127.0.0.1, mixed_bfloat16. Each runs in fresh processes (the device
layout and the cluster must be set before TensorFlow's first op)."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlt.runtime import distribute

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


@functools.lru_cache(maxsize=None)
def _accel_result() -> dict:
    return _run_worker("accel")  # one process for the two tests below


def test_synchronized_batchnorm_under_mirrored_strategy_sees_the_global_batch():
    """model.sync_batchnorm: after one step on 2 replicas whose halves differ, the BN moving statistics equal one
    device's on the whole batch; without sync they differ. XLA is refused with the fix; build() syncs every BN."""
    result = _accel_result()
    one, synced, plain = result["one"], result["mirrored_sync"], result["mirrored_plain"]
    for key in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(synced[key], one[key], rtol=1e-5, atol=1e-7)
        assert np.max(np.abs(np.subtract(plain[key], one[key]))) > 1e-3
    assert "turn off distribute.jit_compile" in result["sync_xla_error"]
    assert result["build_bn_layers"] > 10 and result["build_bn_synced"] == result["build_bn_layers"]


def test_accumulated_steps_under_mirrored_strategy_train_like_one_device_on_the_whole_update():
    """train.accumulate 2 on 2 replicas (micro-batches of 8 = 4 per replica, uneven label masks) makes the update
    one device makes from a batch of 16: the same loss (the masked mean of the update) and weights."""
    result = _accel_result()
    one, mirrored = result["accumulate_one"], result["accumulate_mirrored"]
    assert mirrored["replicas"] == 2 and mirrored["updates"] == one["updates"] == 1
    np.testing.assert_allclose(mirrored["loss"], one["loss"], rtol=1e-5)
    for a, b in zip(one["weights"], mirrored["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_per_part_rates_clipping_head_warm_up_and_ema_warm_up_under_mirrored_strategy_equal_one_device():
    """The 2026 winner's training knobs on 2 replicas whose halves of the batch differ: per-part rates and decays,
    clip_norm (always clipping: the norm is taken after the cross-replica sum), a head warm-up epoch with its own
    optimizer, the EMA with timm's warm-up; the same weights and averages as one device. Keras' own
    global_clipnorm, for contrast, clips each replica's share before the sum and trains differently on 2."""
    result = _run_worker("parts")
    one, two = result["one"], result["mirrored"]
    assert two["replicas"] == 2 and one["updates"] == two["updates"] == 2
    assert one["warmup_updates"] == two["warmup_updates"] == 2
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for key in ("weights", "ema"):
        for a, b in zip(one[key], two[key]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    keras_one, keras_two = result["keras_one"], result["keras_mirrored"]
    gap = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(keras_one["weights"], keras_two["weights"]))
    assert gap > 1e-4, "Keras' global_clipnorm was expected to clip per replica (a test of the test)"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_only_the_chief_writes_and_a_failure_on_the_chief_ends_both(tmp_path):
    """Two worker processes of `python -m cxrlt.train` on 127.0.0.1, folds 0 and 1.

    Fold 0 trains: one bad image (--skip-bad) is left out by the chief's decision on both workers, each
    worker predicts its share of the validation and OOF images, and only the chief writes (every file
    change of each process under the run and data folders is recorded with Python's audit hooks).
    Fold 1: the chief's model selection cannot write its model (a folder stands at fold1/model.keras), so
    the chief fails after the first epoch's validation; both processes must then exit non-zero, the worker
    within 60 s of the chief and with the chief's message, not hang in its next collective."""
    import time

    from cxrlt.data.synthetic import make_demo

    demo = make_demo(tmp_path / "data", n_patients=40, image_size=64)
    bad = pd.read_csv(demo.train_csv)["path"].iloc[3]
    (demo.root / bad).write_bytes((demo.root / bad).read_bytes()[:300])  # truncated: the header check's "bad"
    run = tmp_path / "runs" / "mw"
    (run / "fold1" / "model.keras").mkdir(parents=True)  # the save target of fold 1 cannot be written
    (run / "fold1" / "model.keras" / "keep").write_text("a folder, not a model")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    argv = ["--demo", "--set", f"data.demo_dir={tmp_path / 'data'}", "--set", "data.demo_patients=40",
            "--set", "data.demo_image_size=64", "--out", str(tmp_path / "runs"), "--name", "mw", "--epochs", "1",
            *TINY, "--batch-size", "8", "--set", "train.steps_per_epoch=2", "--strategy", "multiworker", "--skip-bad"]
    procs, logs = [], [tmp_path / f"worker{i}.log" for i in range(2)]
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(tf_config),
               "CXRLT_AUDIT_ROOTS": os.pathsep.join([str(tmp_path / "runs"), str(tmp_path / "data")]),
               "CXRLT_AUDIT_OUT": str(tmp_path / f"writes{index}.json")}
        with open(logs[index], "w") as out:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), "audited", *argv], env=env, text=True,
                                          stdout=out, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 900
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        first_end = time.monotonic()
        for p in procs:  # the first one ended (or 900 s passed); the other must follow within a minute
            p.wait(timeout=60)
        print(f"the second worker ended {time.monotonic() - first_end:.1f} s after the first")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [1, 2], text[0][-3000:] + text[1][-3000:]
    # the chief's own error, and the worker's: stopped because of it, with its message
    assert "IsADirectoryError" in text[0] and "model.keras" in text[0]
    worker_error = [line for line in text[1].splitlines() if line.startswith("error:")]
    assert worker_error and "stopped because another worker failed: worker0 (the chief) failed: IsADirectoryError" \
        in worker_error[0] and "model.keras" in worker_error[0], text[1][-3000:]

    # fold 0: both trained on the same images (the chief's --skip-bad list), one replica each
    for log in text:
        assert "2 replica(s)" in log and "MultiWorkerMirroredStrategy" in log
    counts = [re.findall(r"fold 0 \(of folds 0-1\): (\d+) training, (\d+) validation images", log) for log in text]
    assert len(counts[0]) == 1 and counts[0] == counts[1]
    n_train, n_val = map(int, counts[0][0])
    excluded = pd.read_csv(run / "excluded_images.csv")
    assert list(excluded["path"].str.endswith(bad)) == [True]
    assert n_train + n_val == len(pd.read_csv(demo.train_csv)) - 1
    assert text[0].count("epoch 1 state saved") == 1 and "state saved" not in text[1]  # fold 1 failed before it
    assert (run / "fold0" / "done.json").is_file() and not (run / "fold1" / "done.json").exists()
    assert list(pd.read_csv(run / "fold0" / "history.csv").epoch) == [1]
    assert len(pd.read_csv(run / "fold0" / "oof.csv")) == n_val
    assert sorted(p.name for p in run.rglob("*.keras") if p.is_file()) == ["model.keras"]
    assert not [p for p in run.rglob("*") if "worker1" in p.name or p.name.startswith(".backup-")]

    # only the chief wrote: the worker changed nothing under the run or the data folder
    writes = [json.loads((tmp_path / f"writes{i}.json").read_text()) for i in range(2)]
    assert writes[1] == [], writes[1][:10]
    written = {Path(path).name for _, path in writes[0]}
    assert {"config.yaml", "classes.json", "folds.csv", "image_check.csv", "excluded_images.csv", "best.json",
            "history.csv", "oof.csv", "done.json"} <= written, sorted(written)


def test_two_workers_follow_the_chief_refuse_to_diverge_and_a_failing_worker_stops_the_chief(tmp_path):
    """No model: the agreement helpers between two worker processes. The chief's values reach both; values
    that must be equal but are not stop both with the same error (not a hang in a later collective of another
    shape); worker 1 raising while the chief waits in a collective ends the chief with worker 1's message."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(tf_config)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), "agree"], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    chief, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert (chief["chief"], other["chief"]) == (True, False)
    assert chief["position"] == [0, 2] and other["position"] == [1, 2]
    assert chief["from_chief"] == other["from_chief"] == [7.0, 0.0]
    assert chief["stop"] is other["stop"] is True
    assert chief["sum"] == other["sum"] == [3.0, 2.0]
    for result in (chief, other):  # both stop, each saying what it saw
        assert result["differ"].startswith("the image list differs between the chief and 1 other worker(s)")
    assert "worker0: the same as the chief" in chief["differ"] and "worker1: not the same" in other["differ"]
    assert other["failure"] == "ValueError: worker 1 cannot read its shard"
    assert chief["failure"].startswith("WorkerFailed: worker0 stopped because another worker failed: worker1 failed: "
                                       "ValueError: worker 1 cannot read its shard"), chief["failure"]


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


def test_weight_ema_under_mirrored_strategy_matches_one_device():
    """train.ema: each replica averages its own copy with no communication; the averages and the weights the
    epoch-end callbacks see (every replica's copy swapped in) equal one device's."""
    result = _run_worker("ema")
    one, two = result["one"], result["mirrored"]
    assert two["replicas"] == 2 and one["replicas"] == 1
    np.testing.assert_allclose(two["ema"], one["ema"], rtol=1e-5)
    np.testing.assert_allclose(two["seen"]["weights"], one["ema"], rtol=1e-5)  # the callbacks saw the averages
    assert max(abs(a - b) for a, b in zip(one["ema"], one["weights"])) > 1e-3
    assert two["ema_copies_differ"] == 0.0 and two["seen"]["copies_differ"] == 0.0
