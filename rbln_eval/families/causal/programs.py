"""A causal LM's programs: score the continuations of one context on one row, and greedy generation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rbln_eval.core.programs import Backend, Open, Program, Score, greedy, teacher_forced
from rbln_eval.core.work import scored_length


def causal_loglikelihood_program(backend: Backend, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
    """Score every continuation of one context: ``[(logprob, is_greedy), ...]``.

    Full-logit bundle: see :func:`shared_context_scores`. Last-logit bundle: prefill the context; every
    continuation's first token is read off its last logits, the other tokens are teacher-forced decode steps
    from the context's end.
    """
    if backend.full_logits:
        return (yield from shared_context_scores(backend, context, continuations))
    scores = [Score() for _ in continuations]
    logits = yield Open(context)
    assert logits is not None
    return (yield from teacher_forced(scores, logits[-1], continuations, len(context), skip=None))


def shared_context_scores(backend: Backend, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
    """Score continuations off full-logit prefills, with no decode step.

    One multi-token continuation at most: one prefill of context + continuation. More: the context's whole
    prefill chunks are prefilled once, then each multi-token continuation from the context's last chunk
    boundary (context tail + continuation) on top of the row's cached prefix, and read off that prefill. A
    one-token continuation is read off the logits of the context's last position. A backend that does not keep
    a row's prefix (``reuses_prefix``) prefills every multi-token continuation with the whole context.
    Continuations that score only their last tokens (a shared-prefix job) go to :func:`shared_prefix_scores`.
    """
    chunk = getattr(backend, "prefill_chunk", None) if getattr(backend, "reuses_prefix", False) else None
    scored = [scored_length(continuation) for continuation in continuations]
    if any(n < len(continuation) for n, continuation in zip(scored, continuations)):
        if chunk:
            return (yield from shared_prefix_scores(context, continuations, scored))
        return (yield from shared_prefix_scores((), [list(context) + list(c) for c in continuations], scored))
    length = len(context)
    multi = [i for i, continuation in enumerate(continuations) if len(continuation) > 1]
    if len(multi) <= 1:
        longest = continuations[multi[0]] if multi else continuations[0]
        logits = yield Open(list(context) + list(longest[:-1]))
        assert logits is not None
        return [_score(logits[length - 1 :], continuation) for continuation in continuations]
    start = length // chunk * chunk if chunk else 0
    rests = [list(context[start:]) + list(continuation) for continuation in continuations]
    return (yield from shared_prefix_scores(context[:start], rests, scored))


def shared_prefix_scores(prefix: Sequence[int], continuations: Sequence[Sequence[int]], scored: Sequence[int]) -> Program:
    """Score the last ``scored[i]`` tokens of each continuation after ``prefix`` (whole prefill chunks, or empty).

    The prefix is prefilled once; the continuations that share their unscored head (the rest of one context)
    form a group: each one scoring several tokens is prefilled from the prefix's end (head + its tokens) on top
    of the row's cached prefix and read off that prefill; one scoring a single token is read off the logits of
    the head's last position (a prefill of the head alone if no other continuation of the group gives them).
    """
    start = len(prefix)
    shared: torch.Tensor | None = None  # logits of the prefix's last position
    if start:
        logits = yield Open(list(prefix))
        assert logits is not None
        shared = logits[-1:]
    heads: dict[tuple[int, ...], list[int]] = {}
    for i, (continuation, n) in enumerate(zip(continuations, scored)):
        heads.setdefault(tuple(continuation[: len(continuation) - n]), []).append(i)
    results: dict[int, tuple[float, bool]] = {}
    for head, members in heads.items():
        last = shared if not head else None  # logits of the head's last position
        for i in members:
            if scored[i] > 1:
                logits = yield Open(list(continuations[i][:-1]), start=start)
                assert logits is not None
                rows = torch.cat([shared, logits])[len(head) :] if shared is not None else logits[len(head) - 1 :]
                results[i] = _score(rows, continuations[i][len(head) :])
                last = rows[:1]
        if last is None:
            logits = yield Open(list(head), start=start)
            assert logits is not None
            last = logits[-1:]
        for i in members:
            if i not in results:
                results[i] = _score(last, continuations[i][len(head) :])
    return [results[i] for i in range(len(continuations))]


def _score(logits: torch.Tensor, continuation: Sequence[int]) -> tuple[float, bool]:
    """The score of ``continuation`` off ``logits``, row j predicting its token j."""
    score = Score()
    for j, token in enumerate(continuation):
        score.add(logits[j], token)
    return score.logprob, score.greedy


def causal_greedy_program(
    backend: Backend,
    context: Sequence[int],
    max_new_tokens: int,
    stop: Callable[[list[int]], bool],
    eos_token_ids: frozenset[int],
) -> Program:
    """Greedy decoding after a prefill, until an EOS token, ``stop(tokens)``, ``max_new_tokens`` or the compiled length."""
    prefill = yield Open(context)
    assert prefill is not None
    return (yield from greedy(prefill[-1], len(context), max_new_tokens, backend.max_length, stop, eos_token_ids))
