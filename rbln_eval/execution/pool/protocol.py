"""What the pool's parent and its workers say to each other: one dataclass per message, and how a worker fails.

The parent sends :class:`Call`, :class:`More`, :class:`End` and :class:`Stop`; a worker answers
:class:`Ready` once loaded, :class:`Want` when it runs low, :class:`Done` at the end of a call, and
:class:`Failed` when an exception ends it. Every message is plain and picklable, so that it can cross
a pipe or a Ray actor call alike.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.work import Work
from rbln_eval.errors import RblnEvalError

#: How long workers get to stop politely before they are stopped by force, in seconds.
STOP_TIMEOUT = 10.0

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
    def of(cls, exc: BaseException) -> Failed:
        return cls(type(exc).__name__, str(exc), traceback.format_exc(), isinstance(exc, RblnEvalError))
