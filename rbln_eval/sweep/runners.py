"""Where a sweep compiles and scores: here (:class:`LocalRunner`) or on a Ray cluster (:class:`RayRunner`).

Both do the same two things for :func:`~rbln_eval.sweep.run.run_sweep`: compile the keys that neither the
store nor a remote has, and score the cells. The sweep chooses one runner, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from rbln_eval.errors import RblnEvalError
from rbln_eval.store import Bundle, Store
from rbln_eval.sweep.cells import Cell, evaluate_cell
from rbln_eval.sweep.costs import longest_first
from rbln_eval.sweep.source import BundleSource

if TYPE_CHECKING:
    from rbln_eval.build.workflow import CompileRequest

#: How often the progress line hears how many replicas the running cells have, in seconds.
PROGRESS_EVERY = 1.0

#: ``progress(stage, done, total)``: stage "compiles" or "cells" (done of total), or "replicas" (up, 0).
Progress = Callable[[str, int, int], None]
#: Hears each compiled key: its digest, and the bundle or why it failed.
Built = Callable[[str, "Bundle | str"], None]
#: Hears each scored cell: what :func:`evaluate_cell` returned, or why it failed.
Finish = Callable[[Cell, "dict[str, Any] | None", "str | None"], None]


class Runner(Protocol):
    def compile(self, missing: dict[str, "CompileRequest"], store: Store, built: Built) -> None:
        """Compile each request (by digest) into ``store``; ``built`` hears each one as it ends."""

    def evaluate(self, cells: list[Cell], bundles: dict[str, Bundle], output: Path, finish: Finish, report: Progress) -> None:
        """Score ``cells`` (their bundles by digest) into ``output``; ``finish`` hears each one as it ends."""


def compile_here(request: "CompileRequest", store: Store) -> Bundle | str:
    """The bundle of ``request``, compiled through ``store``, or why it could not be (the sweep goes on)."""
    from rbln_eval.build.workflow import compile_bundle

    try:
        return compile_bundle(request, store).bundle
    except RblnEvalError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a compiler failure: recorded with the cells, the sweep goes on
        return f"{type(exc).__name__}: {exc}"


def compile_into(request: "CompileRequest", root: str) -> tuple[str | None, str | None]:
    """:func:`compile_here` as a Ray task: the bundle's path in the store at ``root``, or the error."""
    result = compile_here(request, Store(root))
    return (str(result.path), None) if isinstance(result, Bundle) else (None, result)


class LocalRunner:
    """Compiles one key after the other and scores the cells one by one, on this machine's NPUs."""

    def compile(self, missing: dict[str, "CompileRequest"], store: Store, built: Built) -> None:
        for digest, request in missing.items():
            built(digest, compile_here(request, store))

    def evaluate(self, cells: list[Cell], bundles: dict[str, Bundle], output: Path, finish: Finish, report: Progress) -> None:
        for cell in cells:
            assert cell.digest is not None
            try:
                outcome = evaluate_cell(bundles[cell.digest], cell.settings, str(cell.folder(output)), cell.log_samples)
            except RblnEvalError as exc:
                finish(cell, None, str(exc))
            else:
                finish(cell, outcome, None)


class ReplicaCount:
    """A Ray actor the cells tell how many replicas they run on; the sweep's progress line reads the total."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def set(self, cell: str, count: int) -> None:
        if count:
            self.counts[cell] = count
        else:
            self.counts.pop(cell, None)

    def total(self) -> int:
        return sum(self.counts.values())


class RayRunner:
    """Compiles each key as a Ray task on a node with CPUs (into the shared store), and scores each cell as a
    Ray task of ``{"RBLN": tp}``: longest first, side by side on free NPUs, growing onto NPUs that stay free,
    run again elsewhere if its node dies.

    The cells find their bundles in ``node_store`` on their nodes, else pull them, verified, from ``remote``
    (a RemoteSpec). ``address``: a cluster's address, ``auto``, or ``local`` (a new cluster here).
    """

    def __init__(self, address: str, node_store: str | Path, remote: Any = None) -> None:
        self.address = address
        self.node_store = str(Path(node_store).resolve())
        self.remote = remote

    def _ray(self) -> Any:
        from rbln_eval.execution.pool import connect

        connect(None if self.address == "local" else self.address)
        import ray

        return ray

    def compile(self, missing: dict[str, "CompileRequest"], store: Store, built: Built) -> None:
        from rbln_eval.execution.pool import forwarded_env

        if not missing:
            return
        ray = self._ray()
        task = ray.remote(num_cpus=1, max_retries=1)(compile_into).options(runtime_env={"env_vars": forwarded_env()})
        root = str(store.root.resolve())
        pending = {task.remote(request, root): digest for digest, request in missing.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            digest = pending.pop(ready[0])
            try:
                path, error = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                path, error = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
            built(digest, Bundle.open(Path(path)) if path else str(error))

    def evaluate(self, cells: list[Cell], bundles: dict[str, Bundle], output: Path, finish: Finish, report: Progress) -> None:
        from rbln_eval.execution.pool import forwarded_env

        if not cells:
            return
        ray = self._ray()
        task = ray.remote(max_retries=3, retry_exceptions=False)(evaluate_cell)
        env = {"env_vars": forwarded_env()}
        counter = ray.remote(ReplicaCount).options(num_cpus=0).remote()
        sources = {digest: BundleSource(digest, self.node_store, self.remote) for digest in {c.digest for c in cells}}
        pending: dict[Any, Cell] = {}
        for cell in longest_first(cells):
            assert cell.digest is not None
            ref = task.options(resources={"RBLN": bundles[cell.digest].key.tensor_parallel}, num_cpus=0, runtime_env=env).remote(
                sources[cell.digest], cell.settings, str(cell.folder(output)), cell.log_samples, on_ray=True, replicas=counter,
            )
            pending[ref] = cell
        up = -1
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY)
            try:
                now = int(ray.get(counter.total.remote(), timeout=PROGRESS_EVERY))
            except ray.exceptions.RayError:
                now = up
            if now != up:
                up = now
                report("replicas", up, 0)
            if not ready:
                continue
            cell = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                finish(cell, None, str(cause).strip().splitlines()[-1])
            except ray.exceptions.RayError as exc:
                finish(cell, None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
            else:
                finish(cell, outcome, None)
