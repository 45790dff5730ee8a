"""Classification tasks: the dataset's labels read and matched to the model's (:mod:`.labels`), and the model's
logits scored against them (:mod:`.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rbln_eval.errors import ConfigError
from rbln_eval.evaluation.datasets.labels import BY_INDEX, match_labels, model_labels
from rbln_eval.evaluation.datasets.metrics import METRICS
from rbln_eval.evaluation.datasets.spec import DatasetTask

#: The top predictions recorded per sample with ``--log_samples``.
TOP_K = 5


@dataclass
class ClassLabels:
    """A task's labels: their names, every example's label as an index into them, the model id of each."""

    names: list[str]
    y_true: np.ndarray
    model_ids: list[int]
    model_labels: list[str]

    def limited(self, count: int) -> "ClassLabels":
        return ClassLabels(self.names, self.y_true[:count], self.model_ids, self.model_labels)


def dataset_labels(task: DatasetTask, dataset: Any, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The dataset's label names and every example's label as an index into them."""
    if task.label not in dataset.column_names:
        raise ConfigError(f"task {task.name}: the dataset has no label column {task.label!r} ({', '.join(dataset.column_names)})")
    values = dataset[task.label]
    feature = dataset.features[task.label]
    if hasattr(feature, "names"):
        return list(feature.names), np.asarray(values, dtype=np.int64)
    if task.label_names:
        return list(task.label_names), np.asarray(values, dtype=np.int64)
    if values and all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        return names, np.asarray([index[v] for v in values], dtype=np.int64)
    if task.label_map == BY_INDEX:
        return [str(i) for i in range(len(labels))], np.asarray(values, dtype=np.int64)
    raise ConfigError(
        f"task {task.name}: label column {task.label!r} holds numbers without names: give label_names in the task "
        "YAML, or label_map: by_index when they are the model's own ids"
    )


def class_labels(task: DatasetTask, dataset: Any, id2label: Any, bundle: str) -> ClassLabels:
    """The task's labels, each matched to one of the model's (else one line saying how to map them)."""
    labels = model_labels(id2label)
    names, y_true = dataset_labels(task, dataset, labels)
    return ClassLabels(names, y_true, match_labels(task.name, names, labels, task.label_map, bundle), labels)


def score_classes(
    labels: ClassLabels, metrics: Sequence[str], logits: np.ndarray, log_samples: bool,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics (and samples) of a task's logits ``[examples, model labels]``."""
    ids = np.asarray(labels.model_ids)
    to_dataset = {model_id: index for index, model_id in enumerate(labels.model_ids)}
    predicted = logits.argmax(axis=1) if len(logits) else np.zeros(0, dtype=np.int64)
    y_pred = np.asarray([to_dataset.get(int(p), -1) for p in predicted], dtype=np.int64)
    scores = logits[:, ids] if len(logits) else np.zeros((0, len(ids)))
    values = {name: METRICS[name](labels.y_true, y_pred, scores) for name in metrics}
    samples = []
    if log_samples:
        for doc_id, (row, truth, guess) in enumerate(zip(logits, labels.y_true, y_pred)):
            top = np.argsort(-row)[:TOP_K]
            label = labels.names[guess] if guess >= 0 else f"(model label {labels.model_labels[int(row.argmax())]})"
            samples.append({
                "doc_id": doc_id, "target": labels.names[int(truth)], "resps": [[label]], "filtered_resps": [label],
                "prediction": label, "correct": bool(guess == truth),
                "top_k": [[labels.model_labels[int(i)], float(row[i])] for i in top],
            })
    return values, samples
