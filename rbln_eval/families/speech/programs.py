"""Speech programs for :func:`rbln_eval.core.programs.run_programs`.

Whisper: the clip is encoded when its row opens; the decoder prompt (start of transcript, language, task,
no-timestamps, then any text prefix) is fed one token per step, as optimum-rbln's own generation feeds it;
generation is greedy with Whisper's token suppression (``suppress_tokens`` always, ``begin_suppress_tokens``
on the first generated token), as transformers' ``generate`` applies them. A prompt token
:data:`DETECT_LANGUAGE` is the language the decoder finds most likely after the start token (transformers'
language detection). CTC: one encoder row, greedy CTC ids per frame.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from rbln_eval.core.programs import Open, Program, Score, Step, teacher_forced

#: A decoder prompt position whose token is the detected language.
DETECT_LANGUAGE = -1


def feed_prompt(backend: Any, prompt: Sequence[int]) -> Program:
    """Open the row, then feed ``prompt`` token by token; returns the logits after its last token."""
    yield Open(prompt)
    logits: Any = None
    for position, token in enumerate(prompt):
        if token == DETECT_LANGUAGE:
            if not backend.language_ids:
                raise ValueError("the model's generation config has no languages to detect")
            ids = torch.tensor(backend.language_ids)
            token = int(ids[int(logits[ids].argmax())])
        logits = yield Step(int(token), position)
    return logits


def suppressed(logits: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    if not tokens:
        return logits
    logits = logits.clone()
    logits[list(tokens)] = float("-inf")
    return logits


def whisper_greedy_program(
    backend: Any, prompt: Sequence[int], max_new_tokens: int, stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
) -> Program:
    """Greedy transcription after the decoder ``prompt``: the new tokens, EOS included when reached."""
    logits = yield from feed_prompt(backend, prompt)
    position = len(prompt)
    generated: list[int] = []
    while len(generated) < max_new_tokens:
        scores = suppressed(logits, backend.suppress_tokens)
        if not generated:
            scores = suppressed(scores, backend.begin_suppress_tokens)
        token = int(scores.argmax())
        generated.append(token)
        if token in eos_token_ids or stop(generated) or position >= backend.max_length:
            break
        logits = yield Step(token, position)
        position += 1
    return generated


def whisper_loglikelihood_program(backend: Any, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
    """The decoder's log-probability of each continuation after ``prompt`` (no suppression: the model's own)."""
    first = yield from feed_prompt(backend, prompt)
    scores = [Score() for _ in continuations]
    return (yield from teacher_forced(scores, first, continuations, len(prompt), skip=None))


def ctc_program(backend: Any) -> Program:
    """Greedy CTC: the argmax id of every frame of the clip (blanks and repeats still in)."""
    yield Open(())
    logits = yield Step(0, 0)
    return [int(t) for t in logits.argmax(-1).tolist()]
