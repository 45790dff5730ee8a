"""A data-parallel pool on Ray that takes more replicas while its call has work left and NPUs stay free."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from rbln_eval.execution.pool.ray_transport import require_ray

if TYPE_CHECKING:
    from rbln_eval.execution.pool.dispatcher import PoolExecutor
    from rbln_eval.store import Bundle

logger = logging.getLogger(__name__)

#: How often a growing pool looks for free NPUs, in seconds.
GROW_EVERY = 1.0
#: A pool grows only while its call has work left for this many seconds at its pace so far: a new replica
#: (a Ray worker process that imports torch and loads the bundle) takes seconds before it scores anything.
GROW_MIN_SECONDS = 30.0


def free_npus() -> float:
    """RBLN resources of the cluster that no task or actor holds or waits for."""
    return float(require_ray().available_resources().get("RBLN", 0.0))


class Growing:
    """While open, adds replicas to ``pool`` when its call has work waiting and the cluster has free NPUs.

    One replica is added at a time, and only when ``{"RBLN": tp}`` is free (a cell waiting for NPUs takes
    them first: Ray hands freed resources to waiting tasks at once) and the call has at least
    ``min_seconds`` of work left that no replica has taken yet. ``on_change`` hears the pool's
    number of loaded replicas whenever it changes (and 0 at the end).
    """

    def __init__(
        self,
        pool: PoolExecutor,
        limit: int | None = None,
        every: float = GROW_EVERY,
        min_seconds: float = GROW_MIN_SECONDS,
        on_change: Callable[[int], Any] | None = None,
    ) -> None:
        self.pool, self.limit, self.every, self.on_change = pool, limit, every, on_change
        self.min_seconds = min_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rbln-eval-grow", daemon=True)
        self._reported = -1

    def __enter__(self) -> Growing:
        self._report()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(self.every + 5.0)
        if self.on_change is not None:
            self.on_change(0)

    def _report(self) -> None:
        count = len(self.pool.workers)
        if count != self._reported and self.on_change is not None:
            self._reported = count
            self.on_change(count)

    def _wanted(self) -> bool:
        pool = self.pool
        if pool.broken or pool.joining or (self.limit is not None and len(pool.workers) >= self.limit):
            return False
        return pool.remaining_seconds() >= self.min_seconds

    def _loop(self) -> None:
        tp = self.pool.bundle.key.tensor_parallel
        while not self._stop.wait(self.every):
            try:
                self._report()
                if self._wanted() and free_npus() >= tp:
                    self.pool.grow()
            except Exception:  # noqa: BLE001 - growing is an optimisation: the pool runs on without it
                logger.debug("could not add a replica", exc_info=True)


class GrowingExecutor:
    """A Ray pool that grows while it is open: the growing stops before the replicas do."""

    def __init__(self, pool: Any, growing: Any) -> None:
        self.pool, self.growing = pool, growing
        self.bundle, self.family, self.shape = pool.bundle, pool.family, pool.shape
        self.tokenizer, self.load_seconds = pool.tokenizer, pool.load_seconds
        growing.__enter__()

    @property
    def groups(self) -> list[list[int]]:
        return self.pool.groups

    def run(self, items: Any, costs: Any, sizes: Any, on_done: Any = None) -> list[Any]:
        return self.pool.run(items, costs, sizes, on_done)

    def counters(self) -> dict[str, dict[str, int]]:
        return self.pool.counters()

    def describe(self) -> dict[str, Any]:
        return self.pool.describe()

    def close(self) -> None:
        try:
            self.growing.__exit__(None, None, None)
        finally:
            self.pool.close()


def open_growing_pool(
    bundle: "Bundle", source: Any = None, on_change: Callable[[int], None] | None = None,
) -> GrowingExecutor:
    """A growing Ray pool of ``bundle`` inside a Ray task that holds ``{"RBLN": tp}``: one replica here, on the
    task's NPUs, more joining while the cluster has free NPUs. ``source`` (``fetch() -> Bundle``) gets the bundle
    on each replica's node; ``on_change`` hears how many replicas are loaded (0 once closed)."""
    from rbln_eval.execution.pool.dispatcher import PoolExecutor
    from rbln_eval.execution.pool.ray_transport import RayTransport

    transport = RayTransport(None, bundle.key.tensor_parallel, here=True)
    pool = PoolExecutor(bundle, [[]], transport, source=source)
    try:
        return GrowingExecutor(pool, Growing(pool, on_change=on_change))
    except BaseException:
        pool.close()
        raise
