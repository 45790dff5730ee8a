"""How the dispatcher reaches its workers (:class:`Transport`), and local worker processes (:class:`ProcessTransport`)."""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Sequence

from rbln_eval.errors import RblnEvalError
from rbln_eval.execution.devices import format_devices
from rbln_eval.execution.pool.protocol import STOP_TIMEOUT, Ready, Stop, WorkerSpec
from rbln_eval.execution.pool.worker import worker_main

#: The module the local workers' fork server imports once, so that each worker starts without importing.
PRELOAD_MODULE = "rbln_eval.execution.pool.preload"


@dataclass
class Worker:
    """The parent's handle on one worker: its spec, the transport's handle, and what it has reported."""

    spec: WorkerSpec
    handle: Any  # the transport's: (process, connection), or a Ray actor and its message sequence
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

    def __init__(self, worker: Worker, reason: str) -> None:
        super().__init__(reason)
        self.worker = worker
        self.reason = reason


class Transport:
    """How the dispatcher reaches its workers: start them, send to one, hear from any, stop them all.

    A transport whose ``retry_lost`` is true can lose a worker without losing the call: the dispatcher
    gives the lost worker's unfinished items to the others. One that implements :meth:`add` lets a pool
    grow while it runs (:meth:`~rbln_eval.execution.pool.dispatcher.PoolExecutor.grow`).
    """

    retry_lost = False

    def start(self, specs: Sequence[WorkerSpec]) -> list[Worker]:
        raise NotImplementedError

    def add(self, spec: WorkerSpec) -> Worker:
        """Start one more worker; its :class:`Ready` (or its failure) arrives through :meth:`receive`."""
        raise RblnEvalError(f"{type(self).__name__} cannot add workers to a running pool")

    def send(self, worker: Worker, message: Any) -> None:
        """Send ``message``; :class:`WorkerGone` if the worker is gone."""
        raise NotImplementedError

    def receive(self, workers: Sequence[Worker], timeout: float | None) -> tuple[Worker, Any] | None:
        """The next message from any of ``workers`` (None after ``timeout``); :class:`WorkerGone` on a death."""
        raise NotImplementedError

    def stop(self, workers: Sequence[Worker], timeout: float = STOP_TIMEOUT) -> None:
        """Stop every worker: politely for ``timeout`` seconds, then by force."""
        raise NotImplementedError


def exit_text(code: int | None) -> str:
    """How a process ended, from its exit code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def worker_context() -> Any:
    """Workers fork from a server that has imported what they need once (``spawn`` where there is no fork).

    The server is started by the first pool, with the parent's environment at that moment, and serves every
    later pool of the process; each worker then takes the parent's current environment (:class:`WorkerSpec`).
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD_MODULE])
    return context


class ProcessTransport(Transport):
    """Worker processes on this machine, one pipe each."""

    def start(self, specs: Sequence[WorkerSpec]) -> list[Worker]:
        context = worker_context()
        workers = []
        for spec in specs:
            parent_conn, child_conn = context.Pipe()
            process = context.Process(
                target=worker_main, args=(child_conn, spec), name=f"rbln-eval-worker-{spec.index}", daemon=True
            )
            process.start()
            child_conn.close()
            workers.append(Worker(spec, (process, parent_conn)))
        return workers

    def send(self, worker: Worker, message: Any) -> None:
        conn = worker.handle[1]
        try:
            conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            raise self._gone(worker) from None

    def receive(self, workers: Sequence[Worker], timeout: float | None) -> tuple[Worker, Any] | None:
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
    def _gone(worker: Worker) -> WorkerGone:
        process = worker.handle[0]
        process.join(1.0)
        return WorkerGone(worker, exit_text(process.exitcode))

    def stop(self, workers: Sequence[Worker], timeout: float = STOP_TIMEOUT) -> None:
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
