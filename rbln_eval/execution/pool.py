"""Data parallelism: one bundle, K replicas, each in its own worker process on its own group of NPUs.

:class:`PoolExecutor` is the executor of :class:`~rbln_eval.core.lm.BundleLM` for K replicas. The model plans the
requests exactly as for one replica; the pool streams the work items to the workers most costly first:
each worker starts with enough to fill its batch rows and asks for more whenever its queue runs low, so a
worker whose generations stop early simply takes more, and near the end the portions shrink to single
items so that the workers finish together. A worker loads the bundle with ``load_bundle(bundle,
device=group)`` and runs what it is sent on the batch rows of an ordinary :class:`~rbln_eval.core.work.Replica`,
so the scores are those of a single replica; results come back in item order. A local worker that dies
fails the whole call: no partial scores are ever returned. On a transport that can lose workers (Ray's),
a lost worker's unfinished items go to the others instead, and workers can join a running call.

Parent and workers talk in the message types below, one dataclass each.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rbln_eval.execution.devices import format_devices
from rbln_eval.errors import RblnEvalError
from rbln_eval.core.work import ScoreWork, Work
from rbln_eval.execution.local import Replica
from rbln_eval.families.registry import family_of
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.store import Bundle

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 900.0
STOP_TIMEOUT = 10.0
#: On Ctrl-C the workers get this long to stop before they are terminated (their work is thrown away anyway).
INTERRUPT_STOP_TIMEOUT = 0.5
#: A worker asks for more work when fewer items than this wait for a free row.
PREFETCH = 2


class WorkerDiedError(RblnEvalError):
    """A worker process exited while it had work (or while loading); the evaluation has no scores."""


class WorkerFailedError(RblnEvalError):
    """A worker raised an error that is not a user error; its traceback is logged."""


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------

Items = list[tuple[int, Work]]
Results = list[tuple[int, Any]]


@dataclass
class WorkerSpec:
    """What a worker needs, as plain picklable values."""

    index: int
    bundle_path: str
    devices: list[int]  # empty: the worker's RBLN_DEVICES (set by Ray) say where it runs
    threads: int = 1  # torch's intra-op threads; 0 leaves them as the process has them (OMP_NUM_THREADS)
    env: dict[str, str] = field(default_factory=dict)  # the parent's environment when the pool started
    source: Any = None  # where the worker's node gets the bundle (``fetch() -> Bundle``), instead of bundle_path


@dataclass(frozen=True)
class Ready:
    """Worker → parent: the bundle is loaded; where its runtimes are and the replica's shapes."""

    devices: list[int]
    load_seconds: float
    shape: ReplicaShape
    node: str | None = None  # the Ray node, when the worker is a Ray actor


@dataclass(frozen=True)
class Call:
    """Parent → worker: start a call with these items; more follow when asked for."""

    label: str
    items: Items


@dataclass(frozen=True)
class More:
    """Parent → worker: the next items of the current call."""

    items: Items


@dataclass(frozen=True)
class End:
    """Parent → worker: the current call has no more items."""


@dataclass(frozen=True)
class Stop:
    """Parent → worker: exit now."""


@dataclass(frozen=True)
class Want:
    """Worker → parent: results finished so far, and a request for more items."""

    results: Results


@dataclass(frozen=True)
class Done:
    """Worker → parent: the call is over; the last results and the worker's statistics."""

    results: Results
    counters: dict[str, dict[str, int]]
    seconds: float


@dataclass(frozen=True)
class Failed:
    """Worker → parent: an exception ended the worker."""

    name: str
    text: str
    trace: str
    user_error: bool

    @classmethod
    def of(cls, exc: BaseException) -> "Failed":
        return cls(type(exc).__name__, str(exc), traceback.format_exc(), isinstance(exc, RblnEvalError))


# --------------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------------


def _runtime_devices(model: Any, requested: list[int]) -> list[int]:
    """The devices the model's runtimes were placed on (as the SDK reports them), else the requested ones."""
    found: set[int] = set()
    for runtime in getattr(model, "model", None) or []:
        devices = getattr(runtime, "devices", None)
        if devices is None:
            devices = getattr(getattr(runtime, "runtime", None), "devices", None)
        if devices is not None:
            found.update(int(d) for d in devices)
    return sorted(found) or list(requested)


class _Stopped(Exception):
    """The parent asked the worker to stop in the middle of a call."""


def _serve(replica: Replica, conn: Connection, call: Call) -> Results:
    """Run a streamed call: its items first, then whatever the parent sends when asked, until :class:`End`.

    More is asked for (with the results finished so far) as soon as fewer than :data:`PREFETCH` items wait,
    so the next ones arrive while the rows are still busy, and no worker holds on to work another one could
    start sooner. Returns the results not yet sent.
    """
    queue = deque(call.items)
    finished: Results = []
    indices: list[int] = []
    state = {"asked": False, "ended": False}

    def receive(block: bool) -> None:
        while state["asked"] and (block or conn.poll()):
            message = conn.recv()
            if isinstance(message, More):
                queue.extend(message.items)
            elif isinstance(message, End):
                state["ended"] = True
            elif isinstance(message, Stop):
                raise _Stopped
            else:
                raise RuntimeError(f"unexpected {type(message).__name__} during {call.label}")
            state["asked"] = block = False

    def items() -> Iterator[Work]:
        while True:
            receive(block=False)
            if not state["ended"] and not state["asked"] and len(queue) < PREFETCH:
                conn.send(Want(finished.copy()))
                finished.clear()
                state["asked"] = True
            if not queue:
                if state["ended"]:
                    return
                receive(block=True)
                continue
            index, work = queue.popleft()
            indices.append(index)
            yield work

    replica.run(items(), lambda local, value: finished.append((indices[local], value)))
    return finished


def load_replica(spec: WorkerSpec) -> tuple[Replica, Ready]:
    """Load the bundle on the worker's devices (``spec.devices``, else the first ``tp`` of ``RBLN_DEVICES``)."""
    import torch

    from rbln_eval.execution.devices import visible_npus
    from rbln_eval.execution.loader import load_bundle

    if spec.threads:
        torch.set_num_threads(spec.threads)  # workers share the host's cores
    bundle = spec.source.fetch() if spec.source is not None else Bundle.open(Path(spec.bundle_path))
    devices = list(spec.devices) or (visible_npus() or [])[: bundle.key.tensor_parallel]
    loaded = load_bundle(bundle, device=devices or None)
    replica = Replica(loaded)
    return replica, Ready(_runtime_devices(loaded.model, devices), loaded.load_seconds, replica.shape, _node_id())


def _node_id() -> str | None:
    """The Ray node this worker runs on (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - not on Ray
        return None


def serve_calls(replica: Replica, conn: Any) -> None:
    """Serve :class:`Call` messages on ``conn`` (``send``/``recv``/``poll``) until :class:`Stop` or the parent is gone."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(message, Call):
            return
        started = time.monotonic()
        try:
            results = _serve(replica, conn, message)
        except (_Stopped, EOFError, OSError):  # asked to stop, or the parent is gone
            return
        except BaseException as exc:  # noqa: BLE001 - the parent fails the pool on any error
            conn.send(Failed.of(exc))
            return
        conn.send(Done(results, replica.backend.counters.as_dict(), time.monotonic() - started))


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process: load the bundle on ``spec.devices``, then serve calls until told to stop."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
        if spec.env:  # a forked worker has its fork server's environment: take the parent's
            os.environ.clear()
            os.environ.update(spec.env)
        replica, ready = load_replica(spec)
        conn.send(ready)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(Failed.of(exc))
        return
    serve_calls(replica, conn)


# --------------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    spec: WorkerSpec
    handle: Any  # the transport's: (process, connection), or a Ray actor and its pending reply
    ready: Ready | None = None
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    requests: int = 0
    busy_seconds: float = 0.0

    @property
    def process(self) -> Any:
        """The worker's process (workers of :class:`ProcessTransport`)."""
        return self.handle[0]

    @property
    def where(self) -> str:
        devices = self.spec.devices or (self.ready.devices if self.ready else [])
        place = format_devices(devices) if devices else "its RBLN_DEVICES"
        node = f" of node {self.ready.node[:8]}" if self.ready and self.ready.node else ""
        return f"worker {self.spec.index} on {place}{node}"


class WorkerGone(Exception):
    """A worker can no longer be reached; ``reason`` says how it ended."""

    def __init__(self, worker: _Worker, reason: str) -> None:
        super().__init__(reason)
        self.worker = worker
        self.reason = reason


class Transport:
    """How the dispatcher reaches its workers: start them, send to one, hear from any, stop them all.

    A transport whose ``retry_lost`` is true can lose a worker without losing the call: the dispatcher
    gives the lost worker's unfinished items to the others. One that implements :meth:`add` lets a pool
    grow while it runs (:meth:`PoolExecutor.grow`).
    """

    retry_lost = False

    def start(self, specs: Sequence[WorkerSpec]) -> list[_Worker]:
        raise NotImplementedError

    def add(self, spec: WorkerSpec) -> _Worker:
        """Start one more worker; its :class:`Ready` (or its failure) arrives through :meth:`receive`."""
        raise RblnEvalError(f"{type(self).__name__} cannot add workers to a running pool")

    def send(self, worker: _Worker, message: Any) -> None:
        """Send ``message``; :class:`WorkerGone` if the worker is gone."""
        raise NotImplementedError

    def receive(self, workers: Sequence[_Worker], timeout: float | None) -> tuple[_Worker, Any] | None:
        """The next message from any of ``workers`` (None after ``timeout``); :class:`WorkerGone` on a death."""
        raise NotImplementedError

    def stop(self, workers: Sequence[_Worker], timeout: float = STOP_TIMEOUT) -> None:
        """Stop every worker: politely for ``timeout`` seconds, then by force."""
        raise NotImplementedError


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _worker_context() -> Any:
    """Workers fork from a server that has imported what they need once (``spawn`` where there is no fork).

    The server is started by the first pool, with the parent's environment at that moment, and serves every
    later pool of the process; each worker then takes the parent's current environment (:class:`WorkerSpec`).
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["rbln_eval.execution.preload"])
    return context


class ProcessTransport(Transport):
    """Worker processes on this machine, one pipe each."""

    def start(self, specs: Sequence[WorkerSpec]) -> list[_Worker]:
        context = _worker_context()
        workers = []
        for spec in specs:
            parent_conn, child_conn = context.Pipe()
            process = context.Process(
                target=worker_main, args=(child_conn, spec), name=f"rbln-eval-worker-{spec.index}", daemon=True
            )
            process.start()
            child_conn.close()
            workers.append(_Worker(spec, (process, parent_conn)))
        return workers

    def send(self, worker: _Worker, message: Any) -> None:
        process, conn = worker.handle
        try:
            conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            raise self._gone(worker) from None

    def receive(self, workers: Sequence[_Worker], timeout: float | None) -> tuple[_Worker, Any] | None:
        waiting = [w.handle[1] for w in workers] + [w.handle[0].sentinel for w in workers]
        ready = wait(waiting, timeout=timeout)
        if not ready:
            return None
        for worker in workers:
            process, conn = worker.handle
            if conn in ready or conn.poll():
                try:
                    return worker, conn.recv()
                except (EOFError, OSError):
                    pass
            if process.sentinel in ready or not process.is_alive():
                raise self._gone(worker)
        return self.receive(workers, timeout)

    @staticmethod
    def _gone(worker: _Worker) -> WorkerGone:
        process = worker.handle[0]
        process.join(1.0)
        return WorkerGone(worker, _exit_text(process.exitcode))

    def stop(self, workers: Sequence[_Worker], timeout: float = STOP_TIMEOUT) -> None:
        for worker in workers:
            process, conn = worker.handle
            if process.is_alive():
                try:
                    conn.send(Stop())
                except (BrokenPipeError, EOFError, OSError):
                    pass
        deadline = time.monotonic() + timeout
        for worker in workers:
            process, conn = worker.handle
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            conn.close()


def _label(items: Sequence[Work]) -> str:
    return "loglikelihood" if isinstance(items[0], ScoreWork) else "generate_until"


class PoolExecutor:
    """K workers started together; :meth:`run` shares a call's items among them, pulled as their rows free up.

    ``groups`` places one worker per device group on this machine (:class:`ProcessTransport`); a
    ``transport`` such as :class:`~rbln_eval.execution.ray_transport.RayTransport` places them elsewhere, ``groups``
    then being empty lists (each worker learns its devices where it runs). With such a transport the pool
    can :meth:`grow` while it runs, and a worker that is lost only hands its unfinished items to the others.
    """

    def __init__(
        self, bundle: Bundle, groups: Sequence[Sequence[int]], transport: Transport | None = None, source: Any = None,
    ) -> None:
        """``source`` (``fetch() -> Bundle``) gets the bundle on each worker's node, when it may have to be pulled there."""
        if not groups:
            raise RblnEvalError("data parallelism needs at least one device group")
        from rbln_eval.execution.loader import load_tokenizer

        started = time.monotonic()
        self.bundle = bundle
        self.family = family_of(bundle.key.model_class)
        self.transport = transport or ProcessTransport()
        self.tokenizer = load_tokenizer(bundle)
        self.workers: list[_Worker] = []
        self.joining: list[_Worker] = []  # added by grow(), not loaded yet
        self.lost: list[str] = []  # how the workers that were given up on ended
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._queue: deque[int] = deque()  # the running call's items not handed out yet
        self._pace: tuple[float, int] = (0.0, 0)  # the running call's start, and its items finished so far
        self._threads = max(1, (os.cpu_count() or 1) // len(groups))
        self._source = source
        specs = [
            WorkerSpec(index, str(bundle.path), list(group), self._threads, dict(os.environ), source)
            for index, group in enumerate(groups)
        ]
        try:
            self.workers = self.transport.start(specs)
            pending = list(self.workers)
            for worker, message in self._messages(pending, "load", STARTUP_TIMEOUT):
                if not isinstance(message, Ready):
                    raise self._fail(f"{worker.where} sent {type(message).__name__} while loading", WorkerFailedError)
                worker.ready = message
                pending.remove(worker)
                if not pending:
                    break
        except BaseException:
            self.close()
            raise
        self.shape = self._ready(self.workers[0]).shape
        self.load_seconds = time.monotonic() - started

    @staticmethod
    def _ready(worker: _Worker) -> Ready:
        assert worker.ready is not None
        return worker.ready

    @property
    def groups(self) -> list[list[int]]:
        """The devices of each loaded worker."""
        return [list(self._ready(worker).devices) for worker in self.workers]

    @property
    def data_parallel(self) -> int:
        return len(self.workers)

    def pending(self) -> int:
        """Items of the running call not yet handed to a worker (0 between calls)."""
        return len(self._queue)

    def remaining_seconds(self) -> float:
        """How long the running call's items not yet handed out would take at its pace so far (0 if unknown)."""
        started, finished = self._pace
        waiting = len(self._queue)
        if not waiting or not finished:
            return 0.0
        return waiting * (time.monotonic() - started) / finished

    def grow(self) -> None:
        """Start one more worker; it joins the running call (or the next one) once it has loaded."""
        with self._lock:
            index = len(self.workers) + len(self.joining) + len(self.lost)
            spec = WorkerSpec(index, str(self.bundle.path), [], self._threads, dict(os.environ), self._source)
            self.joining.append(self.transport.add(spec))

    def _fail(self, message: str, cls: type[RblnEvalError] = WorkerDiedError) -> RblnEvalError:
        self.broken = message
        self.close()
        return cls(message)

    def _died(self, gone: WorkerGone, what: str) -> RblnEvalError:
        return self._fail(
            f"{gone.worker.where} died during {what} ({gone.reason}); the evaluation was stopped and no scores were reported"
        )

    def _messages(self, workers: Sequence[_Worker], what: str, timeout: float | None = None) -> Iterator[tuple[_Worker, Any]]:
        """Messages from ``workers`` as they arrive; a death, a failure or ``timeout`` without one fails the pool."""
        while True:
            try:
                received = self.transport.receive(workers, timeout)
            except WorkerGone as gone:
                raise self._died(gone, what) from None
            if received is None:
                names = ", ".join(w.where for w in workers)
                raise self._fail(f"{names}: no answer to {what} after {timeout:.0f}s")
            worker, message = received
            if isinstance(message, Failed):
                self._raise_failed(worker, message, what)
            yield worker, message

    def _raise_failed(self, worker: _Worker, failed: Failed, what: str) -> None:
        if failed.user_error:
            raise self._fail(f"{worker.where}: {failed.text}", RblnEvalError)
        logger.error("%s failed during %s:\n%s", worker.where, what, failed.trace)
        raise self._fail(f"{worker.where} failed during {what}: {failed.name}: {failed.text}", WorkerFailedError)

    def _send(self, worker: _Worker, message: Any, what: str) -> None:
        try:
            self.transport.send(worker, message)
        except WorkerGone as gone:
            raise self._died(gone, what) from None

    def _joined(self, worker: _Worker, message: Any) -> bool:
        """Handle a message of a worker added by :meth:`grow`; True once it is loaded and one of the pool."""
        with self._lock:
            self.joining.remove(worker)
            if isinstance(message, Ready) and message.shape == self.shape:
                worker.ready = message
                self.workers.append(worker)
                return True
            reason = message.text if isinstance(message, Failed) else f"sent {type(message).__name__} while loading"
            self.lost.append(f"{worker.where}: {reason}")
        logger.warning("an added replica did not start (%s); the pool goes on without it", reason)
        return False

    def run(
        self,
        items: Sequence[Work],
        costs: Sequence[int],
        sizes: Sequence[int],
        on_done: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Run ``items`` on the workers, most costly first, each worker asking for more as it frees up.

        ``sizes`` counts the requests in each item for the workers' statistics and ``on_done``, which is
        called with the number of requests whose results just came back. Results are in item order.
        """
        if self.broken:
            raise WorkerDiedError(f"the worker pool is not usable: {self.broken}")
        if not items:
            return []
        try:
            return self._run(items, costs, sizes, on_done)
        except KeyboardInterrupt:
            self.broken = "interrupted"
            self.close(INTERRUPT_STOP_TIMEOUT)
            raise
        finally:
            self._queue, self._pace = deque(), (0.0, 0)

    def _run(
        self, items: Sequence[Work], costs: Sequence[int], sizes: Sequence[int], on_done: Callable[[int], None] | None,
    ) -> list[Any]:
        label = _label(items)
        queue = self._queue = deque(sorted(range(len(items)), key=lambda i: (-costs[i], i)))
        self._pace = (time.monotonic(), 0)
        results: list[Any] = [None] * len(items)
        received = [False] * len(items)
        held: dict[int, set[int]] = {}  # worker index -> items sent to it whose results have not come back
        batch = max(1, self.shape.batch_size)
        active: list[_Worker] = []

        def portion(worker: _Worker, count: int) -> Items:
            chosen = [queue.popleft() for _ in range(min(count, len(queue)))]
            worker.requests += sum(sizes[i] for i in chosen)
            held.setdefault(worker.spec.index, set()).update(chosen)
            return [(i, items[i]) for i in chosen]

        def accept(worker: _Worker, finished: Results) -> None:
            mine = held.get(worker.spec.index, set())
            for index, result in finished:
                if index not in mine or received[index]:
                    raise self._fail(f"{worker.where} returned a result for a request it was not sent", WorkerFailedError)
                mine.discard(index)
                results[index], received[index] = result, True
            self._pace = (self._pace[0], self._pace[1] + len(finished))
            if on_done is not None and finished:
                on_done(sum(sizes[i] for i, _ in finished))

        def begin(worker: _Worker, count: int) -> None:
            self._send(worker, Call(label, portion(worker, count)), label)
            active.append(worker)

        def next_count() -> int:  # guided portions: up to a batch while plenty is left, single items towards the end
            return max(1, min(batch, len(queue) // (4 * len(self.workers))))

        first = min(batch + 1, math.ceil(len(queue) / len(self.workers)))  # fill the rows, keep one waiting
        for worker in list(self.workers):
            if not queue:
                break
            begin(worker, first)
        while active or (queue and self.joining):
            try:
                got = self.transport.receive(active + self.joining, None)
            except WorkerGone as gone:
                self._lose(gone, label, active, held, queue)
                for idle in [w for w in self.workers if w not in active]:
                    if queue:
                        begin(idle, first)
                continue
            if got is None:
                continue
            worker, message = got
            if worker in self.joining:
                if self._joined(worker, message) and queue:
                    begin(worker, first)
                continue
            if worker not in active:
                continue  # a late word from a worker given up on
            if isinstance(message, Failed):
                self._raise_failed(worker, message, label)
            elif isinstance(message, Want):
                accept(worker, message.results)
                self._send(worker, More(portion(worker, next_count())) if queue else End(), label)
            elif isinstance(message, Done):
                accept(worker, message.results)
                worker.counters = message.counters
                worker.busy_seconds += message.seconds
                active.remove(worker)
            else:
                raise self._fail(f"{worker.where} sent an unexpected {type(message).__name__} during {label}", WorkerFailedError)
        if not all(received):
            raise self._fail(f"{received.count(False)} request(s) of {label} came back without a result", WorkerFailedError)
        return results

    def _lose(self, gone: WorkerGone, label: str, active: list[_Worker], held: dict[int, set[int]], queue: deque[int]) -> None:
        """A worker is gone: fail the call, or (``retry_lost``, others left) hand its unfinished items back."""
        worker = gone.worker
        with self._lock:
            if worker in self.joining:  # an added replica that never loaded: the pool goes on as it was
                self.joining.remove(worker)
                self.lost.append(f"{worker.where}: {gone.reason}")
                return
            others = [w for w in self.workers if w is not worker]
            if not self.transport.retry_lost or not (others or self.joining):
                raise self._died(gone, label)
            self.workers.remove(worker)
            self.lost.append(f"{worker.where}: {gone.reason}")
        if worker in active:
            active.remove(worker)
        unfinished = sorted(held.pop(worker.spec.index, set()))
        queue.extendleft(reversed(unfinished))
        logger.warning("%s was lost during %s (%s); its %d unfinished item(s) go to the other replicas",
                       worker.where, label, gone.reason, len(unfinished))

    def counters(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for worker in self.workers:
            for graph, counter in worker.counters.items():
                entry = total.setdefault(graph, {"calls": 0, "tokens": 0})
                entry["calls"] += counter["calls"]
                entry["tokens"] += counter["tokens"]
        return dict(sorted(total.items()))

    def describe(self) -> dict[str, Any]:
        """The replicas: devices, requests and device counters of each (and the ones lost on the way)."""
        return {
            "data_parallel": self.data_parallel,
            "workers": [
                {
                    "devices": list(self._ready(worker).devices),
                    **({"node": self._ready(worker).node} if self._ready(worker).node else {}),
                    "load_seconds": round(self._ready(worker).load_seconds, 3),
                    "requests": worker.requests,
                    "busy_seconds": round(worker.busy_seconds, 3),
                    "device_counters": worker.counters,
                }
                for worker in self.workers
            ],
            **({"lost": list(self.lost)} if self.lost else {}),
        }

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every worker (politely for ``timeout`` seconds, then by force)."""
        with self._lock:
            workers, self.joining = self.workers + self.joining, []
        self.transport.stop(workers, timeout)
