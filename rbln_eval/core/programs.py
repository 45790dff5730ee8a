"""Request scheduling over a compiled model's batch rows: prefill once, then batched decode steps.

An NPU bundle has fixed shapes: a prefill graph that fills one batch row's KV cache from a prompt, and a
decode graph that advances every row by one token. Each request is a small *program* (a generator) that
first yields :class:`Open` (prefill a row, or run the encoder) and then :class:`Step` (one token at one
position), receiving logits back. :func:`run_programs` keeps every row busy: a row whose program ends is
refilled with the next program while the others continue, and all pending steps go to the device in one
decode call.

Loglikelihood requests that share a context (multiple choice) share one row and its prefill. With a
full-logit bundle the context's whole prefill chunks are prefilled once; each multi-token continuation is then
prefilled from the context's last chunk boundary (context tail + continuation, on top of the row's cached
prefix: ``Open(tokens, start)``) and read off that prefill; a one-token continuation is read off the context's
own logits. With a last-logit bundle the rest of each continuation is teacher-forced decode steps, a row's
positions after the context simply overwritten by the next choice. Prefill is never re-run per continuation
token. Requests whose contexts differ but share whole chunks of prefix (partial evaluation: Winogrande's two
contexts of a question) are one job the same way: the common chunks once, each request's rest of context and
continuation from their end, only the continuation scored (:class:`~rbln_eval.core.work.Continuation`).
:func:`plan_loglikelihood` decides which requests share a row so that no row is left with far more work than
the others.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Generator, Iterable, Protocol, Sequence

import torch

from rbln_eval.core.work import Continuation, Media, MediaPrompt, ScoreWork


@dataclass(frozen=True)
class Open:
    """Prefill a row with ``tokens`` (causal) or encode them (seq2seq).

    ``start`` is the position of the first token: above 0, a prefill-chunk boundary, and the row's cached
    positions before it (filled by this program's earlier prefills) are kept — prefix caching within a row.
    A program may open its row again while it holds it.
    """

    tokens: Sequence[int]
    start: int = 0


@dataclass(frozen=True)
class Step:
    """Feed ``token`` at ``position`` of the row; the program receives the logits for the next position."""

    token: int
    position: int


Program = Generator["Open | Step", "torch.Tensor | None", object]


class Backend(Protocol):
    """The device side: one prefill/encode per row, one batched decode step for all rows."""

    batch_size: int
    max_length: int
    full_logits: bool

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor | None:
        """Prefill/encode ``row``; causal: logits ``[n, vocab]`` for the last n input positions.

        A backend that keeps a row's cached prefix also takes ``start`` (see :class:`Open`); it is passed only
        when it is not 0.
        """

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        """One decode step over all rows; returns logits ``[batch, vocab]``."""


def run_programs(
    backend: Backend,
    programs: Iterable[Program],
    on_result: Callable[[int, object], None] | None = None,
    pad_token: int = 0,
) -> list[object]:
    """Run ``programs`` over the backend's rows; results in program order.

    ``programs`` is consumed lazily, one program each time a row falls free, so it may be a stream that is
    still being fed (the data-parallel workers pull their next requests that way).
    """
    pending = enumerate(programs)
    rows: list[tuple[int, Program, Step] | None] = [None] * backend.batch_size
    results: dict[int, object] = {}

    def finish(index: int, value: object) -> None:
        results[index] = value
        if on_result is not None:
            on_result(index, value)

    def advance(row: int, index: int, program: Program, value: torch.Tensor | None) -> Step | None:
        """Send ``value``; serve the program's prefills of its row until it asks for a decode step or ends."""
        while True:
            try:
                request = program.send(value)
            except StopIteration as stop:
                finish(index, stop.value)
                return None
            if isinstance(request, Step):
                return request
            value = prefill(row, request)

    def prefill(row: int, request: object) -> torch.Tensor | None:
        if not isinstance(request, Open):
            raise RuntimeError(f"a program asks for prefills and decode steps only, got {request!r}")
        if request.start:
            return backend.open(row, request.tokens, start=request.start)  # type: ignore[call-arg]
        return backend.open(row, request.tokens)

    exhausted = False
    while True:
        for row in range(backend.batch_size):
            while rows[row] is None and not exhausted:
                try:
                    index, program = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                request = next(program)
                if not isinstance(request, Open) or request.start:
                    raise RuntimeError(f"a program must open its row from position 0 first, got {request!r}")
                step = advance(row, index, program, prefill(row, request))
                if step is not None:
                    rows[row] = (index, program, step)
        if not any(rows):
            break
        active = [slot is not None for slot in rows]
        tokens = [slot[2].token if slot else pad_token for slot in rows]
        positions = [slot[2].position if slot else 0 for slot in rows]
        logits = backend.step(tokens, positions, active)
        for row, slot in enumerate(rows):
            if slot is None:
                continue
            index, program, _ = slot
            step = advance(row, index, program, logits[row])
            rows[row] = (index, program, step) if step is not None else None
    return [results[i] for i in range(len(results))]


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------

#: Teacher-forced decode tokens one shared-context job may hold before the next request gets a row of its own.
DECODE_BUDGET = 64

#: Prefill chunks of continuations (after the shared context) one shared-context job may hold before the next
#: request starts a job of its own (which prefills the shared context again).
PREFILL_BUDGET = 32


@dataclass(frozen=True)
class LoglikelihoodJob:
    """Requests scored on one batch row after one prefill of ``context``: indices into the request list.

    ``prefix`` set: the members' contexts differ and ``context`` is their common prefix of ``prefix`` whole
    prefill chunks (tokens); each member's own context continues after it.
    """

    context: tuple[int, ...]
    members: tuple[int, ...]
    prefix: int | None = None


def plan_loglikelihood(
    requests: Sequence[tuple[Sequence[int], Sequence[int]]], full_logits: bool, prefill_chunk: int | None = None,
    steps_go_back: bool = True,
) -> list[LoglikelihoodJob]:
    """Group ``(context, continuation)`` token pairs into jobs, longest contexts first.

    Requests with the same context share a job. With full logits and a backend that keeps a row's cached
    prefix (``prefill_chunk`` given), a context of at least one whole chunk is shared by all its requests: its
    chunks are prefilled once, every continuation from the context's last chunk boundary on (up to
    :data:`PREFILL_BUDGET` chunks per job). Contexts that differ but share whole chunks of prefix (partial
    evaluation: the same few-shot examples and sentence, a different ending) are one job when that saves
    prefill (:func:`shared_prefix_runs`): the common chunks once, each request from their end on. Otherwise,
    with full logits, a job holds one multi-token continuation (read off its prefill) and any number of
    single-token ones, and every other multi-token continuation gets a prefill of its own. With last-logit
    bundles a job takes requests until their decode steps exceed :data:`DECODE_BUDGET`, so that a context
    shared by many long continuations (the first window of every rolling document) is spread over all rows
    instead of serialized on one. Where a row's decode steps cannot go back (``steps_go_back`` False: a
    sliding-window cache shorter than the compiled length), every request is a job of its own.
    """
    if not steps_go_back:
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
        return [LoglikelihoodJob(tuple(requests[i][0]), (i,)) for i in order]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(requests):
        groups.setdefault(tuple(context), []).append(index)
    chunk = prefill_chunk if full_logits and prefill_chunk else 0
    if chunk:
        runs = shared_prefix_runs({context: len(members) for context, members in groups.items()}, chunk)
    else:
        runs = [(0, [context]) for context in groups]
    planned: list[tuple[int, LoglikelihoodJob]] = []  # (longest context, job)
    for prefix, contexts in runs:
        if len(contexts) > 1:
            members = [i for context in contexts for i in groups[context]]
            costs = [-(-(len(requests[i][0]) - prefix + len(requests[i][1]) - 1) // chunk) for i in members]
            longest = max(len(context) for context in contexts)
            planned.extend((longest, job) for job in _budgeted(contexts[0][:prefix], members, costs, PREFILL_BUDGET, prefix))
            continue
        context = contexts[0]
        members = groups[context]
        if chunk and len(context) >= chunk:
            tail = len(context) % chunk
            costs = [-(-(tail + len(requests[i][1]) - 1) // chunk) for i in members]
            planned.extend((len(context), job) for job in _budgeted(context, members, costs, PREFILL_BUDGET))
        elif full_logits:
            multi = [i for i in members if len(requests[i][1]) > 1]
            single = [i for i in members if len(requests[i][1]) <= 1]
            anchor = multi[:1]
            planned.append((len(context), LoglikelihoodJob(context, tuple(sorted(anchor + single)))))
            planned.extend((len(context), LoglikelihoodJob(context, (i,))) for i in multi[1:])
        else:
            costs = [len(requests[i][1]) - 1 for i in members]
            planned.extend((len(context), job) for job in _budgeted(context, members, costs, DECODE_BUDGET))
    planned.sort(key=lambda entry: -entry[0])
    return [job for _, job in planned]


def job_work(job: LoglikelihoodJob, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> ScoreWork:
    """The work item of ``job``: a shared-prefix job's continuations carry the rest of their own context."""
    if job.prefix is None:
        return ScoreWork(tuple(job.context), tuple(tuple(requests[i][1]) for i in job.members))
    continuations = tuple(
        Continuation(tuple(requests[i][0][job.prefix :]) + tuple(requests[i][1]), len(requests[i][1])) for i in job.members
    )
    return ScoreWork(tuple(job.context), continuations)


def shared_prefix_runs(counts: dict[tuple[int, ...], int], chunk: int) -> list[tuple[int, list[tuple[int, ...]]]]:
    """Distinct contexts (with their request counts) grouped by a common prefix of whole chunks: ``(prefix
    tokens, contexts)`` per group; a context alone is a group of one (prefix 0).

    Contexts are bucketed by their first chunk, sorted within a bucket, and consecutive ones joined while the
    prefill saved grows: a group of n requests at a common prefix of d chunks saves (n - 1) * d chunks, so a
    context joins when the joint saving beats the two apart. Linear in the contexts after the sort.
    """
    runs: list[tuple[int, list[tuple[int, ...]]]] = []
    buckets: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for context in counts:
        if len(context) < chunk:
            runs.append((0, [context]))
        else:
            buckets.setdefault(context[:chunk], []).append(context)
    for bucket in buckets.values():
        ordered = sorted(bucket)
        run, depth, requests = [ordered[0]], len(ordered[0]) // chunk, counts[ordered[0]]
        for previous, context in itertools.pairwise(ordered):
            own = len(context) // chunk
            common = min(depth, _common_chunks(previous, context, chunk, own))
            apart = (requests - 1) * depth + (counts[context] - 1) * own
            if common and (requests + counts[context] - 1) * common > apart:
                run.append(context)
                depth, requests = common, requests + counts[context]
                continue
            runs.append((depth * chunk if len(run) > 1 else 0, run))
            run, depth, requests = [context], own, counts[context]
        runs.append((depth * chunk if len(run) > 1 else 0, run))
    return runs


def _common_chunks(first: Sequence[int], second: Sequence[int], chunk: int, limit: int) -> int:
    """How many whole chunks ``first`` and ``second`` share from the start, at most ``limit``."""
    shared = 0
    while shared < limit and first[shared * chunk : (shared + 1) * chunk] == second[shared * chunk : (shared + 1) * chunk]:
        shared += 1
    return shared


def _budgeted(
    context: tuple[int, ...], members: list[int], costs: list[int], budget: int, prefix: int | None = None,
) -> list[LoglikelihoodJob]:
    """``members`` in order, a new job whenever the next one's cost would take a job's total over ``budget``."""
    jobs: list[LoglikelihoodJob] = []
    current: list[int] = []
    total = 0
    for index, cost in zip(members, costs):
        if current and total + cost > budget:
            jobs.append(LoglikelihoodJob(context, tuple(current), prefix))
            current, total = [], 0
        current.append(index)
        total += cost
    jobs.append(LoglikelihoodJob(context, tuple(current), prefix))
    return jobs


# --------------------------------------------------------------------------------------------------
# Building blocks of the families' programs
# --------------------------------------------------------------------------------------------------


class Score:
    """Running log-probability and greediness of one continuation."""

    __slots__ = ("logprob", "greedy")

    def __init__(self) -> None:
        self.logprob = 0.0
        self.greedy = True

    def add(self, logits: torch.Tensor, target: int) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        self.logprob += float(logprobs[target])
        self.greedy = self.greedy and int(logits.argmax()) == target


def teacher_forced(
    scores: list[Score], first: torch.Tensor, continuations: Sequence[Sequence[int]], base: int, skip: int | None,
) -> Program:
    """Score each continuation's first token off ``first``, the rest by decode steps from position ``base``."""
    for score, continuation in zip(scores, continuations):
        score.add(first, continuation[0])
    for i, continuation in enumerate(continuations):
        if i == skip:
            continue
        for j in range(1, len(continuation)):
            logits = yield Step(continuation[j - 1], base + j - 1)
            scores[i].add(logits, continuation[j])
    return [(s.logprob, s.greedy) for s in scores]


def greedy(
    logits: torch.Tensor, position: int, max_new_tokens: int, max_position: int,
    stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
) -> Program:
    """Greedy tokens from ``logits`` at ``position`` on, until an EOS token, ``stop(tokens)``, ``max_new_tokens``
    or ``max_position``."""
    generated: list[int] = []
    while True:
        token = int(logits.argmax())
        generated.append(token)
        if token in eos_token_ids or len(generated) >= max_new_tokens or position >= max_position or stop(generated):
            return generated
        logits = yield Step(token, position)
        position += 1


def forward_program() -> Program:
    """One row of one forward call over the whole batch: the row's outputs (see ``BatchedForwardBackend``)."""
    yield Open(())
    outputs = yield Step(0, 0)
    return outputs


def with_media(program: Program, media: Media) -> Program:
    """``program`` whose first :class:`Open` carries ``media`` (a :class:`MediaPrompt` of the same tokens)."""
    request = next(program)
    if not isinstance(request, Open):
        raise RuntimeError(f"a program must open its row first, got {request!r}")
    value = yield Open(MediaPrompt(request.tokens, media))
    while True:
        try:
            request = program.send(value)
        except StopIteration as stop:
            return stop.value
        value = yield request
