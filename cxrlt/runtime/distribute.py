"""Which tf.distribute strategy and numeric policy a run uses.

    auto         MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker, else
                 MirroredStrategy when more than one GPU is visible, else the default (one device).
    one          the default strategy: one device.
    mirrored     MirroredStrategy over every visible GPU of this host, or over the logical CPU devices
                 of a CPU-only host (`distribute.cpu_replicas: N` splits the CPU into N, `split_cpu`).
    multiworker  MultiWorkerMirroredStrategy over the hosts TF_CONFIG names (one process per host, each
                 with its GPUs); every worker runs the same command.

Every strategy trains with the same step (cxrlt.engine): Keras 3 `fit` does not run under
MultiWorkerMirroredStrategy (keras-team/keras#20585), so cxrlt does not use `fit` at all.
The strategy must be made before TensorFlow runs its first op (MultiWorkerMirroredStrategy
refuses otherwise); cxrlt.train makes it first thing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

from ..config.schema import STRATEGY_NAMES as STRATEGIES
from ..utils.errors import UserError
from . import preemption


class DistributeError(UserError):
    """A strategy that cannot run with this machine, TF_CONFIG or batch size; the message says why."""


def split_cpu(n: int = 2) -> None:
    """Expose the CPU as `n` logical devices (distribute.cpu_replicas; must happen before TensorFlow's first op).

    A process whose devices already exist keeps them: fine when it already has `n` CPU devices, else a
    DistributeError that says to start a fresh process."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(n))
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have != int(n):
            raise DistributeError(
                f"distribute.cpu_replicas {n}: TensorFlow already runs with {have} CPU device(s) in this process, and "
                "the devices are fixed at its first op. Run python -m cxrlt.train in a fresh process") from None


def tf_config_workers() -> int:
    """Number of worker (+ chief) tasks TF_CONFIG names; 0 without TF_CONFIG."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err})") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def resolve_name(name: str, cpu_replicas: int | None = None) -> str:
    """'auto' -> the strategy this host and TF_CONFIG call for (several GPUs, or no GPU and the CPU split into
    several devices by distribute.cpu_replicas: mirrored); other names are checked and kept."""
    if name not in STRATEGIES:
        raise DistributeError(f"distribute.strategy must be one of {STRATEGIES}, got {name!r}")
    if name != "auto":
        return name
    if tf_config_workers() > 1:
        return "multiworker"
    gpus = len(tf.config.list_physical_devices("GPU"))
    return "mirrored" if gpus > 1 or (not gpus and (cpu_replicas or 1) > 1) else "one"


def get_strategy(name: str = "auto", heartbeat_timeout_s: float = 300.0,
                 cpu_replicas: int | None = None) -> tf.distribute.Strategy:
    """The strategy `name` (distribute.strategy). Under MultiWorkerMirroredStrategy `heartbeat_timeout_s`
    (distribute.heartbeat_timeout_s) is how long the coordination service waits for a silent worker before it
    ends the run (see `configure_workers`). With `cpu_replicas` N the CPU is first split into N logical
    devices, which `mirrored` uses where no GPU is visible: 8 replicas of a multi-GPU config on a laptop."""
    if cpu_replicas is not None and int(cpu_replicas) > 1:
        split_cpu(int(cpu_replicas))
    name = resolve_name(name, cpu_replicas)
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log.info("MirroredStrategy over %d replicas: %s", strategy.num_replicas_in_sync, devices)
        return strategy
    if tf_config_workers() < 1:
        raise DistributeError("--strategy multiworker needs TF_CONFIG naming the workers, e.g. "
                              '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    configure_workers(heartbeat_timeout_s)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    log.info("MultiWorkerMirroredStrategy: task %s/%s, %d replicas in sync", resolver.task_type, resolver.task_id,
             strategy.num_replicas_in_sync)
    return strategy


# TensorFlow's coordination service ends every worker when one has not sent a heartbeat for this long; TF's own
# default is 10 s (heartbeats every 5 s), which a busy host misses (two workers on one host, another job).
_heartbeat_timeout_s = 10.0


def configure_workers(heartbeat_timeout_s: float) -> None:
    """Before MultiWorkerMirroredStrategy exists: the coordination service's heartbeat timeout, and CPU threads
    shared out between the workers of this host.

    Issue 28 measured two workers on one 2-core host dying together of "heartbeat timeout" while another process
    used the CPU (not reproduced here). What is known: TensorFlow's default timeout is 10 s; the heartbeats
    are sent by a C++ thread of each worker (no GIL), so cxrlt's own Python between steps (the agreement
    helpers: tiny all-reduces) cannot hold them up, while CPU starvation of that thread and of the service's
    gRPC threads can: every TensorFlow process makes one intra-op thread per core, so several workers on one
    host oversubscribe it. So: a generous timeout (its cost: a worker that dies without a word is noticed that
    much later; a vanished chief is noticed at once, its sockets close; an error is reported at once), and
    when TF_CONFIG puts several workers on this host, each gets its share of the cores as intra-op threads.
    A worker stopped for 16 s (SIGSTOP) no longer ends the run (tests/test_distribute.py)."""
    global _heartbeat_timeout_s
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context

    resolver = TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    if context.context().coordination_service is None:  # the first strategy of this process
        jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
                for job in ("chief", "worker") if job in spec.jobs]
        context.context().configure_coordination_service(
            service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
            coordinated_jobs=jobs, heartbeat_timeout_in_ms=int(float(heartbeat_timeout_s) * 1000))
        _heartbeat_timeout_s = float(heartbeat_timeout_s)
    local = workers_on_this_host(spec.as_dict(), resolver.task_type, resolver.task_id)
    if local > 1:
        threads = max(1, (os.cpu_count() or 1) // local)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            log.info("%d workers share this host: %d intra-op CPU thread(s) each", local, threads)
        except RuntimeError:  # TensorFlow already started: its pools are fixed
            log.warning("%d workers share this host and TensorFlow's thread pools are already made: each uses "
                        "every core", local)


def workers_on_this_host(cluster: dict, task_type: str | None, task_id: int | None) -> int:
    """How many chief/worker tasks of the cluster share this task's host (by the host part of the address)."""
    tasks = [address for job in ("chief", "worker") for address in cluster.get(job, [])]
    mine = cluster.get(task_type, [None] * ((task_id or 0) + 1))[task_id or 0] if task_type else None
    if mine is None:
        return 1
    host = str(mine).rsplit(":", 1)[0]
    return sum(str(address).rsplit(":", 1)[0] == host for address in tasks)


def heartbeat_hint(text: str) -> str:
    """What to add to a peer failure TensorFlow reports as a missed heartbeat."""
    if "heartbeat" not in text.lower():
        return ""
    return (f" (the coordination service heard nothing from that worker for {_heartbeat_timeout_s:g} s: it died, "
            "or its host was too busy to answer; if it is alive, raise distribute.heartbeat_timeout_s and do not "
            "share its cores with other jobs)")


def steps_per_execution(setting: int | None) -> int:
    """train.steps_per_execution, with null resolved: 16 where a GPU is visible (a step there is short enough
    that the host's per-call dispatch and loss read show), 1 on CPU (a step costs seconds)."""
    if setting is not None:
        return int(setting)
    return 16 if tf.config.list_physical_devices("GPU") else 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one process that writes files: the 'chief' task, or worker 0 when TF_CONFIG names no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_id(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}{resolver.task_id}"


def is_multiworker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas (devices) of this process; the same on every worker (MultiWorkerMirroredStrategy requires it)."""
    try:
        return max(1, len(strategy.extended.worker_devices))
    except RuntimeError:  # the default strategy (one device) does not list its devices
        return 1


def worker_position(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(this worker's index, number of workers): worker w holds the global replicas w*L .. w*L+L-1."""
    per_worker = local_replicas(strategy)
    count = max(1, strategy.num_replicas_in_sync // per_worker)
    if count == 1:
        return 0, 1
    first = []
    strategy.experimental_distribute_values_from_function(lambda ctx: first.append(ctx.replica_id_in_sync_group) or 0)
    return first[0] // per_worker, count


# --- agreement between workers ----------------------------------------------------------------------
# Every worker runs the same command, but only the chief decides what changes the control flow (the images
# left out by --skip-bad, whether training stops) and every worker must issue the same collectives in the same
# order with the same shapes, or they hang. These helpers move small host arrays between the workers with one
# all-reduce each. Values travel as float32: integers below 2**24 and 0/1 masks are exact, and each element
# has one non-zero contribution (x + 0 = x), so every worker receives the same bits.

def sum_over_workers(strategy: tf.distribute.Strategy, array) -> np.ndarray:
    """Element-wise sum of `array` over the workers (each worker's first replica contributes it, the others 0).
    Every worker must call it, in the same order, with the same shape. Without workers: `array` itself."""
    array = np.asarray(array, np.float32)
    if not is_multiworker(strategy):
        return array
    per_worker = local_replicas(strategy)
    zeros = np.zeros_like(array)
    value = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array if ctx.replica_id_in_sync_group % per_worker == 0 else zeros))
    return np.asarray(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None))


def from_chief(strategy: tf.distribute.Strategy, array) -> np.ndarray:
    """The chief's `array` on every worker (the others pass an array of the same shape; its values are ignored)."""
    array = np.asarray(array, np.float32)
    return sum_over_workers(strategy, array if is_chief(strategy) else np.zeros_like(array))


def chief_decides(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """The chief's yes/no on every worker (e.g. stop training): one decision, followed everywhere."""
    return bool(from_chief(strategy, [1.0 if flag else 0.0])[0])


def digest(*parts) -> np.ndarray:
    """A fingerprint of `parts` (strings, numbers, arrays) as 8 float32 values (16 bits each: exact)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray) and part.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(part).tobytes() + str(part.shape).encode())
        elif isinstance(part, np.ndarray):  # strings, objects: their text, not their pointers
            h.update("\x1f".join(map(str, part.ravel())).encode())
        else:
            h.update(repr(part).encode())
        h.update(b"\0")
    return np.frombuffer(h.digest()[:16], dtype=">u2").astype(np.float32)


def agree(strategy: tf.distribute.Strategy, what: str, values) -> None:
    """Stop every worker (each with the same error) when `values` differ from the chief's.

    For what every worker computes itself and must compute identically (the image list, the folds, the step
    count, the epoch to resume at): pass a fixed-length vector (e.g. a `digest`), the same length everywhere.
    """
    if not is_multiworker(strategy):
        return
    mine = np.asarray(values, np.float32).ravel()
    chief = from_chief(strategy, mine)
    differ = int(sum_over_workers(strategy, [0.0 if np.array_equal(mine, chief) else 1.0])[0])
    if differ:
        raise DistributeError(
            f"{what} differs between the chief and {differ} other worker(s) (seen from {worker_id(strategy)}: "
            f"{'the same as the chief' if np.array_equal(mine, chief) else 'not the same as the chief'}). Every "
            "worker must read the same files: put the label CSV, the images and --out on storage all hosts share, "
            "and run the same command (same config and flags) on every host")


# --- one failure ends every worker -------------------------------------------------------------------

class WorkerFailed(UserError):
    """Another worker failed; the message carries its own."""


_PEER_ABORT = "Collective ops is aborted by: "


def _peer_message(err: BaseException) -> str | None:
    """The message another worker reported (or TensorFlow's word for a worker that vanished), if `err` is a
    collective that was aborted because of it."""
    if not isinstance(err, tf.errors.OpError):
        return None
    text = err.message or type(err).__name__
    aborted = _PEER_ABORT in text
    if not aborted and not isinstance(err, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                                            tf.errors.CancelledError, tf.errors.AbortedError)):
        return None
    text = text.rsplit(_PEER_ABORT, 1)[-1]  # TensorFlow may repeat its own prefix
    # (the same cuts where gRPC's status text carries the message with its line breaks escaped)
    for end in ("\nThe error could be from a previous", "\\nThe error could be from a previous",
                "\nAdditional GRPC error", "\n\t [[", "\n\t[["):
        text = text.split(end, 1)[0]
    return re.sub(r"^Error reported from /job:\w+/(replica:\d+/)?task:\d+: ", "", text.strip())


@contextlib.contextmanager
def failures_end_every_worker(strategy: tf.distribute.Strategy):
    """Around everything a worker does after the strategy exists: an exception on one worker ends all of them.

    Under MultiWorkerMirroredStrategy a worker that raises reports its message to the cluster's coordination
    service before it exits (`report_error_to_cluster`); TensorFlow then aborts every other worker's pending and
    next collective with that message, and they stop with `WorkerFailed` naming the worker and its message
    (measured on 127.0.0.1: at once, not after a timeout). A worker that dies without a word (SIGKILL, OOM) is
    caught by the coordination service's heartbeats instead (about 10 s; a vanished chief closes its sockets,
    which the others see at once). Without workers this does nothing.
    """
    if not is_multiworker(strategy):
        yield
        return
    me = worker_id(strategy)
    try:
        yield
    except BaseException as err:
        peer = _peer_message(err)
        if peer is not None:
            raise WorkerFailed(f"{me} stopped because another worker failed: {peer}{heartbeat_hint(peer)}") from None
        if isinstance(err, SystemExit) and (not err.code or isinstance(err, preemption.Preempted)):
            raise  # a clean end, or a preemption every worker agreed on (each saved, each exits): nothing to report
        message = f"{me}{' (the chief)' if is_chief(strategy) else ''} failed: {type(err).__name__}: {err}"
        try:
            from tensorflow.python.eager import context

            context.context().report_error_to_cluster(tf.errors.ABORTED, message[:4000])
        except Exception as report_err:  # noqa: BLE001 - the heartbeats still tell the others, only later
            log.warning("could not report the failure to the other workers (%s); they stop when they miss this "
                        "worker's heartbeats", report_err)
        raise


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker got here (one tiny all-reduce); nothing to wait for on one host.

    Used after each fold: the workers wait while the chief predicts the fold's validation split,
    instead of racing ahead (or exiting, which the chief's coordination service reports as a crash).
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.ones([])), axis=None)


def check_batch(strategy: tf.distribute.Strategy, global_batch: int) -> int:
    """The per-replica batch: the global batch must split evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch < replicas or global_batch % replicas:
        raise DistributeError(f"train.batch_size {global_batch} must be a multiple of the {replicas} replicas in sync "
                              f"(each replica gets batch_size / replicas images); use e.g. {replicas * max(1, global_batch // replicas)}")
    return global_batch // replicas


def precision_policy(mixed: bool, dtype: str = "auto", capabilities=()) -> tuple[str, str]:
    """(Keras policy, why) for distribute.mixed_precision / mixed_precision_dtype and the GPUs' compute
    capabilities ((major, minor) each, None when unknown; none: no GPU).

    bfloat16 has float32's exponent range, so it needs no loss scaling (no skipped steps, no scale to agree on
    between replicas); GPUs of compute capability 8.0 and later (A100, H100, L4, RTX 30xx/40xx) compute it at
    full speed. Older GPUs (V100 7.0, T4 7.5) only have fast float16, which needs dynamic loss scaling
    (cxrlt.model.optim.AgreedLossScaleOptimizer). Without a GPU: bfloat16 (what the CPU supports)."""
    if not mixed:
        return "float32", "distribute.mixed_precision off"
    if dtype in ("float16", "bfloat16"):
        return f"mixed_{dtype}", f"distribute.mixed_precision_dtype {dtype}"
    if dtype != "auto":
        raise DistributeError(f"distribute.mixed_precision_dtype must be auto, float16 or bfloat16, got {dtype!r}")
    capabilities = list(capabilities)
    if not capabilities:
        return "mixed_bfloat16", "no GPU: bfloat16 on the CPU"
    old = [c for c in capabilities if c is None or tuple(c) < (8, 0)]
    if old:
        shown = "unknown" if old[0] is None else ".".join(map(str, old[0]))
        return "mixed_float16", (f"a GPU of compute capability {shown} (< 8.0: no fast bfloat16): float16 with "
                                 "dynamic loss scaling")
    shown = ", ".join(sorted({".".join(map(str, c)) for c in capabilities}))
    return "mixed_bfloat16", f"GPUs of compute capability {shown} (>= 8.0): bfloat16, no loss scaling needed"


def gpu_capabilities() -> list:
    """(major, minor) compute capability of each visible GPU (None where TensorFlow does not say)."""
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            found.append(tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability")))
        except (TypeError, ValueError, RuntimeError):
            found.append(None)
    return found


def set_precision(mixed: bool, dtype: str = "auto", strategy: tf.distribute.Strategy | None = None) -> str:
    """Set Keras' global policy (see `precision_policy`) and log which and why; the head's logits, the loss and
    the outputs stay float32. Across workers the choice is one: if any worker's GPUs call for float16, all use it
    (the loss-scale state and the skipped steps must be the same everywhere)."""
    import keras

    policy, why = precision_policy(mixed, dtype, gpu_capabilities())
    if mixed and dtype == "auto" and strategy is not None and is_multiworker(strategy):
        if sum_over_workers(strategy, [1.0 if policy == "mixed_float16" else 0.0])[0] > 0 and policy != "mixed_float16":
            policy, why = "mixed_float16", "another worker's GPU has compute capability < 8.0: float16 with loss scaling everywhere"
    keras.mixed_precision.set_global_policy(policy)
    if mixed:
        log.info("mixed precision: %s (%s)", policy, why)
    return policy
