"""The pull dispatcher: one bundle, K replicas, each in a worker of its own on its own group of NPUs.

:class:`PoolExecutor` is the executor of :class:`~rbln_eval.core.lm.BundleLM` for K replicas. The model plans the
requests exactly as for one replica; the pool streams the work items to the workers most costly first:
each worker starts with enough to fill its batch rows and asks for more whenever its queue runs low, so a
worker whose generations stop early simply takes more, and near the end the portions shrink to single
items so that the workers finish together. Results come back in item order. A local worker that dies
fails the whole call: no partial scores are ever returned. On a transport that can lose workers (Ray's),
a lost worker's unfinished items go to the others instead, and workers can join a running call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from rbln_eval.core.work import Work
from rbln_eval.errors import RblnEvalError
from rbln_eval.execution.pool.call_state import CallState
from rbln_eval.execution.pool.protocol import (
    STOP_TIMEOUT,
    Call,
    Done,
    End,
    Failed,
    More,
    Ready,
    Results,
    Want,
    WorkerSpec,
)
from rbln_eval.errors import WorkerDiedError, WorkerFailedError
from rbln_eval.execution.pool.transport import ProcessTransport, Transport, Worker, WorkerGone
from rbln_eval.families.registry import family_of
from rbln_eval.store import Bundle

logger = logging.getLogger(__name__)

#: How long the workers get to load the bundle, in seconds.
STARTUP_TIMEOUT = 900.0
#: On Ctrl-C the workers get this long to stop before they are terminated (their work is thrown away anyway).
INTERRUPT_STOP_TIMEOUT = 0.5


class PoolExecutor:
    """K workers started together; :meth:`run` shares a call's items among them, pulled as their rows free up.

    ``groups`` places one worker per device group on this machine (:class:`ProcessTransport`); a
    ``transport`` such as :class:`~rbln_eval.execution.pool.ray_transport.RayTransport` places them elsewhere,
    ``groups`` then being empty lists (each worker learns its devices where it runs). With such a transport
    the pool can :meth:`grow` while it runs, and a worker that is lost only hands its unfinished items to the others.
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
        self.workers: list[Worker] = []
        self.joining: list[Worker] = []  # added by grow(), not loaded yet
        self.lost: list[str] = []  # how the workers that were given up on ended
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._call: CallState | None = None  # the running call
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
    def _ready(worker: Worker) -> Ready:
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
        call = self._call
        return len(call.queue) if call is not None else 0

    def remaining_seconds(self) -> float:
        """How long the running call's items not yet handed out would take at its pace so far (0 if unknown)."""
        call = self._call
        return call.remaining_seconds() if call is not None else 0.0

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

    def _messages(self, workers: Sequence[Worker], what: str, timeout: float | None = None) -> Iterator[tuple[Worker, Any]]:
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

    def _raise_failed(self, worker: Worker, failed: Failed, what: str) -> None:
        if failed.user_error:
            raise self._fail(f"{worker.where}: {failed.text}", RblnEvalError)
        logger.error("%s failed during %s:\n%s", worker.where, what, failed.trace)
        raise self._fail(f"{worker.where} failed during {what}: {failed.name}: {failed.text}", WorkerFailedError)

    def _send(self, worker: Worker, message: Any, what: str) -> None:
        try:
            self.transport.send(worker, message)
        except WorkerGone as gone:
            raise self._died(gone, what) from None

    def _joined(self, worker: Worker, message: Any) -> bool:
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
            self._call = CallState(items, costs, sizes, on_done, max(1, self.shape.batch_size), len(self.workers))
            return self._run(self._call)
        except KeyboardInterrupt:
            self.broken = "interrupted"
            self.close(INTERRUPT_STOP_TIMEOUT)
            raise
        finally:
            self._call = None

    def _begin(self, call: CallState, worker: Worker) -> None:
        self._send(worker, Call(call.label, call.portion(worker, call.first)), call.label)
        call.active.append(worker)

    def _accept(self, call: CallState, worker: Worker, results: Results) -> None:
        if not call.accept(worker, results):
            raise self._fail(f"{worker.where} returned a result for a request it was not sent", WorkerFailedError)

    def _run(self, call: CallState) -> list[Any]:
        label = call.label
        for worker in list(self.workers):
            if not call.queue:
                break
            self._begin(call, worker)
        while call.active or (call.queue and self.joining):
            try:
                got = self.transport.receive(call.active + self.joining, None)
            except WorkerGone as gone:
                self._lose(gone, call)
                for idle in [w for w in self.workers if w not in call.active]:
                    if call.queue:
                        self._begin(call, idle)
                continue
            if got is None:
                continue
            worker, message = got
            if worker in self.joining:
                if self._joined(worker, message) and call.queue:
                    self._begin(call, worker)
                continue
            if worker not in call.active:
                continue  # a late word from a worker given up on
            if isinstance(message, Failed):
                self._raise_failed(worker, message, label)
            elif isinstance(message, Want):
                self._accept(call, worker, message.results)
                more = More(call.portion(worker, call.next_count(len(self.workers)))) if call.queue else End()
                self._send(worker, more, label)
            elif isinstance(message, Done):
                self._accept(call, worker, message.results)
                worker.counters = message.counters
                worker.busy_seconds += message.seconds
                call.active.remove(worker)
            else:
                raise self._fail(f"{worker.where} sent an unexpected {type(message).__name__} during {label}", WorkerFailedError)
        if call.missing():
            raise self._fail(f"{call.missing()} request(s) of {label} came back without a result", WorkerFailedError)
        return call.results

    def _lose(self, gone: WorkerGone, call: CallState) -> None:
        """A worker is gone: fail the call, or (``retry_lost``, others left) hand its unfinished items back."""
        worker = gone.worker
        with self._lock:
            if worker in self.joining:  # an added replica that never loaded: the pool goes on as it was
                self.joining.remove(worker)
                self.lost.append(f"{worker.where}: {gone.reason}")
                return
            others = [w for w in self.workers if w is not worker]
            if not self.transport.retry_lost or not (others or self.joining):
                raise self._died(gone, call.label)
            self.workers.remove(worker)
            self.lost.append(f"{worker.where}: {gone.reason}")
        unfinished = call.give_back(worker)
        logger.warning("%s was lost during %s (%s); its %d unfinished item(s) go to the other replicas",
                       worker.where, call.label, gone.reason, unfinished)

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
