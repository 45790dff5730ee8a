"""The row scheduler: programs are pulled one at a time as rows fall free, results come back in order; a program
may prefill its row again on top of the row's cached prefix; loglikelihood planning shares a context per row, or
the common whole chunks of contexts that differ only after them."""

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


def test_contexts_sharing_whole_chunks_prefill_them_once_then_each_request_from_their_end() -> None:
    from rbln_eval.core.programs import job_work, plan_loglikelihood
    from rbln_eval.families.causal.programs import causal_loglikelihood_program

    common = [(3 * i + 1) % VOCAB for i in range(9)]  # two whole chunks of 4, then a token of the sentence
    requests = [
        (common + [2, 5], [6, 7, 1]),  # option A, the continuation
        (common + [3], [6, 7, 1]),  # option B
        (common + [3], [4]),  # one token after option B
        (common[:8], [5]),  # a context of exactly the common chunks, one token
    ]
    (job,) = plan_loglikelihood(requests, full_logits=True, prefill_chunk=4)
    assert job.prefix == 8 and job.context == tuple(common[:8]) and sorted(job.members) == [0, 1, 2, 3]
    work = job_work(job, requests)
    backend = PrefixBackend()
    (scores,) = run_programs(backend, [causal_loglikelihood_program(backend, work.context, work.continuations)])
    for index, score in zip(job.members, scores):
        expected = reference_score(*requests[index])
        assert score[1] == expected[1] and score[0] == pytest.approx(expected[0], abs=1e-6)
    # the common chunks once; from position 8 option A (3 + 3 tokens, the last not fed) and option B (2 + 3);
    # the one-token requests are read off option B's prefill and the common chunks' own logits
    assert sorted(backend.calls) == [(0, 0, 8), (0, 8, 4), (0, 8, 5)]


def test_a_shared_prefix_job_on_a_backend_without_prefix_reuse_prefills_each_request_whole() -> None:
    from rbln_eval.core.programs import job_work, plan_loglikelihood
    from rbln_eval.families.causal.programs import causal_loglikelihood_program

    common = list(range(1, 8)) * 2
    requests = [(common + [1], [2, 3]), (common + [4, 5], [2, 3])]
    (job,) = plan_loglikelihood(requests, full_logits=True, prefill_chunk=4)
    work = job_work(job, requests)
    backend = PrefixBackend()
    backend.reuses_prefix = False
    (scores,) = run_programs(backend, [causal_loglikelihood_program(backend, work.context, work.continuations)])
    assert [s[0] for s in scores] == pytest.approx([reference_score(*requests[i])[0] for i in job.members], abs=1e-6)
    assert sorted(backend.calls) == [(0, 0, 16), (0, 0, 17)]


def test_plan_groups_contexts_by_common_whole_chunks_only_when_that_saves_prefill() -> None:
    from rbln_eval.core.programs import plan_loglikelihood

    question = [1, 2, 3, 4, 5, 6, 7, 0, 1]  # 2 common chunks of 4
    other = [1, 2, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6]  # its first chunk only in common with the question
    requests = [
        (question + [2], [5, 6]), (question + [3], [5, 6]),  # a partial-evaluation pair: one job from position 8
        (other, [1, 2]), (other, [3, 4]), (other, [5, 6]),  # 3 choices of its own 3 chunks: not worth 1 chunk
        ([1, 2], [3, 4]), ([1, 3], [3, 4]),  # shorter than a chunk: as before, one job per context
    ]
    jobs = plan_loglikelihood(requests, full_logits=True, prefill_chunk=4)
    assert [(job.prefix, len(job.context), job.members) for job in jobs] == [
        (None, 12, (2, 3, 4)), (8, 8, (0, 1)), (None, 2, (5,)), (None, 2, (6,)),
    ]
    # without a prefill chunk (share_context_chunks off) or on a last-logit bundle: one job per context
    for plan in (plan_loglikelihood(requests, full_logits=True), plan_loglikelihood(requests, full_logits=False, prefill_chunk=4)):
        assert all(job.prefix is None for job in plan)
        assert sorted(len({tuple(requests[i][0]) for i in job.members}) for job in plan) == [1] * len(plan)
