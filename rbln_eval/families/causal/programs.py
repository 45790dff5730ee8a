"""A causal LM's programs: score continuations off one prefill of their context, and greedy generation."""

from __future__ import annotations

from typing import Callable, Sequence

from rbln_eval.core.programs import Backend, Open, Program, Score, greedy, teacher_forced


def causal_loglikelihood_program(backend: Backend, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
    """Score every continuation of one context: ``[(logprob, is_greedy), ...]``.

    Prefill the context (with a full-logit bundle, plus the longest continuation, whose tokens are then
    all read off the prefill); other tokens are teacher-forced decode steps from the context's end.
    """
    scores = [Score() for _ in continuations]
    prefilled: int | None = None
    if backend.full_logits:
        prefilled = max(range(len(continuations)), key=lambda i: len(continuations[i]))
        longest = continuations[prefilled]
        logits = yield Open(list(context) + list(longest[:-1]))
        assert logits is not None
        offset = len(context) - 1
        for j in range(1, len(longest)):
            scores[prefilled].add(logits[offset + j], longest[j])
        first = logits[offset]
    else:
        logits = yield Open(context)
        assert logits is not None
        first = logits[-1]
    return (yield from teacher_forced(scores, first, continuations, len(context), skip=prefilled))


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
