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


def test_cpu_replicas_make_auto_mirrored_and_cannot_change_a_started_process():
    """distribute.cpu_replicas: `auto` without a GPU picks MirroredStrategy over the split CPU (a dry run of a
    multi-GPU config); a process whose TensorFlow already started keeps its devices, so asking for another
    count is a DistributeError that says to start a fresh process (the same count is fine)."""
    import tensorflow as tf

    from cxrlt import config

    assert distribute.resolve_name("auto", 8) == "mirrored" and distribute.resolve_name("auto", None) == "one"
    have = len(tf.config.list_logical_devices("CPU"))  # TensorFlow runs in this process: its devices are fixed
    distribute.split_cpu(have)
    with pytest.raises(distribute.DistributeError, match="already runs with .* fresh process"):
        distribute.split_cpu(have + 7)
    with pytest.raises(config.ConfigError, match="distribute.cpu_replicas must be a whole number"):
        config.load(overrides={"distribute": {"cpu_replicas": 2.5}})
    with pytest.raises(config.ConfigError, match="distribute.cpu_replicas must be"):
        config.load(overrides={"distribute": {"cpu_replicas": 0}})


def test_mix_partners_come_from_the_global_batch_at_eight_replicas():
    """Mosaic at 8 replicas (logical CPUs) x 4 images, and x 2 images x train.accumulate 2: each replica's rows
    are those of one device's batch of 32 with the same seed (the same labels; the same images on the host,
    to float rounding in accelerator mode), not Mosaics of the replica's own 4 images (which gave all 4 rows
    one label vector). Every image has its own label, so each mixed label names the 4 sources of its row.
    The accelerator step traced at 8 replicas runs no host-only op and no loop."""
    result = _run_worker("global_mix")
    assert result["replicas"] == 8
    labels = {key: np.asarray(value) for key, value in result["labels"].items()}
    runs = ("one", "eight", "eight_accumulate")
    assert set(labels) == {f"{mode}_{run}" for mode in ("host", "device") for run in runs} - {"device_one"}
    reference = labels["host_one"]
    assert reference.shape == (2, 32, 64) and (reference.sum(axis=-1) == 4).all()  # 4 distinct sources per row
    for key, value in labels.items():
        np.testing.assert_array_equal(value, reference, err_msg=key)
    rows = {"one": 32, "eight": 4, "eight_accumulate": 2}  # rows of one replica's micro-batch
    for key, distinct in result["rows_distinct"].items():
        assert distinct == rows[key.split("_", 1)[1]], key  # no two rows of a replica share their sources
    for key, difference in result["image_difference"].items():
        assert difference == 0.0 if key.startswith("host") else difference < 2e-3, (key, difference)
    for key in ("ops_device_eight", "ops_device_eight_accumulate"):
        report = result[key]
        assert report["host_only"] == [] and report["strings"] == [] and report["loops"] == [], report
        assert "ImageProjectiveTransformV3" in report["types"] and "GatherV2" in report["types"]


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


def _start_workers(argv, logs, audit_dir=None) -> list:
    """Two `python -m cxrlt.train` worker processes on 127.0.0.1 (with audit_dir: recording their file changes,
    tests/distributed_worker.py audited), output to `logs`."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(tf_config)}
        command = [sys.executable, "-m", "cxrlt.train", *argv]
        if audit_dir is not None:
            env.update(CXRLT_AUDIT_ROOTS=os.pathsep.join([str(audit_dir / "runs"), str(audit_dir / "data")]),
                       CXRLT_AUDIT_OUT=str(audit_dir / f"writes{index}.json"))
            command = [sys.executable, str(WORKER), "audited", *argv]
        with open(logs[index], "w") as out:
            procs.append(subprocess.Popen(command, env=env, text=True, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _kill_left(procs) -> None:
    """Whatever a test leaves running (it failed, or a bound passed) is killed, not left to hold the ports."""
    for p in procs:
        if p.poll() is None:
            p.kill()


def _wait_all(procs, logs, timeout: float = 900) -> list[str]:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        _kill_left(procs)
    return [log.read_text() for log in logs]


def test_two_workers_train_only_the_chief_writes_a_chief_failure_ends_both_and_preemption_resumes_bit_identical(tmp_path):
    """Two worker processes of `python -m cxrlt.train` on 127.0.0.1, folds 0 and 1.

    Fold 0 trains 2 epochs: one bad image (--skip-bad) is left out by the chief's decision on both workers, each
    worker predicts its share of the validation and OOF images, and only the chief writes (every file
    change of each process under the run and data folders is recorded with Python's audit hooks).
    Fold 1: the chief's model selection cannot write its model (a folder stands at fold1/model.keras), so
    the chief fails after the first epoch's validation; both processes must then exit non-zero, the worker
    within 60 s of the chief and with the chief's message, not hang in its next collective.

    Preemption: the run directory as it stood after fold 0's epoch 1 (both workers paused with SIGSTOP while it
    is copied: what a kill of both then leaves) is rerun on both workers (--fold 0): they resume after epoch 1,
    and worker 1 gets SIGTERM. Both must save the same mid-epoch checkpoint at the next step boundary and exit
    75 (before: worker 1 died, epoch 2 was lost and worker 0 waited for it); rerun again, both resume at that step,
    and fold 0 ends with the uninterrupted run's history.csv, model selection and weights, to the bit."""
    import shutil
    import signal
    import time

    from cxrlt.data.synthetic import make_demo
    from cxrlt.model import models

    demo = make_demo(tmp_path / "data", n_patients=40, image_size=64)
    bad = pd.read_csv(demo.train_csv)["path"].iloc[3]
    (demo.root / bad).write_bytes((demo.root / bad).read_bytes()[:300])  # truncated: the header check's "bad"
    run = tmp_path / "runs" / "mw"
    (run / "fold1" / "model.keras").mkdir(parents=True)  # the save target of fold 1 cannot be written
    (run / "fold1" / "model.keras" / "keep").write_text("a folder, not a model")
    argv = ["--demo", "--set", f"data.demo_dir={tmp_path / 'data'}", "--set", "data.demo_patients=40",
            "--set", "data.demo_image_size=64", "--out", str(tmp_path / "runs"), "--name", "mw", "--epochs", "2",
            *TINY, "--batch-size", "8", "--set", "train.steps_per_epoch=3", "--strategy", "multiworker", "--skip-bad",
            "--backbone", "mobilenetv2"]  # the backbone is beside the point here: the one that traces fastest
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = _start_workers(argv, logs, audit_dir=tmp_path)
    snapshot = tmp_path / "snapshot"
    try:
        deadline = time.monotonic() + 900
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if not snapshot.exists() and (run / "fold0" / "backup" / "checkpoint").exists():
                for p in procs:
                    p.send_signal(signal.SIGSTOP)
                shutil.copytree(tmp_path / "runs", snapshot)  # fold 0 killed after epoch 1, on both workers
                for p in procs:
                    p.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        first_end = time.monotonic()
        for p in procs:  # the first one ended (or 900 s passed); the other must follow within a minute
            p.wait(timeout=60)
        print(f"the second worker ended {time.monotonic() - first_end:.1f} s after the first")
    finally:
        _kill_left(procs)
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
    assert list(pd.read_csv(run / "fold0" / "history.csv").epoch) == [1, 2]
    assert len(pd.read_csv(run / "fold0" / "oof.csv")) == n_val
    assert sorted(p.name for p in run.rglob("*.keras") if p.is_file()) == ["model.keras"]
    assert not [p for p in run.rglob("*") if "worker1" in p.name or p.name.startswith(".backup-")]

    # only the chief wrote: the worker changed nothing under the run or the data folder
    writes = [json.loads((tmp_path / f"writes{i}.json").read_text()) for i in range(2)]
    assert writes[1] == [], writes[1][:10]
    written = {Path(path).name for _, path in writes[0]}
    assert {"config.yaml", "classes.json", "folds.csv", "image_check.csv", "excluded_images.csv", "best.json",
            "history.csv", "oof.csv", "done.json"} <= written, sorted(written)

    # preemption: the snapshot (killed after epoch 1) back in place, rerun on both, SIGTERM to worker 1
    (tmp_path / "runs").rename(tmp_path / "straight")
    snapshot.rename(tmp_path / "runs")
    assert list(pd.read_csv(run / "fold0" / "history.csv").epoch) == [1] and not (run / "fold0" / "done.json").exists()
    argv += ["--fold", "0"]
    procs = _start_workers(argv, logs)
    try:
        deadline = time.monotonic() + 900
        while "fold 0: resuming after epoch 1 of 2" not in logs[1].read_text():
            assert all(p.poll() is None for p in procs), "".join(log.read_text()[-3000:] for log in logs)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        text = _wait_all(procs, logs, timeout=300)
    assert [p.returncode for p in procs] == [75, 75], text[0][-3000:] + text[1][-3000:]
    stops = [re.findall(r"fold 0: preempted \(SIGTERM to (this|another) worker\): the state after step (\d) of 3 in "
                        r"epoch 2 is saved", log) for log in text]
    assert stops[0] and stops[1] and stops[0][0][1] == stops[1][0][1], text[0][-3000:] + text[1][-3000:]
    assert (stops[0][0][0], stops[1][0][0]) == ("another", "this") and stops[0][0][1] in ("1", "2")
    assert "rerun the same command on every worker" in text[0]
    # ... and rerun: both resume at that step and end fold 0 as the uninterrupted run did
    text = _wait_all(_start_workers(argv, logs), logs)
    for log in text:
        assert f"fold 0: resuming in epoch 2 of 2 after step {stops[0][0][1]} of 3" in log, log[-3000:]
    straight, resumed = tmp_path / "straight" / "mw" / "fold0", run / "fold0"
    assert (resumed / "done.json").is_file(), text[0][-3000:] + text[1][-3000:]
    assert (resumed / "history.csv").read_bytes() == (straight / "history.csv").read_bytes()
    assert json.loads((resumed / "best.json").read_text()) == json.loads((straight / "best.json").read_text())
    a, b = (models.load(d / "model.keras") for d in (resumed, straight))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


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


def test_mixed_precision_policy_follows_the_gpus_compute_capability():
    """bfloat16 where the GPUs compute it at full speed (compute capability >= 8.0) and on the CPU: no loss
    scaling; float16 with loss scaling as soon as one GPU is older (or of unknown capability)."""
    policy = distribute.precision_policy
    assert policy(False, "auto", [(7, 0)])[0] == "float32"
    assert policy(True, "auto", [])[0] == "mixed_bfloat16"  # no GPU
    for capabilities in ([(8, 0)], [(9, 0)] * 8, [(8, 9), (8, 6)]):  # A100, 8 x H100, L4 + A10
        name, why = policy(True, "auto", capabilities)
        assert name == "mixed_bfloat16" and ">= 8.0" in why and "no loss scaling" in why
    for capabilities in ([(7, 0)], [(7, 5)], [(8, 0), (7, 5)], [None]):  # V100, T4, a mixed host, unknown
        name, why = policy(True, "auto", capabilities)
        assert name == "mixed_float16" and "loss scaling" in why
    assert policy(True, "float16", [(9, 0)])[0] == "mixed_float16"  # distribute.mixed_precision_dtype overrides
    assert policy(True, "bfloat16", [(7, 0)])[0] == "mixed_bfloat16"
    assert distribute.workers_on_this_host({"worker": ["127.0.0.1:1", "127.0.0.1:2", "h2:1"]}, "worker", 1) == 2
    assert distribute.workers_on_this_host({"chief": ["h1:1"], "worker": ["h2:1"]}, "worker", 0) == 1


def test_float16_overflow_on_one_replica_skips_the_step_on_every_replica_and_dropout_differs_by_replica():
    """MirroredStrategy over two logical CPUs, the product's mixed_float16 optimizer. Only replica 1's half of the
    second step overflows in float16: Keras' LossScaleOptimizer took replica 0's word, applied the summed
    (infinite) gradient and the weights became NaN; now every replica skips it (one update, the loss scale
    halved, weights finite and equal everywhere) and the weight EMA does not count the skipped step.
    Dropout: the same input on both replicas drew the same mask (Keras' seed state is mirrored); now each
    replica folds its id into the seed, and the state stays one value."""
    result = _run_worker("replicas")
    assert result["replicas"] == 2
    fp16 = result["fp16"]
    assert fp16["weights_finite"] and fp16["copies_differ"] == 0.0
    assert fp16["updates"] == 1 and fp16["loss_scale"] == 2.0 ** 14  # step 2 skipped, 2^15 halved
    assert fp16["moved"] > 1e-4  # step 1 was applied
    assert fp16["ema_error"] < 1e-6  # ema = (w0 + w1) / 2: the skipped step is not averaged in
    dropout = result["dropout"]
    assert not dropout["same_masks"] and dropout["state_copies_equal"]
    assert all(0.4 < kept < 0.6 for kept in dropout["kept"])  # still dropout at rate 0.5 on each replica


def test_two_workers_skip_a_float16_overflow_together_outlast_a_silent_worker_and_a_stuck_one_ends_both(tmp_path):
    """Two worker processes on 127.0.0.1 (tests/distributed_worker.py workers), one cluster for three cases.

    1. mixed_float16, worker 1's half of the second step overflows: Keras' LossScaleOptimizer let worker 1 skip and
       worker 0 apply, and both hung in the gradient all-reduce; now both skip it (the same update count, loss
       scale and weights on both) and go on.
    2. Worker 1 is stopped (SIGSTOP) for 16 s while worker 0 waits in a collective, as on a host too busy to run
       it: TensorFlow's 10 s coordination heartbeat timeout ended both; distribute.heartbeat_timeout_s (300 s by
       default) keeps the run alive.
    3. Worker 1's input hangs in the third step (alive, stuck): each worker's watchdog (train.step_timeout_s 3,
       from the second call on) ends it with exit status 2 and a message naming the setting, within a minute,
       not never."""
    import signal
    import time

    addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs, outs, errs = [], [tmp_path / f"out{i}.txt" for i in range(2)], [tmp_path / f"err{i}.txt" for i in range(2)]
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(tf_config)}
        with open(outs[index], "w") as out, open(errs[index], "w") as err:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), "workers", str(tmp_path)], env=env,
                                          stdout=out, stderr=err))
    text = lambda: "".join(f"\n--- worker {i}:\n{errs[i].read_text()[-2500:]}" for i in range(2))  # noqa: E731
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "ready1").exists():  # worker 1 finished case 1 and waits for the go
            assert all(p.poll() is None for p in procs), text()
            assert time.monotonic() < deadline, "case 1 did not finish within 10 minutes (a hang?)" + text()
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGSTOP)
        time.sleep(16)
        procs[1].send_signal(signal.SIGCONT)
        (tmp_path / "go").write_text("")
        went = time.monotonic()
        for p in procs:
            p.wait(timeout=180)
        print(f"both workers ended {time.monotonic() - went:.1f} s after the silence")
    finally:
        _kill_left(procs)
    results = []
    for i in range(2):
        lines = [line for line in outs[i].read_text().splitlines() if line.startswith("{")]
        assert lines, f"worker {i} printed no result" + text()
        results.append(json.loads(lines[-1]))
    for result in results:
        fp16 = result["fp16"]
        assert fp16["updates"] == 1 and fp16["loss_scale"] == 2.0 ** 14 and fp16["weights_finite"], fp16
        assert result["after_silence"]
    assert results[0]["fp16"]["moved"] == results[1]["fp16"]["moved"] > 1e-4  # the same update on both
    assert results[0]["fp16"]["ema_error"] < 1e-6
    assert [p.returncode for p in procs] == [2, 2], text()
    for i in range(2):
        assert "no train step finished within train.step_timeout_s (3 s)" in errs[i].read_text(), text()
