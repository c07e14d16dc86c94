"""SIGTERM (a spot/preemptible node, Slurm, Kubernetes, `timeout`) -> save at the next step boundary, exit 75.

The handler only raises a flag. cxrlt.engine sends this worker's flag with every train call's loss all-reduce
(no extra collective), so every worker learns of one worker's SIGTERM at the same call, saves the same
mid-epoch checkpoint (the save is collective) and exits with `EXIT_STATUS`; rerunning the same command
resumes from that step exactly. A second SIGTERM ends the process at once (the default action).

Why not TensorFlow's `PreemptionCheckpointHandler`: it owns the checkpoint and counts the steps itself
(`handler.run`), beside cxrlt's own epoch checkpoint, callbacks and input-stream position; it would be a
second, disagreeing notion of where a fold stands.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry". Distinct from an error (1, 2)
# and from being killed by the signal (143), so a job script can requeue on it.
EXIT_STATUS = 75

_requested = threading.Event()


class Preempted(SystemExit):
    """Every worker saved its state after a SIGTERM; the process ends with EXIT_STATUS (the message is logged)."""

    def __init__(self, message: str):
        super().__init__(EXIT_STATUS)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _on_sigterm(signum, frame):  # noqa: ARG001 - the signal module's signature
    _requested.set()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    log.warning("SIGTERM: the state is saved at the next train step boundary, then the run exits with status %d "
                "(send SIGTERM again to end it now)", EXIT_STATUS)


def install() -> None:
    """Catch SIGTERM in this process (the main thread only: Python's rule for signal handlers).

    Call it after the strategy exists: MultiWorkerMirroredStrategy's coordination agent installs TensorFlow's
    own SIGTERM notifier (for its PreemptionCheckpointHandler) and so replaced a handler installed before it
    (measured: the Python handler never ran and the worker trained on)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def requested() -> bool:
    return _requested.is_set()


def clear() -> None:
    """Forget a SIGTERM (tests that run several trainings in one process)."""
    _requested.clear()
