"""input.data_service for real: a tf.data service dispatcher and two workers in this process on 127.0.0.1
(started by cxrlt.data.service, as `python -m cxrlt.data_service` does), the training stream read through
them, equal to the same sub-streams built locally, resumed exactly, and two train steps on it."""

from __future__ import annotations

import gc
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxrlt import config
from cxrlt.data import augment, mix, pipeline, service
from cxrlt.model import losses
from cxrlt.train import engine

from .conftest import write_png

CLASSES, SIZE, BATCH, STREAMS = 3, 32, 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    dispatcher = service.start_dispatcher(_free_port(), job_gc_check_interval_ms=200, job_gc_timeout_ms=500)
    address = f"127.0.0.1:{dispatcher.target.rsplit(':', 1)[1]}"
    workers = []
    for _ in range(2):
        port = _free_port()
        workers.append(service.start_worker(address, port, worker_address=f"127.0.0.1:{port}", heartbeat_interval_ms=100))
    yield f"grpc://{address}"
    gc.collect()  # drop finished iterators: their jobs end, and the workers stop at once
    for server in (*workers, dispatcher):
        server.stop()


def test_training_batches_come_from_the_service_workers_exactly_and_resume(cluster, tmp_path):
    rng = np.random.default_rng(0)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (40, 36), dtype=np.uint8)))
                      for i in range(24)])
    labels = (rng.random((24, CLASSES)) < 0.4).astype(np.float32)
    cfg = config.load(overrides={"input": {"size": SIZE, "data_service": cluster, "data_service_streams": STREAMS},
                                 "mix": {"mosaic": 0.5, "mixup": 0.5}})
    local = {**cfg, "input": {**cfg["input"], "data_service": None}}

    def stream(c, **kw):
        return pipeline.train_dataset(paths, labels, c, seed=5, batch_size=BATCH, mixer=mix.mixer_from_config(c, 5),
                                      augment_fn=augment.make_basic_augment(c["augment"]), **kw)

    served = [b for b in stream(cfg).take(6)]
    # the reference, built here without the service: batch g is batch g // 2 of sub-stream g % 2 = shard (2, g % 2)
    subs = [list(stream(local, shard=(STREAMS, s)).take(3)) for s in range(STREAMS)]
    for g, (x, y) in enumerate(served):
        rx, ry = subs[g % STREAMS][g // STREAMS]
        np.testing.assert_allclose(x.numpy(), rx.numpy(), atol=1e-3)
        np.testing.assert_array_equal(y.numpy(), ry.numpy())
    assert not np.allclose(served[0][0].numpy(), served[1][0].numpy())  # two sub-streams, two workers: no duplicates
    # a resumed fold (start_batch 3) continues with batch 3, through new service jobs
    resumed = stream(cfg, start_batch=3)
    x3, y3 = next(iter(resumed))
    np.testing.assert_allclose(x3.numpy(), served[3][0].numpy(), atol=1e-3)
    np.testing.assert_array_equal(y3.numpy(), served[3][1].numpy())

    # the batches of one update mixed together (mix_group 2): each sub-stream mixes whole groups of 2 batches,
    # and the groups (not the batches) go round-robin, so an update's batches come from one sub-stream
    grouped = list(stream(cfg, mix_group=2).take(4))
    subs = [list(stream(local, shard=(STREAMS, s), mix_group=2).take(2)) for s in range(STREAMS)]
    for i, (x, y) in enumerate(grouped):
        group, k = divmod(i, 2)
        rx, ry = subs[group % STREAMS][2 * (group // STREAMS) + k]
        np.testing.assert_allclose(x.numpy(), rx.numpy(), atol=1e-3)
        np.testing.assert_array_equal(y.numpy(), ry.numpy())

    # two train steps of cxrlt's engine on the service's batches (a new iteration: new service jobs)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=4)(inputs / 255.0))
    trainer = engine.Trainer(tf.distribute.get_strategy(), keras.Model(inputs, keras.layers.Dense(CLASSES)(x)),
                             keras.optimizers.Adam(1e-2), losses.get_loss("bce"))
    history = trainer.fit(resumed, epochs=1, steps_per_epoch=2, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 2 and np.isfinite(history["loss"]).all()


def test_the_config_refuses_what_a_service_worker_cannot_run():
    with pytest.raises(config.ConfigError, match="grpc://HOST:PORT"):
        config.load(overrides={"input": {"data_service": "localhost:5050"}})
    with pytest.raises(config.ConfigError, match="numpy epoch generator"):
        config.load(overrides={"input": {"data_service": "grpc://host:5050"}, "sampling": {"sampler": "ros"}})
    with pytest.raises(service.ServiceError, match="HOST:PORT"):
        service.start_worker("nohostport", 5051)


def test_a_lost_service_worker_ends_training_with_the_service_named(tmp_path):
    """A dispatcher and two workers here on 127.0.0.1; a trainer process (tests/distributed_worker.py
    service_stall: cxrlt's pipeline on the service, two sub-streams, cxrlt's engine) trains; after its third step
    a service worker that serves a sub-stream is stopped. Its sub-stream is not moved to the other worker, so the read stalled forever
    (>= 150 s measured, no error); now input.data_service_timeout_s (3 s here) ends the trainer with exit status 2
    and a message naming the service and what to do."""
    import os
    import subprocess
    import sys
    import time

    from .conftest import REPO

    rng = np.random.default_rng(1)
    for i in range(24):
        write_png(tmp_path / "img" / f"{i}.png", rng.integers(0, 255, (40, 36), dtype=np.uint8))
    dispatcher = service.start_dispatcher(_free_port())
    address = f"127.0.0.1:{dispatcher.target.rsplit(':', 1)[1]}"
    workers = []
    for _ in range(2):
        port = _free_port()
        workers.append(service.start_worker(address, port, worker_address=f"127.0.0.1:{port}", heartbeat_interval_ms=100))
    worker_script = REPO / "tests" / "distributed_worker.py"
    trainer = subprocess.Popen([sys.executable, str(worker_script), "service_stall", f"grpc://{address}",
                                str(tmp_path / "img")], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lost = None
    try:
        steps = 0
        for line in trainer.stdout:  # the trainer prints each finished step
            steps += line.startswith("step ")
            if steps == 3:
                break
        assert steps == 3, trainer.stderr.read()[-3000:]
        # a worker that serves a sub-stream (the dispatcher may hand both to one worker; TF's test hook says which)
        serving = [w for w in workers if w._num_tasks() > 0]
        assert serving
        lost = serving[-1]
        lost.stop()
        stopped = time.monotonic()
        _, err = trainer.communicate(timeout=90)
        print(f"the trainer ended {time.monotonic() - stopped:.1f} s after the service worker stopped")
    finally:
        trainer.kill()
        for server in (*[w for w in workers if w is not lost], dispatcher):
            server.stop()
    assert trainer.returncode == 2, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert message and f"the tf.data service at grpc://{address} delivered no batch" in message[0], err[-3000:]
    assert "input.data_service_timeout_s 3" in message[0] and "python -m cxrlt.data_service --worker" in message[0]
