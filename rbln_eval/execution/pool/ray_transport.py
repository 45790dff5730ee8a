"""Data-parallel replicas on a Ray cluster: the pool's dispatcher, with Ray actors as its workers.

Each replica is an actor that asks Ray for ``{"RBLN": tp}``; Ray places it on a node with that many free
NPUs and sets ``RBLN_DEVICES`` to the ids it was given, and the replica loads the bundle on exactly those.
The actor runs the same worker loop as a local worker process (:func:`~rbln_eval.execution.pool.worker.serve_calls`),
so work is pulled as batch rows free up and the scores are those of one replica. Messages travel as actor
calls: ``push`` delivers the dispatcher's messages in order, a pending ``pull`` brings the next reply.

Ray is an optional dependency (``pip install rbln-eval[ray]``). The bundle directory must be readable on
every node at the same path (a shared filesystem), unless the pool is given a ``source`` that gets it there
(a sweep's node store and remote).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Sequence

from rbln_eval.execution.pool.protocol import STOP_TIMEOUT, Failed, Stop, WorkerSpec
from rbln_eval.execution.pool.transport import Transport, Worker, WorkerGone
from rbln_eval.execution.pool.worker import load_replica, serve_calls
from rbln_eval.errors import RayUnavailableError

#: Environment passed to the actors: rbln-eval's and the Hub's settings (never RBLN_DEVICES: Ray sets it).
_FORWARDED_PREFIXES = ("RBLN_EVAL_", "HF_", "TOKENIZERS_", "OMP_NUM_THREADS")


def forwarded_env() -> dict[str, str]:
    """The environment Ray tasks and actors get from this process (RBLN_DEVICES is Ray's to set)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}


def require_ray() -> Any:
    """The ``ray`` module; :class:`RayUnavailableError` when Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("Ray is not installed", "pip install 'rbln-eval[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to; None: start one here)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(
            f"cannot reach the Ray cluster at {address or 'a new local cluster'} ({exc})",
            "start one with `ray start --head`, or pass its address",
        ) from None


class _Inbox:
    """The actor's side of the dispatcher's connection: ``recv``/``poll`` in push order, ``send`` to the outbox."""

    def __init__(self) -> None:
        self._messages: dict[int, Any] = {}
        self._next = 0
        self._ready = threading.Condition()
        self.outbox: queue.Queue[Any] = queue.Queue()

    def put(self, seq: int, message: Any) -> None:
        with self._ready:
            self._messages[seq] = message
            self._ready.notify_all()

    def recv(self) -> Any:
        with self._ready:
            self._ready.wait_for(lambda: self._next in self._messages)
            message = self._messages.pop(self._next)
            self._next += 1
            return message

    def poll(self) -> bool:
        with self._ready:
            return self._next in self._messages

    def send(self, message: Any) -> None:
        self.outbox.put(message)


class ReplicaActor:
    """One replica: loads the bundle on its ``RBLN_DEVICES`` in a thread, then serves the dispatcher's calls.

    As a Ray actor it runs in a process of its own; :class:`RayTransport` also runs one in the calling
    process (``here``), on the devices Ray gave the task that holds it.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.inbox = _Inbox()
        self._loaded = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(spec,), name="rbln-eval-replica", daemon=True)
        self.thread.start()

    def _main(self, spec: WorkerSpec) -> None:
        try:
            replica, ready = load_replica(spec)
            self.inbox.send(ready)
            self._loaded.set()
        except BaseException as exc:  # noqa: BLE001 - reported to the dispatcher
            self.inbox.send(Failed.of(exc))
            return
        serve_calls(replica, self.inbox)

    def push(self, seq: int, message: Any) -> None:
        self.inbox.put(seq, message)

    def pull(self) -> Any:
        return self.inbox.outbox.get()

    def loaded(self, timeout: float = 0.0) -> bool:
        """Whether the bundle is loaded (waiting up to ``timeout`` seconds for it)."""
        return self._loaded.wait(timeout)


class _Gone:
    """What a worker's pump reports when the worker can no longer be reached."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_CLOSED = object()  # ends the pump of an in-process replica


class RayTransport(Transport):
    """Workers as Ray actors of ``{"RBLN": tp}`` each, on whichever nodes Ray chooses.

    With ``here`` the first worker is a replica in this process, on this process's ``RBLN_DEVICES``: the
    devices of the Ray task that runs it. Every worker's replies are pumped into one queue by a thread of
    its own, so the dispatcher hears from whichever speaks first and workers can be added at any time. A
    lost worker does not lose the call (``retry_lost``): its unfinished items go to the other workers.
    """

    retry_lost = True

    def __init__(self, address: str | None, tp: int, *, here: bool = False) -> None:
        connect(address)
        self.tp = tp
        self.here = here
        self._arrivals: queue.Queue[tuple[Worker, Any]] = queue.Queue()

    def start(self, specs: Sequence[WorkerSpec]) -> list[Worker]:
        return [self._start(spec, local=self.here and position == 0) for position, spec in enumerate(specs)]

    def add(self, spec: WorkerSpec) -> Worker:
        return self._start(spec, local=False)

    def _start(self, spec: WorkerSpec, local: bool) -> Worker:
        ray = require_ray()
        bare = WorkerSpec(spec.index, spec.bundle_path, [], 0, {}, spec.source)  # Ray sets OMP_NUM_THREADS to what it allotted
        if local:
            replica = ReplicaActor(bare)
            worker = Worker(bare, {"local": replica, "seq": 0, "stopped": False})
            pull = replica.pull
        else:
            actor = ray.remote(ReplicaActor).options(
                resources={"RBLN": self.tp}, num_cpus=0, max_concurrency=4, runtime_env={"env_vars": forwarded_env()},
            ).remote(bare)
            worker = Worker(bare, {"actor": actor, "seq": 0, "stopped": False})

            def pull() -> Any:
                return ray.get(actor.pull.remote())

        threading.Thread(target=self._pump, args=(worker, pull), name="rbln-eval-pump", daemon=True).start()
        return worker

    def _pump(self, worker: Worker, pull: Any) -> None:
        ray = require_ray()
        while True:
            try:
                message = pull()
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if not worker.handle["stopped"]:
                    self._arrivals.put((worker, _Gone(f"its actor is gone: {type(exc).__name__}")))
                return
            except Exception as exc:  # noqa: BLE001 - Ray itself is going away
                if not worker.handle["stopped"]:
                    self._arrivals.put((worker, _Gone(f"{type(exc).__name__}: {exc}")))
                return
            if message is _CLOSED:
                return
            self._arrivals.put((worker, message))
            if isinstance(message, Failed):
                return

    def send(self, worker: Worker, message: Any) -> None:
        handle = worker.handle
        if "local" in handle:
            handle["local"].push(handle["seq"], message)
        else:
            handle["actor"].push.remote(handle["seq"], message)
        handle["seq"] += 1

    def receive(self, workers: Sequence[Worker], timeout: float | None) -> tuple[Worker, Any] | None:
        try:
            worker, message = self._arrivals.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(message, _Gone):
            raise WorkerGone(worker, message.reason)
        return worker, message

    def stop(self, workers: Sequence[Worker], timeout: float = STOP_TIMEOUT) -> None:
        ray = require_ray()
        for worker in workers:
            worker.handle["stopped"] = True
            try:
                self.send(worker, Stop())
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
        deadline = time.monotonic() + timeout
        for worker in workers:
            if "local" in worker.handle:  # the replica's runtimes are released before this task's devices are
                replica = worker.handle["local"]
                replica.thread.join(max(0.0, deadline - time.monotonic()))
                replica.inbox.send(_CLOSED)
                continue
            try:
                ray.kill(worker.handle["actor"], no_restart=True)
            except Exception:  # noqa: BLE001
                pass
