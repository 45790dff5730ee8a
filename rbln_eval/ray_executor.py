"""Data-parallel replicas on a Ray cluster: the pool's dispatcher, with Ray actors as its workers.

Each replica is an actor that asks Ray for ``{"RBLN": tp}``; Ray places it on a node with that many free
NPUs and sets ``RBLN_DEVICES`` to the ids it was given, and the replica loads the bundle on exactly those.
The actor runs the same worker loop as a local worker process (:func:`rbln_eval.parallel.serve_calls`),
so work is pulled as batch rows free up and the scores are those of one replica. Messages travel as actor
calls: ``push`` delivers the dispatcher's messages in order, a pending ``pull`` brings the next reply.

Ray is an optional dependency (``pip install rbln-eval[ray]``). The bundle directory must be readable on
every node at the same path (a shared filesystem).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Sequence

from .errors import RblnEvalError
from .parallel import Failed, Stop, Transport, WorkerGone, WorkerSpec, _Worker, load_replica, serve_calls

#: Environment passed to the actors: rbln-eval's and the Hub's settings (never RBLN_DEVICES: Ray sets it).
_FORWARDED_PREFIXES = ("RBLN_EVAL_", "HF_", "TOKENIZERS_", "OMP_NUM_THREADS")
STOP_TIMEOUT = 10.0


def forwarded_env() -> dict[str, str]:
    """The environment Ray tasks and actors get from this process (RBLN_DEVICES is Ray's to set)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIXES)}


class RayUnavailableError(RblnEvalError):
    """Ray is not installed, or the cluster cannot be reached."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("Ray is not installed", "pip install 'rbln-eval[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to; None: start one here)."""
    ray = _ray()
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
    """One replica: loads the bundle on its ``RBLN_DEVICES`` in a thread, then serves the dispatcher's calls."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.inbox = _Inbox()
        threading.Thread(target=self._main, args=(spec,), name="rbln-eval-replica", daemon=True).start()

    def _main(self, spec: WorkerSpec) -> None:
        try:
            replica, ready = load_replica(spec)
            self.inbox.send(ready)
        except BaseException as exc:  # noqa: BLE001 - reported to the dispatcher
            self.inbox.send(Failed.of(exc))
            return
        serve_calls(replica, self.inbox)

    def push(self, seq: int, message: Any) -> None:
        self.inbox.put(seq, message)

    def pull(self) -> Any:
        return self.inbox.outbox.get()

    def devices(self) -> str | None:
        return os.environ.get("RBLN_DEVICES")


class RayTransport(Transport):
    """Workers as Ray actors of ``{"RBLN": tp}`` each, on whichever nodes Ray chooses."""

    def __init__(self, address: str | None, tp: int) -> None:
        connect(address)
        self.tp = tp

    def start(self, specs: Sequence[WorkerSpec]) -> list[_Worker]:
        ray = _ray()
        env = forwarded_env()
        actor_class = ray.remote(ReplicaActor)
        workers = []
        for spec in specs:
            bare = WorkerSpec(spec.index, spec.bundle_path, [], spec.threads, {})
            actor = actor_class.options(
                resources={"RBLN": self.tp}, num_cpus=0, max_concurrency=4, runtime_env={"env_vars": env},
                name=None,
            ).remote(bare)
            workers.append(_Worker(bare, {"actor": actor, "pull": actor.pull.remote(), "seq": 0}))
        return workers

    def send(self, worker: _Worker, message: Any) -> None:
        handle = worker.handle
        handle["actor"].push.remote(handle["seq"], message)
        handle["seq"] += 1

    def receive(self, workers: Sequence[_Worker], timeout: float | None) -> tuple[_Worker, Any] | None:
        ray = _ray()
        pending = {worker.handle["pull"]: worker for worker in workers}
        done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        if not done:
            return None
        worker = pending[done[0]]
        try:
            message = ray.get(done[0])
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise WorkerGone(worker, f"its actor is gone: {type(exc).__name__}") from None
        worker.handle["pull"] = worker.handle["actor"].pull.remote()
        return worker, message

    def stop(self, workers: Sequence[_Worker], timeout: float = STOP_TIMEOUT) -> None:
        ray = _ray()
        for worker in workers:
            try:
                self.send(worker, Stop())
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                ray.kill(worker.handle["actor"], no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            if time.monotonic() > deadline:
                break
