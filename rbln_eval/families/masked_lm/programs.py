"""A masked LM's program for :func:`rbln_eval.core.programs.run_programs`: one masked copy on one batch row.

``Open(tokens)`` places the copy in its row (no device work); ``Step(mask, position)`` asks for the logits at
``position``, and the backend answers every waiting row with one encoder call over the whole batch. So the
rows of an encoder call are the masked copies of any requests, packed as ``run_programs`` refills rows.
"""

from __future__ import annotations

from typing import Sequence

from rbln_eval.core.programs import Backend, Open, Program, Score, Step


def masked_copy_program(backend: Backend, tokens: Sequence[int], reads: Sequence[Sequence[int]]) -> Program:
    """Score ``reads`` (``(position, target)`` pairs) off one encoder row of ``tokens``: ``[(logprob, is_greedy)]``."""
    yield Open(tokens)
    logits_at: dict[int, object] = {}
    results = []
    for position, target in reads:
        if position not in logits_at:
            logits_at[position] = yield Step(int(tokens[position]), int(position))
        score = Score()
        score.add(logits_at[position], int(target))  # type: ignore[arg-type]
        results.append((score.logprob, score.greedy))
    return results
