"""One call of the pool: its items not handed out yet, what each worker holds, and the results so far."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Sequence

from rbln_eval.core.work import ScoreWork, Work
from rbln_eval.execution.pool.protocol import Items, Results
from rbln_eval.execution.pool.transport import Worker


def call_label(items: Sequence[Work]) -> str:
    """The lm_eval request type of a call's items."""
    return "loglikelihood" if isinstance(items[0], ScoreWork) else "generate_until"


class CallState:
    """The items of one :meth:`~rbln_eval.execution.pool.dispatcher.PoolExecutor.run`, handed out most costly first.

    ``sizes`` counts the requests in each item, for the workers' statistics and ``on_done``, which hears
    how many requests' results just came back. A worker first gets :attr:`first` items (enough to fill
    its ``batch`` rows and keep one waiting), then guided portions (:meth:`next_count`).
    """

    def __init__(
        self,
        items: Sequence[Work],
        costs: Sequence[int],
        sizes: Sequence[int],
        on_done: Callable[[int], None] | None,
        batch: int,
        workers: int,
    ) -> None:
        self.items = items
        self.sizes = sizes
        self.on_done = on_done
        self.batch = batch
        self.label = call_label(items)
        self.queue: deque[int] = deque(sorted(range(len(items)), key=lambda i: (-costs[i], i)))
        self.first = min(batch + 1, math.ceil(len(self.queue) / workers))
        self.started = time.monotonic()
        self.finished = 0  # items whose results came back
        self.results: list[Any] = [None] * len(items)
        self.received = [False] * len(items)
        self.held: dict[int, set[int]] = {}  # worker index -> items sent to it whose results have not come back
        self.active: list[Worker] = []  # the workers in the call (sent a Call, no Done yet)

    def next_count(self, workers: int) -> int:
        """Guided portions: up to a batch while plenty is left, single items towards the end."""
        return max(1, min(self.batch, len(self.queue) // (4 * workers)))

    def portion(self, worker: Worker, count: int) -> Items:
        """Take up to ``count`` items off the queue for ``worker``."""
        chosen = [self.queue.popleft() for _ in range(min(count, len(self.queue)))]
        worker.requests += sum(self.sizes[i] for i in chosen)
        self.held.setdefault(worker.spec.index, set()).update(chosen)
        return [(i, self.items[i]) for i in chosen]

    def accept(self, worker: Worker, finished: Results) -> bool:
        """Keep ``worker``'s results; False if one is for an item it does not hold."""
        mine = self.held.get(worker.spec.index, set())
        for index, result in finished:
            if index not in mine or self.received[index]:
                return False
            mine.discard(index)
            self.results[index], self.received[index] = result, True
        self.finished += len(finished)
        if self.on_done is not None and finished:
            self.on_done(sum(self.sizes[i] for i, _ in finished))
        return True

    def give_back(self, worker: Worker) -> int:
        """Take ``worker`` out of the call and put its unfinished items first in the queue; how many there were."""
        if worker in self.active:
            self.active.remove(worker)
        unfinished = sorted(self.held.pop(worker.spec.index, set()))
        self.queue.extendleft(reversed(unfinished))
        return len(unfinished)

    def missing(self) -> int:
        """Items without a result."""
        return self.received.count(False)

    def remaining_seconds(self) -> float:
        """How long the items not handed out yet would take at the pace so far (0 if unknown)."""
        waiting, finished = len(self.queue), self.finished
        if not waiting or not finished:
            return 0.0
        return waiting * (time.monotonic() - self.started) / finished
