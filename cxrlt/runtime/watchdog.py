"""A bound on train step calls that never return: a stuck worker, a lost tf.data service worker.

A collective waits without a timeout, so one stuck but alive worker (a hung network file system, a deadlock)
held every other worker forever, and so did a lost tf.data service worker (its sub-streams are not moved to
another worker: the round-robin read waits for it; measured: >= 150 s, no error). The main thread is then
inside TensorFlow's C++ and cannot be interrupted, so a daemon thread watches the clock: when a train call runs
past its limit it logs what happened and what to do, reports it to the other workers (they stop with it, see
distribute.failures_end_every_worker) and ends this process with exit status 2. What is on disk stays whole
(every file is written atomically; the last finished epoch's checkpoint is kept), so a rerun resumes.

Limits count from the second call of a fold on: the first one traces and compiles the step, which takes
minutes on a big model and is not a sign of anything.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

EXIT_STATUS = 2  # an `error:` line, like every error a user can act on


class StepWatchdog:
    """Watches the train calls of one fold.

    `step_timeout_s` (train.step_timeout_s, 0 = off): the longest one call of steps_per_execution steps may take.
    `service` / `service_timeout_s` (input.data_service, input.data_service_timeout_s): the longest a call may
    wait while the service delivers no batch to this worker (`last_delivery()`: time.monotonic() of the latest).
    `on_timeout(message)` ends the process (default: `end_process`, which also tells the other workers)."""

    def __init__(self, step_timeout_s: float = 0.0, *, service: str | None = None, service_timeout_s: float = 0.0,
                 last_delivery: Callable[[], float] | None = None, label: str = "training",
                 on_timeout: Callable[[str], None] | None = None, worker: str = "local"):
        self.step_timeout_s, self.service_timeout_s = float(step_timeout_s or 0), float(service_timeout_s or 0)
        self.service, self.last_delivery, self.label, self.worker = service, last_delivery, label, worker
        self.on_timeout = on_timeout or end_process
        self._lock = threading.Lock()
        self._call_started: float | None = None
        self._where = ""
        self._calls = 0
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def active(self) -> bool:
        return bool(self.step_timeout_s or (self.service and self.service_timeout_s))

    def call_started(self, where: str) -> None:
        if not self.active:
            return
        with self._lock:
            self._call_started, self._where = time.monotonic(), where
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="cxrlt-step-watchdog", daemon=True)
            self._thread.start()

    def call_finished(self) -> None:
        with self._lock:
            self._call_started = None
            self._calls += 1

    def close(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        period = max(0.2, min(5.0, min(t for t in (self.step_timeout_s, self.service_timeout_s) if t) / 4))
        while not self._stopped.wait(period):
            message = self.check(time.monotonic())
            if message:
                self._stopped.set()
                self.on_timeout(message)

    def check(self, now: float) -> str | None:
        """The message to end with if the running call is past a limit at time `now`, else None."""
        with self._lock:
            started, where, calls = self._call_started, self._where, self._calls
        if started is None or calls < 1:  # nothing running, or the first (tracing) call
            return None
        running = now - started
        if self.service and self.service_timeout_s and running > self.service_timeout_s:
            silent = now - (self.last_delivery() if self.last_delivery else started)
            if silent > self.service_timeout_s:
                return (f"{self.label}: the tf.data service at {self.service} delivered no batch to {self.worker} for "
                        f"{silent:.0f} s (input.data_service_timeout_s {self.service_timeout_s:g}) in {where}: a "
                        "service worker was probably lost (its sub-streams are not moved to another worker). Restart "
                        "it (python -m cxrlt.data_service --worker ...) or train without input.data_service, then "
                        "rerun the same command: the fold resumes from its last checkpoint")
        if self.step_timeout_s and running > self.step_timeout_s:
            return (f"{self.label}: no train step finished within train.step_timeout_s ({self.step_timeout_s:g} s) "
                    f"in {where} on {self.worker}: a worker is stuck (a hung file system, a deadlock, a lost input) "
                    "while the others wait for it. The last checkpoint is kept: fix the stuck worker and rerun the "
                    "same command, or raise train.step_timeout_s if a call of steps is really that slow")
        return None


def end_process(message: str) -> None:
    """Log `message`, tell the other workers (if any), end this process now: its main thread is stuck in C++."""
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    try:
        from tensorflow.python.eager import context

        ctx = context.context()
        if ctx.coordination_service is not None:  # several workers: they stop with this message
            ctx.report_error_to_cluster(10, message[:4000])  # 10: ABORTED
            time.sleep(3.0)  # let the error reach them before this worker (maybe the service's host) goes
    except Exception as err:  # noqa: BLE001 - the other workers' heartbeats still notice this one's exit
        log.warning("could not tell the other workers (%s)", err)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(EXIT_STATUS)
