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
