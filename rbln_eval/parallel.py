"""Data parallelism: one bundle, K replicas, each in its own worker process on its own group of NPUs.

The parent tokenizes, shares the requests among the workers balanced by token count (the tokens each
request costs the device: a prefill weighs a full batch row per chunk, a decode step one token;
loglikelihood requests with the same context stay in one shard, so that context is prefilled once, exactly
as a single replica groups them), and merges the
results back in request order. Each worker loads the bundle with ``load_bundle(bundle, device=group)``
and scores its shard with an ordinary :class:`~rbln_eval.lm.RBLNLM`, so the scores are those of a single
replica. A worker that dies fails the whole call: no partial scores are ever returned.
"""

from __future__ import annotations

import heapq
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from .devices import format_devices
from .engine import plan_loglikelihood
from .errors import RblnEvalError
from .lm import DEFAULT_MAX_GEN_TOKS, RBLNLM, _as_bool
from .store import Bundle

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 900.0
STOP_TIMEOUT = 10.0


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


class _Request:
    """Stands in for lm_eval's ``Instance``: RBLNLM only reads ``.args``."""

    __slots__ = ("args",)

    def __init__(self, args: tuple) -> None:
        self.args = args


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


def _serve(lm: RBLNLM, method: str, payload: Any) -> Any:
    if method == "loglikelihood":
        return lm._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in payload], disable_tqdm=True)
    if method == "generate_until":
        return lm._generate_until([_Request((ctx, kwargs)) for ctx, kwargs in payload], True)
    raise ValueError(f"unknown worker method {method!r}")


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process: load the bundle on ``spec.devices``, then serve shards until told to stop."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
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
            method, payload = conn.recv()
        except (EOFError, OSError):
            return
        if method == "stop":
            return
        started = time.monotonic()
        try:
            result = _serve(lm, method, payload)
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", _error_payload(exc)))
            continue
        conn.send(("ok", result, {"counters": lm.device_counters, "seconds": time.monotonic() - started}))


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


class WorkerPool:
    """K worker processes, one per device group, started together; :meth:`map` runs one shard on each."""

    def __init__(self, bundle: Bundle, groups: Sequence[Sequence[int]], lm_kwargs: dict[str, Any] | None = None) -> None:
        if not groups:
            raise RblnEvalError("data parallelism needs at least one device group")
        self.bundle = bundle
        self.groups = [list(group) for group in groups]
        self.workers: list[_Worker] = []
        self.broken: str | None = None
        context = mp.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // len(self.groups))
        try:
            for index, group in enumerate(self.groups):
                spec = WorkerSpec(index, str(bundle.path), group, dict(lm_kwargs or {}), threads)
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

    def _gather(self, workers: list[_Worker], what: str, timeout: float | None = None) -> list[Any]:
        """One reply from each of ``workers`` (in their order); a death or error fails the pool."""
        pending = {worker.spec.index: worker for worker in workers}
        replies: dict[int, Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            waiting = [w.conn for w in pending.values()] + [w.process.sentinel for w in pending.values()]
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(waiting, timeout=remaining)
            if not ready:
                names = ", ".join(w.where for w in pending.values())
                raise self._fail(f"{names}: no answer to {what} after {timeout:.0f}s")
            for index, worker in list(pending.items()):
                if worker.conn in ready or worker.conn.poll():
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    if message is not None:
                        replies[index] = self._accept(worker, message, what)
                        del pending[index]
                        continue
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.process.join(1.0)
                    raise self._fail(
                        f"{worker.where} died during {what} ({_exit_text(worker.process.exitcode)}); "
                        "the evaluation was stopped and no scores were reported"
                    )
        return [replies[w.spec.index] for w in workers]

    def _accept(self, worker: _Worker, message: tuple, what: str) -> Any:
        kind = message[0]
        if kind == "error":
            name, text, trace, user_error = message[1]
            if user_error:
                raise self._fail(f"{worker.where}: {text}", RblnEvalError)
            logger.error("%s failed during %s:\n%s", worker.where, what, trace)
            raise self._fail(f"{worker.where} failed during {what}: {name}: {text}", WorkerFailedError)
        if kind == "ready":
            return message[1]
        _, result, stats = message
        worker.counters = stats["counters"]
        worker.busy_seconds += stats["seconds"]
        return result

    def map(self, method: str, shards: Sequence[Any | None], on_done: Callable[[int], None] | None = None) -> list[Any]:
        """Send ``shards[i]`` to worker ``i`` (``None``: nothing for it) and return the replies in that order."""
        if self.broken:
            raise WorkerDiedError(f"the worker pool is not usable: {self.broken}")
        active: list[_Worker] = []
        for worker, shard in zip(self.workers, shards):
            if shard is None:
                continue
            try:
                worker.conn.send((method, shard))
            except (BrokenPipeError, EOFError, OSError):
                worker.process.join(1.0)
                raise self._fail(
                    f"{worker.where} died before {method} ({_exit_text(worker.process.exitcode)}); "
                    "the evaluation was stopped and no scores were reported"
                ) from None
            worker.requests += len(shard)
            active.append(worker)
        replies = self._gather(active, method)
        by_index = {worker.spec.index: reply for worker, reply in zip(active, replies)}
        if on_done is not None:
            on_done(sum(len(s) for s in shards if s is not None))
        return [by_index.get(i) for i in range(len(self.workers))]

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


def balance(costs: Sequence[int], shards: int) -> list[list[int]]:
    """Indices of ``costs`` split into ``shards`` lists of near-equal total cost (largest first, to the lightest)."""
    heap = [(0, shard) for shard in range(shards)]
    assignment: list[list[int]] = [[] for _ in range(shards)]
    for item in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, shard = heapq.heappop(heap)
        assignment[shard].append(item)
        heapq.heappush(heap, (load + max(1, costs[item]), shard))
    return [sorted(items) for items in assignment]


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
        self.eval_seconds = 0.0
        self.requests_served = 0
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

    def _run(self, method: str, payloads: list[Any], costs: list[int], disable_tqdm: bool) -> list[Any]:
        """Score ``payloads`` across the workers; results in payload order."""
        return [group[0] for group in self._run_grouped(method, [[p] for p in payloads], costs, disable_tqdm)]

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        # Plan jobs exactly as a single replica does; a job is scored on one row, so it stays in one shard.
        fitted = self._fit_all(requests)
        jobs = plan_loglikelihood(fitted, full_logits=self.device_backend.full_logits)
        payloads = [[(list(requests[i][1]), list(requests[i][2])) for i in job.members] for job in jobs]
        costs = [self._job_cost(len(job.context), [len(fitted[i][1]) for i in job.members]) for job in jobs]
        scored = self._run_grouped("loglikelihood", payloads, costs, disable_tqdm)
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

    def _run_grouped(self, method: str, groups: list[list[Any]], costs: list[int], disable_tqdm: bool) -> list[list[Any]]:
        """Like :meth:`_run`, with each group of payloads kept in one shard."""
        if not groups:
            return []
        shards = balance(costs, self.data_parallel)
        flat_shards: list[list[Any] | None] = []
        for shard in shards:
            flat = [item for g in shard for item in groups[g]]
            flat_shards.append(flat or None)
        progress = tqdm(
            total=sum(len(g) for g in groups), disable=disable_tqdm, desc=f"rbln {method} ×{self.data_parallel}",
        )
        replies = self.pool.map(method, flat_shards, on_done=progress.update)
        progress.close()
        results: list[list[Any]] = [[] for _ in groups]
        for shard, flat, reply in zip(shards, flat_shards, replies):
            if not shard:
                continue
            if reply is None or len(reply) != len(flat or []):
                raise WorkerFailedError("a worker returned a different number of results than it was sent")
            offset = 0
            for g in shard:
                results[g] = list(reply[offset : offset + len(groups[g])])
                offset += len(groups[g])
        return results

    def _generate_until(self, requests: list, disable_tqdm: bool) -> list[str]:
        payloads = [(context, dict(gen_kwargs)) for context, gen_kwargs in [request.args for request in requests]]
        costs = [
            self.device_backend.prefill_cost(len(self.tok_encode(context)))
            + int(kwargs.get("max_gen_toks") or self.max_gen_toks)
            for context, kwargs in payloads
        ]
        outputs = self._run("generate_until", payloads, costs, disable_tqdm)
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
