"""One replica of a bundle in this process: how a work item becomes a program, and the executor that runs them."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rbln_eval import sim
from rbln_eval.core.programs import Program, forward_program, run_programs, with_media
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.work import ForwardWork, ScoreWork, Work
from rbln_eval.execution.loader import LoadedBundle
from rbln_eval.families.base import Family
from rbln_eval.families.registry import family_of


def pad_token_id(tokenizer: Any) -> int:
    """The token idle batch rows are fed (pad, else EOS, else 0)."""
    if tokenizer is None:
        return 0
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def stop_checker(tokenizer: Any, until: Sequence[str]) -> Callable[[list[int]], bool]:
    """True once the decoded generation contains a stop sequence."""

    def stop(tokens: list[int]) -> bool:
        if not until:
            return False
        text = tokenizer.decode(tokens[-64:], skip_special_tokens=False)
        return any(term in text for term in until)

    return stop


class Replica:
    """One loaded replica: its backend, family and tokenizer, and how a work item becomes a program."""

    def __init__(self, loaded: LoadedBundle) -> None:
        self.loaded = loaded
        self.family: Family = family_of(loaded.model_class)
        self.backend = self.family.backend(loaded.model)
        self.tokenizer = loaded.tokenizer
        self.pad_token = pad_token_id(self.tokenizer)
        self.eos_ids = frozenset(i for i in (getattr(self.tokenizer, "eos_token_id", None),) if i is not None)

    @property
    def shape(self) -> ReplicaShape:
        return self.backend.shape

    def program(self, work: Work) -> Program:
        if isinstance(work, ScoreWork):
            program = self.family.loglikelihood_program(self.backend, work.context, work.continuations)
        elif isinstance(work, ForwardWork):
            return with_media(forward_program(), work.media)
        else:
            stop = stop_checker(self.tokenizer, work.until)
            program = self.family.greedy_program(self.backend, work.tokens, work.max_new_tokens, stop, self.eos_ids)
        return self.family.with_inputs(program, work)

    def run(self, items: Any, on_result: Callable[[int, Any], None]) -> None:
        """Run ``items`` (an iterable, consumed as rows free up), reporting ``(position, result)``."""
        run_programs(self.backend, (self.program(work) for work in items), on_result=on_result, pad_token=self.pad_token)


class LocalExecutor:
    """One replica in this process; items run in the order given (``costs`` are not needed)."""

    def __init__(self, loaded: LoadedBundle, groups: list[list[int]] | None = None) -> None:
        self.replica = Replica(loaded)
        self.groups = groups  # the placement asked for (None: the compiled default)
        self.bundle = loaded.bundle
        self.family = self.replica.family
        self.shape = self.replica.shape
        self.tokenizer = loaded.tokenizer
        self.load_seconds = loaded.load_seconds
        self._simulator_baseline = _simulator_counters()

    def run(self, items: Sequence[Work], costs: Sequence[int], sizes: Sequence[int], on_done: Callable[[int], None]) -> list[Any]:
        results: list[Any] = [None] * len(items)

        def collect(index: int, value: Any) -> None:
            results[index] = value
            on_done(sizes[index])

        self.replica.run(items, collect)
        return results

    def counters(self) -> dict[str, dict[str, int]]:
        return self.replica.backend.counters.as_dict()

    def describe(self) -> dict[str, Any]:
        if self._simulator_baseline is None:
            return {}
        return {"simulator_counters": _counter_delta(_simulator_counters(), self._simulator_baseline)}

    def close(self) -> None:
        pass


def _simulator_counters() -> dict[str, dict[str, float]] | None:
    """The simulator's own per-graph counters, when the NPU is simulated (a cross-check of ours)."""
    return sim.counters() if sim.is_active() else None


def _counter_delta(now: dict[str, dict[str, float]] | None, before: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
    delta: dict[str, dict[str, int]] = {}
    for graph, values in (now or {}).items():
        old = before.get(graph, {})
        calls = int(values.get("calls", 0) - old.get("calls", 0))
        if calls:
            delta[graph] = {"calls": calls, "tokens": int(values.get("input_tokens", 0) - old.get("input_tokens", 0))}
    return delta
