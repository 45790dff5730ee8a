"""Tiny extractive QA models built locally (seeded) and local SQuAD-like dataset tasks over the demo corpus.

A BERT and a DistilBERT QA model share a WordPiece vocabulary trained on the demo corpus. A question is a corpus
sentence with one word asked for; its context is that sentence among others, some contexts longer than the
compiled length (several windows). ``qa_local`` has an answer for every question (its gold answers: the word, and
the word with its neighbour); ``qa_local_v2`` (SQuAD v2) also has questions whose context lacks the sentence, with no
answer. The QA heads are fitted so that the first questions are answered (some in part).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from mlmmodels import corpus_sentences, train_wordpiece

MAX_POSITIONS = 64
#: Examples the QA head is fitted on: the first of the tasks' examples.
FITTED = 6

TASK_YAML = """dataset_task: {name}
kind: question-answering
dataset_path: json
data_files: {{test: {data}}}
split: test
columns: {{question: question, context: context}}
label: answers
metrics: {metrics}
{extra}"""
V1_METRICS = ["exact", "f1"]
V2_METRICS = ["exact", "f1", "has_ans_exact", "has_ans_f1", "no_ans_exact", "no_ans_f1"]


def qa_docs(count: int, unanswerable: bool) -> list[dict[str, Any]]:
    """``count`` SQuAD-like rows; every third context is long (five sentences); with ``unanswerable``, every fourth
    question's sentence is left out of its context and it has no answer."""
    sentences = [s for s in corpus_sentences() if len(s.split()) <= 16]  # short questions: a window holds each
    docs = []
    for i in range(count):
        asked = sentences[3 * i + 1]
        words = asked.rstrip(".").split()
        word = words[len(words) // 2]
        question = "what is " + " ".join(w if w != word else "what" for w in words) + "?"
        others = sentences[3 * i + 2 : 3 * i + (6 if i % 3 == 2 else 3)]
        if unanswerable and i % 4 == 3:
            context, answers = " ".join(others + [sentences[3 * i]]), {"text": [], "answer_start": []}
        else:
            context = " ".join([sentences[3 * i], asked] + others)
            start = len(sentences[3 * i]) + 1 + asked.index(word)
            pair = word + " " + words[len(words) // 2 + 1] if len(words) // 2 + 1 < len(words) else word
            answers = {"text": [word, pair], "answer_start": [start, start]}
        docs.append({"id": f"q{i}", "question": question, "context": context, "answers": answers})
    return docs


def trained_span(doc: dict[str, Any], index: int) -> tuple[int, int] | None:
    """The character span the model is trained to answer: the first gold answer, or (every third question) that
    answer and the two words after it, which the gold answers overlap only in part."""
    if not doc["answers"]["text"]:
        return None
    first = doc["answers"]["answer_start"][0]
    last = first + len(doc["answers"]["text"][0])
    if index % 3 == 1:
        for _ in range(2):
            following = doc["context"].find(" ", last + 1)
            last = following if following > 0 else len(doc["context"])
    return first, last


def fit_spans(model: Any, tokenizer: Any, docs: list[dict[str, Any]], steps: int = 120) -> None:
    """Train the model (a few Adam steps) to answer ``docs`` with :func:`trained_span`: untrained, it answers at random."""
    import torch

    batches = []
    for index, doc in enumerate(docs):
        encoded = tokenizer(doc["question"], doc["context"], truncation="only_second", max_length=MAX_POSITIONS,
                            return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping")[0].tolist()
        if "token_type_ids" in encoded and "token_type_ids" not in model.forward.__code__.co_varnames:
            encoded.pop("token_type_ids")
        span, sequence = trained_span(doc, index), encoded.sequence_ids(0)
        start = end = 0  # no answer: the CLS position
        if span is not None:
            start = next((p for p, (a, b) in enumerate(offsets) if sequence[p] == 1 and a <= span[0] < b), -1)
            end = next((p for p, (a, b) in enumerate(offsets) if sequence[p] == 1 and a < span[1] <= b), -1)
            if start < 0 or end < 0:
                continue  # the answer lies past the first window
        batches.append((dict(encoded), torch.tensor([start]), torch.tensor([end])))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        for inputs, start, end in batches:
            optimizer.zero_grad()
            model(**inputs, start_positions=start, end_positions=end).loss.backward()
            optimizer.step()
    model.eval()


@functools.lru_cache(maxsize=None)
def tiny_qa_model(root: str, kind: str) -> Path:
    """Save a tiny seeded ``bert`` or ``distilbert`` QA model with its tokenizer under ``root``; its path."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, DistilBertConfig, DistilBertForQuestionAnswering

    out = Path(root) / f"tiny-{kind}-qa"
    if (out / "config.json").is_file():
        return out
    tokenizer = train_wordpiece(corpus_sentences(), out / "vocab")
    tokenizer.model_max_length = MAX_POSITIONS
    if kind == "bert":
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id,
                            hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            architectures=["BertForQuestionAnswering"])
        model_cls: Any = BertForQuestionAnswering
    elif kind == "distilbert":
        config = DistilBertConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id,
                                  dim=64, hidden_dim=64, n_layers=2, n_heads=2, dropout=0.0, attention_dropout=0.0,
                                  qa_dropout=0.0, architectures=["DistilBertForQuestionAnswering"])
        model_cls = DistilBertForQuestionAnswering
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    fit_spans(model, tokenizer, qa_docs(FITTED, unanswerable=False))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@functools.lru_cache(maxsize=None)
def qa_tasks(root: str, count: int) -> Path:
    """A task directory: ``qa_local`` and ``qa_local_v2`` (``count`` questions each)."""
    out = Path(root) / f"qa-tasks-{count}"
    out.mkdir(parents=True, exist_ok=True)
    for name, unanswerable, metrics in (("qa_local", False, V1_METRICS), ("qa_local_v2", True, V2_METRICS)):
        rows = qa_docs(count, unanswerable)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        extra = "unanswerable: true\n" if unanswerable else ""
        (out / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=f"{name}.jsonl", metrics=json.dumps(metrics), extra=extra))
    return out
