"""Question + context → windows of the compiled length, and the windows' start/end logits → the answer span.

A context longer than the compiled length is split into overlapping windows (``stride`` tokens shared, a third
of the length by default: 128 of 384, as the SQuAD reference scripts), each one row of the graph. The answer is
decoded the way transformers' question-answering pipelines do (``select_starts_ends``: softmax over the window's
context tokens, the best start × end product with ``end - start < max_answer_len``); across windows the best
span wins, and where the task has unanswerable questions (SQuAD v2) the empty answer wins when its score
(the CLS position's, at its lowest over the windows) is higher.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from rbln_eval.errors import ConfigError

#: The longest answer, in tokens, when the task does not say (the SQuAD reference scripts' setting).
DEFAULT_MAX_ANSWER_LENGTH = 30
#: Host-side fields of a window (where its tokens lie in the context), not inputs of the graph.
HOST_FIELDS = ("context_mask", "offsets")


@dataclass(frozen=True)
class Answer:
    """An example's predicted answer (``""``: unanswerable) and its score (the span's probability)."""

    text: str
    score: float


@dataclass(frozen=True)
class QuestionContextEncoder:
    """A bundle's tokenizer and compiled shape: (question, context) → one row's inputs per window."""

    tokenizer: Any
    compiled_length: int
    max_tokens: int
    input_names: tuple[str, ...]
    #: A fast tokenizer's truncation settings are shared state: host threads take turns.
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def fitted_question(self, question: str) -> str:
        """The question, cut (at a token boundary) to at most half the tokens a window holds."""
        limit = self.max_tokens // 2
        encoded = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) <= limit:
            return question
        return question[: encoded["offset_mapping"][limit - 1][1]]

    def windows(self, question: str, context: str) -> list[dict[str, torch.Tensor]]:
        """The example's windows: the graph's inputs padded to the compiled length, plus :data:`HOST_FIELDS`."""
        if self.tokenizer.padding_side != "right":
            raise ConfigError("extractive QA reads the question first: the tokenizer must pad on the right")
        with self.lock:
            question = self.fitted_question(question.lstrip())  # SQuAD v2 has questions with leading spaces
            question_tokens = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
            room = self.max_tokens - question_tokens - self.tokenizer.num_special_tokens_to_add(pair=True)
            stride = max(0, min(self.max_tokens // 3, room - 1))
            encoded = self.tokenizer(
                question, context, truncation="only_second", max_length=self.max_tokens, stride=stride,
                return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length",
            )
        windows = []
        for index, ids in enumerate(encoded["input_ids"]):
            in_context = [sequence == 1 for sequence in encoded.sequence_ids(index)]
            window = {}
            for name in self.input_names:
                values = encoded[name][index] if name in encoded else [0] * len(ids)
                fill = int(self.tokenizer.pad_token_id or 0) if name == "input_ids" else 0
                window[name] = torch.tensor(list(values) + [fill] * (self.compiled_length - len(values)), dtype=torch.long)
            padding = self.compiled_length - len(ids)
            window["context_mask"] = torch.tensor(in_context + [False] * padding)
            window["offsets"] = torch.tensor([list(span) for span in encoded["offset_mapping"][index]] + [[0, 0]] * padding)
            windows.append(window)
        return windows


def best_answer(
    context: str, windows: Sequence[Mapping[str, torch.Tensor]], outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    max_answer_len: int = DEFAULT_MAX_ANSWER_LENGTH, unanswerable: bool = False,
) -> Answer:
    """The best span over an example's windows (their ``(start_logits, end_logits)``), or ``""`` where
    ``unanswerable`` questions are allowed and the empty answer scores higher."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    null_score = 1_000_000.0  # large and positive, lowered by each window (transformers' pipelines' convention)
    best = Answer("", -1.0)
    for window, (start, end) in zip(windows, outputs):
        p_mask = (~window["context_mask"].bool()).numpy().astype(np.int64)
        p_mask[0] = 0  # the CLS position may be chosen: the empty answer
        attention = window["attention_mask"].numpy() if "attention_mask" in window else None
        starts, ends, scores, null_score = select_starts_ends(
            np.asarray(start.float().numpy())[None], np.asarray(end.float().numpy())[None], p_mask, attention,
            min_null_score=null_score, top_k=1, handle_impossible_answer=unanswerable, max_answer_len=max_answer_len,
        )
        offsets = window["offsets"].tolist()
        for first, last, score in zip(starts, ends, scores):
            if float(score) > best.score:
                best = Answer(context[offsets[first][0]:offsets[last][1]], float(score))
    if unanswerable and null_score > best.score:
        return Answer("", float(null_score))
    return best
