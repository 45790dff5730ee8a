"""Work items and executors: what :class:`~rbln_eval.core.lm.BundleLM` asks a bundle's replicas to do.

The lm tokenizes, fits and plans requests into *work items* (typed, picklable); an executor turns each item
into a program for its replica's backend and runs them: one replica in this process
(:class:`rbln_eval.execution.local.LocalExecutor`) or a pool of workers (:mod:`rbln_eval.execution.pool`).
Both return results in item order, so the scores do not depend on which one ran them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.store import Bundle


@dataclass(frozen=True)
class Media:
    """A request's inputs besides tokens, as its processor prepared them: a prompt's images (``pixel_values``, …)
    or a clip's audio features (``input_features``, ``input_values``); how many there are, and their content key."""

    inputs: dict[str, Any]
    count: int
    key: str


class MediaPrompt(Sequence[int]):
    """Prompt tokens that carry their request's :class:`Media`: what a backend's ``open`` receives for a
    multimodal work item (the program still sees, and steps over, the plain tokens)."""

    def __init__(self, tokens: Sequence[int], media: Media) -> None:
        self.tokens = list(tokens)
        self.media = media

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: Any) -> Any:
        return self.tokens[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self.tokens)


class Continuation(tuple):
    """Tokens after a job's shared ``context`` of which only the last ``scored`` are scored.

    Requests whose contexts differ but share a prefix are one job: its ``context`` is the common prefix and
    each request's continuation is the rest of its own context followed by the tokens scored.
    """

    scored: int

    def __new__(cls, tokens: Sequence[int], scored: int) -> "Continuation":
        made = super().__new__(cls, tokens)
        made.scored = scored
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        return (Continuation, (tuple(self), self.scored))


def scored_length(continuation: Sequence[int]) -> int:
    """How many trailing tokens of ``continuation`` are scored (all, unless it is a :class:`Continuation`)."""
    return getattr(continuation, "scored", len(continuation))


@dataclass(frozen=True)
class ScoreWork:
    """Score ``continuations`` after one shared ``context``: ``[(logprob, is_greedy), ...]``.

    A continuation may be a :class:`Continuation`: then only its last ``scored`` tokens are scored.
    """

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    media: Media | None = None  # a multimodal context: its images or audio, encoded with it


@dataclass(frozen=True)
class GenerateWork:
    """Greedy generation from ``tokens``: at most ``max_new_tokens``, until a stop sequence or EOS."""

    tokens: tuple[int, ...]
    max_new_tokens: int
    until: tuple[str, ...]
    media: Media | None = None


@dataclass(frozen=True)
class ForwardWork:
    """One forward pass over one example's inputs (an image, a clip, a sentence): the family's outputs of it."""

    media: Media


Work = ScoreWork | GenerateWork | ForwardWork


class Executor(Protocol):
    """Runs work items on one or more replicas of a bundle."""

    bundle: Bundle
    family: Any  # the bundle's model family (a rbln_eval.families.base.Family: the core does not import families)
    shape: ReplicaShape
    tokenizer: Any
    load_seconds: float
    groups: list[list[int]] | None  # each replica's devices (None: one replica, compiled placement)

    def run(self, items: Sequence[Work], costs: Sequence[int], sizes: Sequence[int], on_done: Callable[[int], None]) -> list[Any]:
        """Results of ``items`` in their order; ``sizes`` counts requests per item for ``on_done``."""

    def counters(self) -> dict[str, dict[str, int]]:
        """Device calls and padded tokens per graph, all replicas together."""

    def describe(self) -> dict[str, Any]:
        """What to record about the replicas in the results' provenance."""

    def close(self) -> None:
        """Release the replicas."""
