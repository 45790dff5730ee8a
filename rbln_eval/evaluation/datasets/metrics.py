"""Classification metrics, from scikit-learn (the definitions the model cards quote), computed offline.

``y_true`` and ``y_pred`` are dataset label indices (a prediction of a model label the dataset does not have is
``-1``: always wrong); ``scores`` are the model's logits of the dataset's labels, ``[examples, labels]``.
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


def check_metrics(task: str, names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        from rbln_eval.errors import ConfigError

        raise ConfigError(f"task {task}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
