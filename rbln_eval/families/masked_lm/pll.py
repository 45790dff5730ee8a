"""Pseudo-log-likelihood (Salazar et al. 2020) planned as masked copies, host side only.

A scored sequence is ``[CLS] context continuation [SEP]``. Each continuation token is masked in turn, with
the context (and the rest of the continuation) visible, and its log-probability at the masked position is
summed. The ``within_word_l2r`` variant (Kauf & Ivanova 2023) also masks the later tokens of the same word,
so a word split into several tokens is not scored off its own pieces; ``original`` masks the one token.

A masked copy is one row of the encoder: its tokens and the position read. Copies that are identical (the
one-token choices of a multiple-choice question) are run once and read for every target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rbln_eval.errors import ConfigError

WITHIN_WORD = "within_word_l2r"
ORIGINAL = "original"
VARIANTS = (WITHIN_WORD, ORIGINAL)


def check_variant(value: str) -> str:
    """The PLL variant named by the ``pll`` model_arg, or a one-line error."""
    if value not in VARIANTS:
        raise ConfigError(f"must be one of {', '.join(VARIANTS)}, got {value!r}", option="pll")
    return value


@dataclass(frozen=True)
class Scored:
    """One sequence to score: content tokens (no special tokens), and the word of each continuation token."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    words: tuple[int | None, ...]  # None: the token is a word of its own


@dataclass
class CopyPlan:
    """Masked copies of many sequences, deduplicated, and where each sequence's tokens are read."""

    copies: list[tuple[tuple[int, ...], int]] = field(default_factory=list)  # (masked tokens, position read)
    targets: list[list[int]] = field(default_factory=list)  # per copy: the distinct target tokens read
    reads: list[list[tuple[int, int]]] = field(default_factory=list)  # per sequence: (copy, index into its targets)
    _index: dict[tuple[tuple[int, ...], int], int] = field(default_factory=dict)

    def read(self, tokens: tuple[int, ...], position: int, target: int) -> tuple[int, int]:
        key = (tokens, position)
        copy = self._index.get(key)
        if copy is None:
            copy = self._index[key] = len(self.copies)
            self.copies.append(key)
            self.targets.append([])
        if target not in self.targets[copy]:
            self.targets[copy].append(target)
        return copy, self.targets[copy].index(target)


def masked_positions(index: int, words: Sequence[int | None], variant: str) -> list[int]:
    """Continuation indices masked when continuation token ``index`` is scored."""
    if variant == ORIGINAL or words[index] is None:
        return [index]
    return [index] + [j for j in range(index + 1, len(words)) if words[j] == words[index]]


def plan_copies(sequences: Sequence[Scored], cls_id: int, sep_id: int, mask_id: int, variant: str) -> CopyPlan:
    """The masked copies that score every continuation token of ``sequences``."""
    plan = CopyPlan()
    for sequence in sequences:
        whole = [cls_id, *sequence.context, *sequence.continuation, sep_id]
        offset = 1 + len(sequence.context)
        reads = []
        for i, target in enumerate(sequence.continuation):
            copy = list(whole)
            for j in masked_positions(i, sequence.words, variant):
                copy[offset + j] = mask_id
            reads.append(plan.read(tuple(copy), offset + i, target))
        plan.reads.append(reads)
    return plan


def combine(plan: CopyPlan, results: Sequence[Sequence[tuple[float, bool]]]) -> list[tuple[float, bool]]:
    """Per sequence: the summed log-probability of its tokens, and whether every one was the argmax."""
    scores = []
    for reads in plan.reads:
        logprob, greedy = 0.0, True
        for copy, target in reads:
            value, is_greedy = results[copy][target]
            logprob += value
            greedy = greedy and bool(is_greedy)
        scores.append((logprob, greedy))
    return scores


def windows(tokens: Sequence[int], words: Sequence[int | None], length: int) -> list[Scored]:
    """A document as consecutive disjoint windows of ``length`` tokens, each scored whole (no context)."""
    return [
        Scored((), tuple(tokens[start : start + length]), tuple(words[start : start + length]))
        for start in range(0, len(tokens), length)
    ]
