"""Start a tf.data service dispatcher or worker, so the host-side input pipeline (decoding, resizing,
augmentation, mixing) runs on spare CPU hosts instead of the training host (config `input.data_service`).

    python -m cxrlt.data_service --dispatcher --port 5050                   # one, anywhere the trainers reach
    python -m cxrlt.data_service --worker --dispatcher-address HOST:5050 --port 5051   # one per spare CPU host
    python -m cxrlt.train ... --set input.data_service=grpc://HOST:5050     # the trainer(s)

Workers run the dataset graph the trainer registers: they read the images at the paths in the label CSV
(or data.prepared), so every worker must see the data at the same paths (a shared file system). Each
server runs until the process is stopped. Thin: TensorFlow's servers, with a worker address other hosts
can reach (TF's default, localhost, works only on the dispatcher's host).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time

from ..utils import cli
from ..utils.errors import UserError

log = logging.getLogger("cxrlt.data_service")


class ServiceError(UserError):
    """A server that cannot start; the message says why."""


class DeliveryClock:
    """When this process last received a batch from the tf.data service (time.monotonic()); the train step
    watchdog reads it to tell a lost service worker from a slow step (cxrlt.runtime.watchdog)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.last, self.count = time.monotonic(), 0

    def tick(self) -> None:
        with self._lock:
            self.last, self.count = time.monotonic(), self.count + 1

    def last_delivery(self) -> float:
        with self._lock:
            return self.last


DELIVERIES = DeliveryClock()


def probe_deliveries(dataset):
    """`dataset` (read from the service) with a tick of DELIVERIES for every element it yields: one Python call
    per batch, in this process (after the service's read: the workers never run it)."""
    import tensorflow as tf

    def tick():
        DELIVERIES.tick()
        return 0

    def with_tick(*element):
        done = tf.py_function(tick, [], tf.int32)
        with tf.control_dependencies([done]):
            element = tf.nest.map_structure(tf.identity, element)
        return element[0] if len(element) == 1 else element

    return dataset.map(with_tick)


def start_dispatcher(port: int, work_dir: str | None = None, **options):
    """A tf.data service dispatcher on `port` (0: any free port; `.target` is grpc://localhost:PORT).
    With `work_dir` it journals its state there and survives a restart (fault_tolerant_mode). `options`:
    more DispatcherConfig fields (e.g. job_gc_timeout_ms: how soon the jobs of a stopped trainer end)."""
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(port=port, work_dir=work_dir,
                                                           fault_tolerant_mode=bool(work_dir), **options)
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address: str, port: int, worker_address: str | None = None, **options):
    """A tf.data service worker on `port` that registers with the dispatcher at HOST:PORT, announcing
    itself to trainers as `worker_address` (default: this host's name and `port`). `options`: more
    WorkerConfig fields (e.g. heartbeat_interval_ms: how soon it learns of a new job; TF's default 30 s)."""
    import tensorflow as tf

    dispatcher_address = dispatcher_address.removeprefix("grpc://")
    if ":" not in dispatcher_address:
        raise ServiceError(f"--dispatcher-address must be HOST:PORT, got {dispatcher_address!r}")
    if not port:
        raise ServiceError("a worker needs a fixed --port (its address is announced to the trainers)")
    address = worker_address or f"{socket.getfqdn()}:{port}"
    config = tf.data.experimental.service.WorkerConfig(dispatcher_address=dispatcher_address,
                                                       worker_address=address, port=port, **options)
    return tf.data.experimental.service.WorkerServer(config)


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.data_service", __doc__)
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--dispatcher", action="store_true", help="run the dispatcher (one per cluster)")
    role.add_argument("--worker", action="store_true", help="run a worker (one per spare CPU host)")
    parser.add_argument("--port", type=int, default=5050, help="port to listen on (default 5050)")
    parser.add_argument("--dispatcher-address", help="worker: the dispatcher's HOST:PORT")
    parser.add_argument("--worker-address", help="worker: HOST:PORT trainers reach it at (default: this host's name)")
    parser.add_argument("--work-dir", help="dispatcher: journal folder, so a restarted dispatcher keeps its jobs")
    parser.add_argument("--heartbeat-ms", type=int, default=None,
                        help="worker: how often it asks the dispatcher for new jobs (TF's default: 30,000 ms)")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        if args.dispatcher:
            server = start_dispatcher(args.port, args.work_dir)
            log.info("tf.data service dispatcher on port %d: trainers use --set input.data_service=grpc://%s:%d",
                     args.port, socket.getfqdn(), args.port)
        else:
            if not args.dispatcher_address:
                raise ServiceError("--worker needs --dispatcher-address HOST:PORT")
            server = start_worker(args.dispatcher_address, args.port, args.worker_address,
                                  **({"heartbeat_interval_ms": args.heartbeat_ms} if args.heartbeat_ms else {}))
            log.info("tf.data service worker on port %d, registered with %s", args.port, args.dispatcher_address)
        server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
