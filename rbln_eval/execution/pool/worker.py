"""What runs inside a worker: load the bundle on the worker's devices, then serve the parent's calls.

A local worker process runs :func:`worker_main`; a Ray replica actor runs :func:`load_replica` and
:func:`serve_calls` itself, over a connection of its own. Either way the items run on the batch rows of an
ordinary :class:`~rbln_eval.execution.local.Replica`, so the scores are those of a single replica.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

from rbln_eval.core.work import Work
from rbln_eval.execution.local import Replica
from rbln_eval.execution.pool.protocol import Call, Done, End, Failed, More, Ready, Results, Stop, Want, WorkerSpec
from rbln_eval.store import Bundle

#: A worker asks for more work when fewer items than this wait for a free row.
PREFETCH = 2


def ray_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray); Ray is never imported for the question."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - not on Ray after all
        return None


def _runtime_devices(model: Any, requested: list[int]) -> list[int]:
    """The devices the model's runtimes were placed on (as the SDK reports them), else the requested ones."""
    found: set[int] = set()
    runtimes = getattr(model, "model", None)  # a list of runtimes (Whisper keeps a torch module there instead)
    for runtime in runtimes if isinstance(runtimes, (list, tuple)) else []:
        devices = getattr(runtime, "devices", None)
        if devices is None:
            devices = getattr(getattr(runtime, "runtime", None), "devices", None)
        if devices is not None:
            found.update(int(d) for d in devices)
    return sorted(found) or list(requested)


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
    return replica, Ready(_runtime_devices(loaded.model, devices), loaded.load_seconds, replica.shape, ray_node_id())


class _Stopped(Exception):
    """The parent asked the worker to stop in the middle of a call."""


class _StreamedCall:
    """One call's items as the replica's rows take them, asking the parent for more as the queue runs low.

    More is asked for (with the results finished so far) as soon as fewer than :data:`PREFETCH` items wait,
    so the next ones arrive while the rows are still busy, and no worker holds on to work another one could
    start sooner. ``finished`` holds the results not yet sent.
    """

    def __init__(self, conn: Any, call: Call) -> None:
        self.conn = conn
        self.label = call.label
        self.queue = deque(call.items)
        self.finished: Results = []
        self.indices: list[int] = []  # the call's item index of each item handed to the replica, in order
        self.asked = False  # a Want is out and its answer has not arrived
        self.ended = False

    def receive(self, block: bool) -> None:
        """Take the parent's answer to the last Want, if it has arrived (waiting for it with ``block``)."""
        while self.asked and (block or self.conn.poll()):
            message = self.conn.recv()
            if isinstance(message, More):
                self.queue.extend(message.items)
            elif isinstance(message, End):
                self.ended = True
            elif isinstance(message, Stop):
                raise _Stopped
            else:
                raise RuntimeError(f"unexpected {type(message).__name__} during {self.label}")
            self.asked = block = False

    def items(self) -> Iterator[Work]:
        while True:
            self.receive(block=False)
            if not self.ended and not self.asked and len(self.queue) < PREFETCH:
                self.conn.send(Want(self.finished.copy()))
                self.finished.clear()
                self.asked = True
            if not self.queue:
                if self.ended:
                    return
                self.receive(block=True)
                continue
            index, work = self.queue.popleft()
            self.indices.append(index)
            yield work

    def finish(self, position: int, value: Any) -> None:
        self.finished.append((self.indices[position], value))


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
        stream = _StreamedCall(conn, message)
        try:
            replica.run(stream.items(), stream.finish)
        except (_Stopped, EOFError, OSError):  # asked to stop, or the parent is gone
            return
        except BaseException as exc:  # noqa: BLE001 - the parent fails the pool on any error
            conn.send(Failed.of(exc))
            return
        conn.send(Done(stream.finished, replica.backend.counters.as_dict(), time.monotonic() - started))


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
