"""Extractive QA tasks: every question's gold answers read from the dataset (SQuAD's ``answers`` column), and the
predicted answers scored against them (:mod:`.metrics`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rbln_eval.errors import ConfigError
from rbln_eval.evaluation.datasets.metrics import answer_metrics, answer_scores
from rbln_eval.evaluation.datasets.spec import DatasetTask


def dataset_answers(task: DatasetTask, dataset: Any) -> list[list[str]]:
    """Each question's gold answers: the column holds SQuAD's ``{"text": [...], "answer_start": [...]}`` (or a list
    of answer strings); an empty list is an unanswerable question (SQuAD v2)."""
    if task.label not in dataset.column_names:
        raise ConfigError(f"task {task.name}: the dataset has no answers column {task.label!r} ({', '.join(dataset.column_names)})")
    golds = []
    for value in dataset[task.label]:
        texts = value.get("text") if isinstance(value, Mapping) else value
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(
                f"task {task.name}: answers column {task.label!r} must hold SQuAD's {{'text': [...], 'answer_start': [...]}} "
                f"or lists of answers, got {value!r:.80}"
            )
        golds.append(list(texts))
    if not task.config.get("unanswerable") and any(not texts for texts in golds):
        raise ConfigError(
            f"task {task.name}: {sum(not t for t in golds)} questions have no answer: set unanswerable: true in the "
            "task YAML (SQuAD v2) so the model may answer none"
        )
    return golds


def score_answers(
    golds: Sequence[Sequence[str]], metrics: Sequence[str], predictions: Sequence[Mapping[str, Any]], log_samples: bool,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics (and samples) of the predicted answers (``{"text", "score"}`` per question)."""
    texts = [str(p["text"]) for p in predictions]
    values = answer_metrics(golds, texts, metrics)
    samples = []
    if log_samples:
        exact, f1 = answer_scores(golds, texts)
        for doc_id, (answers, prediction, hit, overlap) in enumerate(zip(golds, predictions, exact, f1)):
            samples.append({
                "doc_id": doc_id, "target": list(answers), "resps": [[prediction["text"]]],
                "filtered_resps": [prediction["text"]], "prediction": prediction["text"],
                "score": float(prediction["score"]), "exact": int(hit), "f1": float(overlap),
            })
    return values, samples
