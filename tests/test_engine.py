"""The row scheduler: programs are pulled one at a time as rows fall free, results come back in order; a program
may prefill its row again on top of the row's cached prefix; loglikelihood planning shares a context per row."""

from __future__ import annotations

from typing import Iterator, Sequence

import pytest
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


class PrefixBackend:
    """A two-row full-logit device that keeps each row's tokens: a prefill from ``start`` keeps the row's
    positions before it. The logits of a position depend on every token up to it."""

    batch_size = 2
    full_logits = True
    reuses_prefix = True
    prefill_chunk = 4
    max_length = 64

    def __init__(self) -> None:
        self.rows: list[list[int]] = [[], []]
        self.calls: list[tuple[int, int, int]] = []  # (row, start, tokens)

    @staticmethod
    def logits_after(prefix: Sequence[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash(tuple(prefix)) % (2**31))
        return torch.randn(VOCAB, generator=generator)

    def open(self, row: int, tokens: Sequence[int], start: int = 0) -> torch.Tensor:
        assert start % self.prefill_chunk == 0 and start <= len(self.rows[row])
        self.calls.append((row, start, len(tokens)))
        self.rows[row] = self.rows[row][:start] + list(tokens)
        return torch.stack([self.logits_after(self.rows[row][: p + 1]) for p in range(start, len(self.rows[row]))])

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        raise AssertionError("a full-logit bundle scores without decode steps")


def reference_score(context: Sequence[int], continuation: Sequence[int]) -> tuple[float, bool]:
    whole = list(context) + list(continuation)
    logprob, greedy = 0.0, True
    for j, token in enumerate(continuation):
        logits = PrefixBackend.logits_after(whole[: len(context) + j])
        logprob += float(torch.log_softmax(logits, -1)[token])
        greedy = greedy and int(logits.argmax()) == token
    return logprob, greedy


@pytest.mark.parametrize("length", [3, 8, 10])  # shorter than a chunk, a whole number of chunks, a tail of 2
def test_shared_context_prefilled_once_then_each_choice_from_its_last_chunk_boundary(length: int) -> None:
    from rbln_eval.families.causal.programs import causal_loglikelihood_program

    backend = PrefixBackend()
    context = [(3 * i + 1) % VOCAB for i in range(length)]
    continuations = [[1, 2, 3], [4], [5, 6], [7]]
    (scores,) = run_programs(backend, [causal_loglikelihood_program(backend, context, continuations)])
    for score, continuation in zip(scores, continuations):
        expected = reference_score(context, continuation)
        assert score[1] == expected[1] and score[0] == pytest.approx(expected[0], abs=1e-6)
    start = length // 4 * 4
    shared = [(0, 0, start)] if start else []
    tail = length - start
    assert backend.calls == shared + [(0, start, tail + 2), (0, start, tail + 1)]  # one-token choices: no call


def test_one_multi_token_choice_is_one_prefill_of_context_and_choice() -> None:
    from rbln_eval.families.causal.programs import causal_loglikelihood_program

    backend = PrefixBackend()
    context = list(range(1, 8)) * 2
    continuations = [[1], [2, 3, 4], [5]]
    (scores,) = run_programs(backend, [causal_loglikelihood_program(backend, context, continuations)])
    assert [s[0] for s in scores] == pytest.approx([reference_score(context, c)[0] for c in continuations], abs=1e-6)
    assert backend.calls == [(0, 0, len(context) + 2)]


def test_a_program_reopens_its_row_before_the_next_program_is_pulled() -> None:
    backend = PrefixBackend()

    def program(name: str) -> Program:
        yield Open([1, 2, 3, 4, 5])
        logits = yield Open([6, 7], start=4)
        return name, tuple(logits.shape)

    results = run_programs(backend, [program("a"), program("b")])
    assert results == [("a", (2, VOCAB)), ("b", (2, VOCAB))]
    assert backend.calls == [(0, 0, 5), (0, 4, 2), (0, 0, 5), (0, 4, 2)]  # "a" ends on its prefills: row 0 is free


def test_a_program_must_open_its_row_from_position_0_first() -> None:
    def program() -> Program:
        yield Open([1, 2], start=4)

    with pytest.raises(RuntimeError, match="from position 0 first"):
        run_programs(PrefixBackend(), [program()])


def test_plan_shares_a_context_of_whole_chunks_among_all_its_requests() -> None:
    from rbln_eval.core.programs import PREFILL_BUDGET, plan_loglikelihood

    long, short = list(range(10)), [1, 2]
    requests = [(long, [1, 2]), (long, [3, 4, 5]), (short, [1, 2]), (short, [3, 4]), (long, [6]), (short, [7])]
    jobs = plan_loglikelihood(requests, full_logits=True, prefill_chunk=4)
    # the long context: one job; the short one (less than a chunk) as before: one multi-token continuation
    # (plus the single-token ones) per job
    assert [(len(job.context), job.members) for job in jobs] == [(10, (0, 1, 4)), (2, (2, 5)), (2, (3,))]
    # without a prefill chunk (or on a last-logit bundle) planning is unchanged
    assert [job.members for job in plan_loglikelihood(requests, full_logits=True)] == [(0, 4), (1,), (2, 5), (3,)]
    # a context shared by more continuation chunks than a job may hold is split
    many = [(long, [1] * 6)] * (PREFILL_BUDGET + 1)  # each: tail 2 + 5 tokens = 2 chunks
    sizes = [len(job.members) for job in plan_loglikelihood(many, full_logits=True, prefill_chunk=4)]
    assert sizes == [PREFILL_BUDGET // 2, PREFILL_BUDGET // 2, 1]
