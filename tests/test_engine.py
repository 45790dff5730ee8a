"""The row scheduler: programs are pulled one at a time as rows fall free, results come back in order."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from rbln_eval.core.programs import Open, Program, Step, run_programs

VOCAB = 8


class CountingBackend:
    """A two-row causal device that counts its calls; logits put all mass on ``position % VOCAB``."""

    batch_size = 2
    full_logits = False
    is_seq2seq = False
    decoder_start_token_id = None

    def __init__(self) -> None:
        self.calls: list[str] = []

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        self.calls.append(f"open{row}")
        logits = torch.zeros(1, VOCAB)
        logits[0, len(tokens) % VOCAB] = 1.0
        return logits

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        self.calls.append("step" + "".join("x" if a else "." for a in active))
        logits = torch.zeros(self.batch_size, VOCAB)
        for row, position in enumerate(positions):
            logits[row, (position + 1) % VOCAB] = 1.0
        return logits


def counting_program(name: str, steps: int) -> Program:
    logits = yield Open([1, 2, 3])
    seen = [int(logits[-1].argmax())]
    for position in range(3, 3 + steps):
        logits = yield Step(seen[-1], position)
        seen.append(int(logits.argmax()))
    return name, seen


def test_programs_are_pulled_only_when_a_row_is_free() -> None:
    backend = CountingBackend()
    finished: list[int] = []
    occupancy_at_pull: list[int] = []
    steps = [3, 1, 0, 2, 1]

    def source() -> Iterator[Program]:
        for index, count in enumerate(steps):
            occupancy_at_pull.append(index - len(finished))  # programs pulled but not finished
            yield counting_program(f"p{index}", count)

    results = run_programs(backend, source(), on_result=lambda index, _: finished.append(index))

    assert results == [(f"p{i}", [(3 + j) % VOCAB for j in range(count + 1)]) for i, count in enumerate(steps)]
    assert max(occupancy_at_pull) < backend.batch_size  # never more programs in hand than free rows
    assert finished == [1, 2, 0, 3, 4]
    assert backend.calls == [
        "open0", "open1", "stepxx",  # p0 and p1 start; p1 ends after its one step
        "open1", "open1", "stepxx",  # p2 ends on its prefill, p3 takes row 1
        "stepxx",  # p0 and p3 end
        "open0", "stepx.",  # p4 alone
    ]
