"""Dataset task metrics from libraries (the definitions the model cards quote), computed offline.

Classification metrics come from scikit-learn: ``y_true`` and ``y_pred`` are dataset label indices (a prediction of
a model label the dataset does not have is ``-1``: always wrong); ``scores`` are the model's logits of the
dataset's labels, ``[examples, labels]``. Extractive QA metrics are the official SQuAD (v1.1 and v2) exact match
and F1 as transformers ships them (``transformers.data.metrics.squad_metrics``), in percent: each prediction
against its best gold answer, an unanswerable question's gold answer being ``""``; ``has_ans_*`` and ``no_ans_*``
are the same over the answerable and the unanswerable questions (absent when the task has none of them).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

#: Metric name → (function of y_true, y_pred, scores; higher is better).
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def top1(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def top5(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import top_k_accuracy_score

    labels = scores.shape[1]
    if labels <= 5:
        return 1.0
    return float(top_k_accuracy_score(y_true, scores, k=5, labels=np.arange(labels)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", labels=np.arange(scores.shape[1]), zero_division=0))


def mcc(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(y_true, y_pred))


METRICS: dict[str, Metric] = {"top1": top1, "top5": top5, "macro_f1": macro_f1, "mcc": mcc}


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The gold answers a prediction is scored against: the non-empty ones, or ``[""]`` (unanswerable)."""
    from transformers.data.metrics.squad_metrics import normalize_answer

    return [a for a in answers if normalize_answer(a)] or [""]


def answer_scores(golds: Sequence[Sequence[str]], predictions: Sequence[str]) -> tuple[list[int], list[float]]:
    """Each prediction's exact match (0/1) and F1 against its best gold answer."""
    from transformers.data.metrics.squad_metrics import compute_exact, compute_f1

    exact, f1 = [], []
    for answers, prediction in zip(golds, predictions):
        gold = gold_answers(answers)
        exact.append(max(compute_exact(a, prediction) for a in gold))
        f1.append(max(compute_f1(a, prediction) for a in gold))
    return exact, f1


def answer_metrics(golds: Sequence[Sequence[str]], predictions: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """The SQuAD metrics ``names`` (``exact``, ``f1``, ``has_ans_exact``, …) of ``predictions``, in percent."""
    exact, f1 = answer_scores(golds, predictions)
    answerable = [gold_answers(answers) != [""] for answers in golds]
    subsets = {"": [True] * len(golds), "has_ans_": answerable, "no_ans_": [not a for a in answerable]}
    values: dict[str, float] = {}
    for prefix, chosen in subsets.items():
        count = sum(chosen)
        if count:
            values[f"{prefix}exact"] = 100.0 * sum(e for e, c in zip(exact, chosen) if c) / count
            values[f"{prefix}f1"] = 100.0 * sum(f for f, c in zip(f1, chosen) if c) / count
    return {name: values[name] for name in names if name in values}


ANSWER_METRICS = ("exact", "f1", "has_ans_exact", "has_ans_f1", "no_ans_exact", "no_ans_f1")
#: The metrics each kind of dataset task may name.
KIND_METRICS = {"question-answering": ANSWER_METRICS}


def check_metrics(task: str, kind: str, names: Sequence[str]) -> None:
    known = KIND_METRICS.get(kind, tuple(METRICS))
    unknown = [name for name in names if name not in known]
    if unknown:
        from rbln_eval.errors import ConfigError

        raise ConfigError(f"task {task}: unknown metric(s) {', '.join(unknown)} for a {kind} task; known: {', '.join(known)}")
