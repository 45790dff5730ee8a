"""Data parallelism: one bundle, K replicas, each in its own worker process on its own group of NPUs.

The parent tokenizes and plans the requests exactly as a single replica does, then streams them to the
workers longest first: each worker starts with enough to fill its batch rows and asks for more whenever
its queue runs low, so a worker whose generations stop early simply takes more requests, and near the end
the portions shrink to single requests so that the workers finish together. Loglikelihood requests that share a context travel
as one job, so that context is prefilled once. Each worker loads the bundle with
``load_bundle(bundle, device=group)`` and runs the requests it is sent on the batch rows of an ordinary
:class:`~rbln_eval.lm.RBLNLM`, so the scores are those of a single replica; the parent puts them back in
request order. A worker that dies fails the whole call: no partial scores are ever returned.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from .devices import format_devices
from .engine import Program, loglikelihood_program, plan_loglikelihood, run_programs
from .errors import RblnEvalError
from .lm import DEFAULT_MAX_GEN_TOKS, RBLNLM, _as_bool
from .store import Bundle

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 900.0
STOP_TIMEOUT = 10.0
#: A worker asks for more work when fewer items than this wait for a free row.
PREFETCH = 2


class WorkerDiedError(RblnEvalError):
    """A worker process exited while it had work (or while loading); the evaluation has no scores."""


class WorkerFailedError(RblnEvalError):
    """A worker raised an error that is not a user error; its traceback is logged."""


@dataclass
class WorkerSpec:
    """What a worker needs, as plain picklable values."""

    index: int
    bundle_path: str
    devices: list[int]
    lm_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)  # the parent's environment when the pool started


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


def _error_payload(exc: BaseException) -> tuple[str, str, str, bool]:
    return type(exc).__name__, str(exc), traceback.format_exc(), isinstance(exc, RblnEvalError)


class _Stop(Exception):
    """The parent asked the worker to stop in the middle of a call."""


def _program(lm: RBLNLM, method: str, payload: Any) -> tuple[Program, Callable[[Any], Any]]:
    """The program for one streamed item, and what turns its result into the reply."""
    if method == "loglikelihood":
        context, continuations = payload
        return loglikelihood_program(lm.device_backend, context, continuations), list
    if method == "generate_until":
        context, gen_kwargs = payload
        return lm._generation_program(context, gen_kwargs)
    raise ValueError(f"unknown worker method {method!r}")


def _serve(lm: RBLNLM, conn: Connection, method: str, items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Run a streamed call: ``items`` first, then whatever the parent sends when asked, until it says "end".

    More is asked for (with the results finished so far) as soon as fewer than :data:`PREFETCH` items wait,
    so the next ones arrive while the rows are still busy, and no worker holds on to work another one could
    start sooner. Returns the results not yet sent.
    """
    queue = deque(items)
    finished: list[tuple[int, Any]] = []
    indices: list[int] = []
    finishers: list[Callable[[Any], Any]] = []
    state = {"asked": False, "ended": False}

    def receive(block: bool) -> None:
        while state["asked"] and (block or conn.poll()):
            message = conn.recv()
            if message[0] == "work":
                queue.extend(message[1])
            elif message[0] == "end":
                state["ended"] = True
            elif message[0] == "stop":
                raise _Stop
            else:
                raise RuntimeError(f"unexpected message {message[0]!r} during {method}")
            state["asked"] = block = False

    def programs() -> Iterator[Program]:
        while True:
            receive(block=False)
            if not state["ended"] and not state["asked"] and len(queue) < PREFETCH:
                conn.send(("want", finished.copy()))
                finished.clear()
                state["asked"] = True
            if not queue:
                if state["ended"]:
                    return
                receive(block=True)
                continue
            index, payload = queue.popleft()
            program, finish = _program(lm, method, payload)
            indices.append(index)
            finishers.append(finish)
            yield program

    def collect(local: int, value: Any) -> None:
        finished.append((indices[local], finishers[local](value)))

    run_programs(lm.device_backend, programs(), on_result=collect, pad_token=lm._pad_token_id())
    return finished


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process: load the bundle on ``spec.devices``, then serve calls until told to stop."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
        if spec.env:  # a forked worker has its fork server's environment: take the parent's
            os.environ.clear()
            os.environ.update(spec.env)
        import torch

        from .loader import load_bundle

        torch.set_num_threads(spec.threads)  # K workers share the host's cores

        bundle = Bundle.open(Path(spec.bundle_path))
        device: int | list[int] = spec.devices[0] if len(spec.devices) == 1 else list(spec.devices)
        loaded = load_bundle(bundle, device=device)
        lm = RBLNLM(loaded=loaded, **spec.lm_kwargs)
        conn.send(("ready", {
            "devices": _runtime_devices(loaded.model, spec.devices),
            "load_seconds": loaded.load_seconds,
            "batch_size": lm.device_backend.batch_size,
            "max_length": lm.max_length,
            "enc_max_length": getattr(lm.device_backend, "enc_max_length", None),
            "prefill_chunk": getattr(lm.device_backend, "prefill_chunk", None),
            "full_logits": bool(getattr(lm.device_backend, "full_logits", False)),
        }))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", _error_payload(exc)))
        return
    while True:
        try:
            method, items = conn.recv()
        except (EOFError, OSError):
            return
        if method == "stop":
            return
        started = time.monotonic()
        try:
            results = _serve(lm, conn, method, items)
        except _Stop:
            return
        except (EOFError, OSError):  # the parent is gone
            return
        except BaseException as exc:  # noqa: BLE001 - the parent fails the pool on any error
            conn.send(("error", _error_payload(exc)))
            return
        conn.send(("done", results, {"counters": lm.device_counters, "seconds": time.monotonic() - started}))


# --------------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    spec: WorkerSpec
    process: Any
    conn: Connection
    info: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    requests: int = 0
    busy_seconds: float = 0.0

    @property
    def where(self) -> str:
        return f"worker {self.spec.index} on {format_devices(self.spec.devices)}"


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
    context.set_forkserver_preload(["rbln_eval._worker_preload"])
    return context


class WorkerPool:
    """K worker processes, one per device group, started together; :meth:`stream` shares a call's requests among them."""

    def __init__(self, bundle: Bundle, groups: Sequence[Sequence[int]], lm_kwargs: dict[str, Any] | None = None) -> None:
        if not groups:
            raise RblnEvalError("data parallelism needs at least one device group")
        self.bundle = bundle
        self.groups = [list(group) for group in groups]
        self.workers: list[_Worker] = []
        self.broken: str | None = None
        context = _worker_context()
        threads = max(1, (os.cpu_count() or 1) // len(self.groups))
        try:
            for index, group in enumerate(self.groups):
                spec = WorkerSpec(index, str(bundle.path), group, dict(lm_kwargs or {}), threads, dict(os.environ))
                parent_conn, child_conn = context.Pipe()
                process = context.Process(
                    target=worker_main, args=(child_conn, spec), name=f"rbln-eval-worker-{index}", daemon=True
                )
                process.start()
                child_conn.close()
                self.workers.append(_Worker(spec, process, parent_conn))
            for worker, message in zip(self.workers, self._gather(self.workers, "load", STARTUP_TIMEOUT)):
                worker.info = message
        except BaseException:
            self.close()
            raise

    def _fail(self, message: str, cls: type[RblnEvalError] = WorkerDiedError) -> RblnEvalError:
        self.broken = message
        self.close()
        return cls(message)

    def _messages(self, workers: Sequence[_Worker], what: str, timeout: float | None = None) -> Iterator[tuple[_Worker, tuple]]:
        """Messages from ``workers`` as they arrive; a death, an error or ``timeout`` without one fails the pool."""
        while True:
            waiting = [w.conn for w in workers] + [w.process.sentinel for w in workers]
            ready = wait(waiting, timeout=timeout)
            if not ready:
                names = ", ".join(w.where for w in workers)
                raise self._fail(f"{names}: no answer to {what} after {timeout:.0f}s")
            for worker in workers:
                if worker.conn in ready or worker.conn.poll():
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    if message is not None:
                        if message[0] == "error":
                            self._raise_error(worker, message[1], what)
                        yield worker, message
                        break  # ``workers`` may have changed: wait again
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    raise self._died(worker, what)

    def _gather(self, workers: list[_Worker], what: str, timeout: float | None = None) -> list[Any]:
        """One reply from each of ``workers`` (in their order)."""
        replies: dict[int, Any] = {}
        pending = list(workers)
        for worker, message in self._messages(pending, what, timeout):
            replies[worker.spec.index] = message[1]
            pending.remove(worker)
            if not pending:
                break
        return [replies[w.spec.index] for w in workers]

    def _raise_error(self, worker: _Worker, error: tuple[str, str, str, bool], what: str) -> None:
        name, text, trace, user_error = error
        if user_error:
            raise self._fail(f"{worker.where}: {text}", RblnEvalError)
        logger.error("%s failed during %s:\n%s", worker.where, what, trace)
        raise self._fail(f"{worker.where} failed during {what}: {name}: {text}", WorkerFailedError)

    def _died(self, worker: _Worker, what: str) -> RblnEvalError:
        worker.process.join(1.0)
        return self._fail(
            f"{worker.where} died during {what} ({_exit_text(worker.process.exitcode)}); "
            "the evaluation was stopped and no scores were reported"
        )

    def _send(self, worker: _Worker, message: tuple, what: str) -> None:
        try:
            worker.conn.send(message)
        except (BrokenPipeError, EOFError, OSError):
            raise self._died(worker, what) from None

    def stream(
        self,
        method: str,
        payloads: Sequence[Any],
        costs: Sequence[int],
        sizes: Sequence[int] | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Run ``payloads`` on the workers, most costly first, each worker asking for more as it frees up.

        ``sizes`` counts the requests in each payload (1 each by default) for the workers' statistics and
        ``on_done``, which is called with the number of requests whose results just came back. Results are
        returned in payload order.
        """
        if self.broken:
            raise WorkerDiedError(f"the worker pool is not usable: {self.broken}")
        if not payloads:
            return []
        sizes = sizes if sizes is not None else [1] * len(payloads)
        queue = deque(sorted(range(len(payloads)), key=lambda i: (-costs[i], i)))
        results: list[Any] = [None] * len(payloads)
        received = [False] * len(payloads)
        batch = max(1, int(self.workers[0].info.get("batch_size", 1)))

        def portion(worker: _Worker, count: int) -> list[tuple[int, Any]]:
            items = [queue.popleft() for _ in range(min(count, len(queue)))]
            worker.requests += sum(sizes[i] for i in items)
            return [(i, payloads[i]) for i in items]

        def accept(worker: _Worker, finished: list[tuple[int, Any]]) -> None:
            for index, result in finished:
                if not 0 <= index < len(payloads) or received[index]:
                    raise self._fail(f"{worker.where} returned a result for a request it was not sent", WorkerFailedError)
                results[index], received[index] = result, True
            if on_done is not None and finished:
                on_done(sum(sizes[i] for i, _ in finished))

        active: list[_Worker] = []
        first = min(batch + 1, math.ceil(len(queue) / len(self.workers)))  # fill the rows, keep one waiting
        for worker in self.workers:
            if not queue:
                break
            self._send(worker, (method, portion(worker, first)), method)
            active.append(worker)
        for worker, message in self._messages(active, method):
            if message[0] == "want":
                accept(worker, message[1])
                # Guided portions: up to a batch while plenty is left, single items towards the end.
                count = max(1, min(batch, len(queue) // (4 * len(self.workers))))
                self._send(worker, ("work", portion(worker, count)) if queue else ("end",), method)
            elif message[0] == "done":
                _, finished, stats = message
                accept(worker, finished)
                worker.counters = stats["counters"]
                worker.busy_seconds += stats["seconds"]
                active.remove(worker)
                if not active:
                    break
            else:
                raise self._fail(f"{worker.where} sent an unexpected {message[0]!r} during {method}", WorkerFailedError)
        if not all(received):
            raise self._fail(f"{received.count(False)} request(s) of {method} came back without a result", WorkerFailedError)
        return results

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for worker in self.workers:
            if worker.process.is_alive():
                try:
                    worker.conn.send(("stop", None))
                except (BrokenPipeError, EOFError, OSError):
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(2.0)
            worker.conn.close()


# --------------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaShape:
    """The compiled shapes of the replicas: all the parent needs to fit requests like a replica does."""

    batch_size: int
    max_length: int
    enc_max_length: int | None = None
    prefill_chunk: int | None = None
    full_logits: bool = False

    def prefill_cost(self, tokens: int) -> int:
        """A prefill (or encoder) call holds the whole device: it weighs one decode token per batch row per chunk."""
        chunks = -(-tokens // self.prefill_chunk) if self.prefill_chunk else 1
        return self.batch_size * max(1, chunks)


class DataParallelRBLNLM(RBLNLM):
    """:class:`RBLNLM` with K replicas of ``bundle``, one per device group, in worker processes.

    Tokenization happens here (as in :class:`RBLNLM`); scoring happens in the workers. Call :meth:`close`
    (or use it as a context manager) to stop the workers.
    """

    def __init__(
        self,
        bundle: Bundle,
        groups: Sequence[Sequence[int]],
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool | str | None = None,
        compiled_now: bool = False,
    ) -> None:
        TemplateLM.__init__(self)
        from transformers import AutoTokenizer

        self.bundle = bundle
        self.compiled_now = compiled_now
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundle.path))
        self.backend = "seq2seq" if bundle.key.model_class == "seq2seq" else "causal"
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = None if add_bos_token is None else _as_bool(add_bos_token, "add_bos_token")
        self._truncation_warned = False
        self._start_accounting()
        self._sim_baseline = None  # the replicas' devices live in the workers
        lm_kwargs = {"max_gen_toks": self._max_gen_toks, "add_bos_token": self.add_bos_token}
        started = time.monotonic()
        self.pool = WorkerPool(bundle, groups, lm_kwargs)
        self.load_seconds = time.monotonic() - started
        first = self.pool.workers[0].info
        self.device_backend = ReplicaShape(
            int(first["batch_size"]), int(first["max_length"]), first["enc_max_length"], first["prefill_chunk"],
            first["full_logits"],
        )
        self.max_length = self.device_backend.max_length
        self.batch_size = self.device_backend.batch_size

    @property
    def data_parallel(self) -> int:
        return len(self.pool.workers)

    @property
    def worker_devices(self) -> list[list[int]]:
        """The devices each worker's runtimes were placed on, in worker order."""
        return [list(worker.info["devices"]) for worker in self.pool.workers]

    @property
    def device_counters(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for worker in self.pool.workers:
            for graph, counter in worker.counters.items():
                entry = total.setdefault(graph, {"calls": 0, "tokens": 0})
                entry["calls"] += counter["calls"]
                entry["tokens"] += counter["tokens"]
        return dict(sorted(total.items()))

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "DataParallelRBLNLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _score(self, method: str, payloads: list[Any], costs: list[int], sizes: list[int], disable_tqdm: bool) -> list[Any]:
        """Stream ``payloads`` to the workers; results in payload order."""
        if not payloads:
            return []
        progress = tqdm(total=sum(sizes), disable=disable_tqdm, desc=f"rbln {method} ×{self.data_parallel}")
        try:
            return self.pool.stream(method, payloads, costs, sizes, on_done=progress.update)
        finally:
            progress.close()

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        # Plan jobs exactly as a single replica does; a job is scored on one row of one worker.
        fitted = self._fit_all(requests)
        jobs = plan_loglikelihood(fitted, full_logits=self.device_backend.full_logits)
        payloads = [(list(job.context), [fitted[i][1] for i in job.members]) for job in jobs]
        costs = [self._job_cost(len(job.context), [len(fitted[i][1]) for i in job.members]) for job in jobs]
        scored = self._score("loglikelihood", payloads, costs, [len(job.members) for job in jobs], disable_tqdm)
        results: list[Any] = [None] * len(requests)
        for job, scores in zip(jobs, scored):
            for index, score in zip(job.members, scores):
                results[index] = tuple(score)
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], results[index])
        return results

    def _job_cost(self, context: int, continuations: list[int]) -> int:
        """Device work of one job, in decode tokens: its prefill, then teacher-forced decode steps."""
        shape = self.device_backend
        if self.backend == "causal" and shape.full_logits:  # everything is read off one prefill
            return shape.prefill_cost(context + max(continuations) - 1)
        return shape.prefill_cost(context) + sum(continuations) - len(continuations)

    def _generate_until(self, requests: list, disable_tqdm: bool) -> list[str]:
        payloads = [(context, dict(gen_kwargs)) for context, gen_kwargs in [request.args for request in requests]]
        # Refuse bad settings before any device work; the budget orders the longest requests first.
        budgets = [self._greedy_settings(kwargs)[1] for _, kwargs in payloads]
        costs = [
            self.device_backend.prefill_cost(len(self.tok_encode(context))) + budget
            for (context, _), budget in zip(payloads, budgets)
        ]
        outputs = self._score("generate_until", payloads, costs, [1] * len(payloads), disable_tqdm)
        for request, text in zip(requests, outputs):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    def get_model_info(self) -> dict[str, Any]:
        """As :meth:`RBLNLM.get_model_info`, plus the replicas: devices, requests and device counters of each."""
        info = super().get_model_info()
        info["rbln"].update(
            data_parallel=self.data_parallel,
            workers=[
                {
                    "devices": list(worker.info["devices"]),
                    "load_seconds": round(worker.info["load_seconds"], 3),
                    "requests": worker.requests,
                    "busy_seconds": round(worker.busy_seconds, 3),
                    "device_counters": worker.counters,
                }
                for worker in self.pool.workers
            ],
        )
        return info
