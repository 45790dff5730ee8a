"""An encoder-decoder LM's programs: encode the context once, then decoder steps from the start token."""

from __future__ import annotations

from typing import Callable, Sequence

from rbln_eval.core.programs import Backend, Open, Program, Score, Step, greedy, teacher_forced


def seq2seq_loglikelihood_program(backend: Backend, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
    """Score every continuation of one context: encode the context, then decoder steps from the start token."""
    scores = [Score() for _ in continuations]
    opened = yield Open(context)
    assert opened is None
    first = yield Step(int(backend.decoder_start_token_id), 0)
    return (yield from teacher_forced(scores, first, continuations, 1, skip=None))


def seq2seq_greedy_program(
    backend: Backend,
    context: Sequence[int],
    max_new_tokens: int,
    stop: Callable[[list[int]], bool],
    eos_token_ids: frozenset[int],
) -> Program:
    """Greedy decoding after encoding ``context``, from the decoder start token."""
    yield Open(context)
    logits = yield Step(int(backend.decoder_start_token_id), 0)
    return (yield from greedy(logits, 1, max_new_tokens, backend.max_length, stop, eos_token_ids))
