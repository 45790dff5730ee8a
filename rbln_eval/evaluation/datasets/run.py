"""Evaluate a classifier bundle on dataset tasks; results in lm_eval's results schema.

Everything is checked before any device work: the task's kind against the bundle's family, its metrics, its
dataset (loaded, ``--limit`` applied) and its labels against the model's. Examples are then prepared (decoded,
resized, normalized, tokenized) by host threads one chunk ahead of the device: while the replicas run a chunk,
the next one is being prepared, so the device waits on the host only when preparing a chunk costs more than
running it. Chunks are whole batches per replica; the last batch is padded, the padding never counted.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.core.work import Media
from rbln_eval.errors import ConfigError
from rbln_eval.evaluation.datasets.labels import BY_INDEX, match_labels, model_labels
from rbln_eval.evaluation.datasets.metrics import METRICS, check_metrics
from rbln_eval.evaluation.datasets.spec import DatasetTask

#: Batches per replica prepared at a time: one chunk runs while the next is prepared.
CHUNK_BATCHES = 4
#: The columns that may name files (read from the task's folder when relative).
MEDIA_ROLES = ("image", "audio")
#: The top predictions recorded per sample with ``--log_samples``.
TOP_K = 5


@dataclass
class PreparedTask:
    """A task ready to run: its examples, their labels as dataset indices, the model id of each dataset label."""

    task: DatasetTask
    dataset: Any
    label_names: list[str]
    y_true: np.ndarray
    model_ids: list[int]
    original: int
    model_labels: list[str]


def load_examples(task: DatasetTask) -> Any:
    import datasets

    try:
        dataset = datasets.load_dataset(**task.load_kwargs())
        audio = task.columns.get("audio")
        if audio in dataset.column_names and isinstance(dataset.features[audio], datasets.Audio):
            # datasets decodes audio with torchcodec, which may not load beside this torch: the family reads the
            # undecoded file ({"path", "bytes"}) with soundfile instead
            dataset = dataset.cast_column(audio, datasets.Audio(decode=False))
        return dataset
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load the dataset of task {task.name} ({task.dataset_path}): {first}",
            "fetch it first with `rbln-eval prefetch` on a machine online, or check the task's dataset_path",
        ) from None


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


def limited(count: int, limit: float | None) -> int:
    if limit is None:
        return count
    return min(count, math.ceil(count * limit) if limit < 1 else int(limit))


def prepare_task(task: DatasetTask, classifier: BundleClassifier, id2label: dict, limit: float | None) -> PreparedTask:
    """Load ``task``'s dataset and check it against the bundle, before any device work."""
    family = classifier.family
    bundle = classifier.bundle.digest[:12]
    if task.kind != family.task_kind:
        raise ConfigError(f"task {task.name} is a {task.kind} task; bundle {bundle} is a {family.name} bundle")
    check_metrics(task.name, task.metrics)
    dataset = load_examples(task)
    missing = [column for column in task.columns.values() if column not in dataset.column_names]
    if missing:
        raise ConfigError(f"task {task.name}: the dataset has no column {', '.join(map(repr, missing))} ({', '.join(dataset.column_names)})")
    labels = model_labels(id2label)
    names, y_true = dataset_labels(task, dataset, labels)
    model_ids = match_labels(task.name, names, labels, task.label_map, bundle)
    count = limited(len(dataset), limit)
    return PreparedTask(task, dataset.select(range(count)), names, y_true[:count], model_ids, len(dataset), labels)


def chunks(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


def run_task(classifier: BundleClassifier, prepared: PreparedTask, preprocessor: Any, log_samples: bool) -> tuple[dict[str, float], list[dict]]:
    """Score one prepared task: its metrics, and its samples when ``log_samples``."""
    task, dataset = prepared.task, prepared.dataset
    family = classifier.family

    files = {task.columns[role] for role in MEDIA_ROLES if role in task.columns}

    def example_media(index: int) -> Media:
        example = {name: task.resolve(value) if name in files and isinstance(value, str) else value
                   for name, value in dataset[index].items()}
        return Media(family.example_inputs(preprocessor, example, task.columns), 1, "")

    size = classifier.batch_size * classifier.data_parallel * CHUNK_BATCHES
    logits: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        parts = list(chunks(len(dataset), size))
        ahead: Iterator[Media] | None = pool.map(example_media, parts[0]) if parts else None
        for number in range(len(parts)):
            media = list(ahead) if ahead is not None else []
            ahead = pool.map(example_media, parts[number + 1]) if number + 1 < len(parts) else None
            logits += [np.asarray(out.float().numpy() if hasattr(out, "numpy") else out) for out in classifier.forward(media)]
    metrics, samples = score(prepared, np.stack(logits) if logits else np.zeros((0, 0)), log_samples)
    if samples:
        add_hashes(prepared, samples)
    return metrics, samples


def add_hashes(prepared: PreparedTask, samples: list[dict]) -> None:
    """lm_eval's per-sample hashes (its results file hashes each task's samples): the example's fields other than
    its media, its (empty) prompt and its target."""
    import json

    from lm_eval.utils import hash_string

    media = {prepared.task.columns[role] for role in MEDIA_ROLES if role in prepared.task.columns}
    fields = prepared.dataset.select_columns([c for c in prepared.dataset.column_names if c not in media])
    for sample, row in zip(samples, fields):
        sample["doc"] = row
        sample["doc_hash"] = hash_string(json.dumps(row, sort_keys=True, default=str))
        sample["prompt_hash"] = hash_string("")
        sample["target_hash"] = hash_string(str(sample["target"]))


def score(prepared: PreparedTask, logits: np.ndarray, log_samples: bool) -> tuple[dict[str, float], list[dict]]:
    """Metrics (and samples) of a task's logits ``[examples, model labels]``."""
    ids = np.asarray(prepared.model_ids)
    to_dataset = {model_id: index for index, model_id in enumerate(prepared.model_ids)}
    predicted = logits.argmax(axis=1) if len(logits) else np.zeros(0, dtype=np.int64)
    y_pred = np.asarray([to_dataset.get(int(p), -1) for p in predicted], dtype=np.int64)
    scores = logits[:, ids] if len(logits) else np.zeros((0, len(ids)))
    metrics = {name: METRICS[name](prepared.y_true, y_pred, scores) for name in prepared.task.metrics}
    samples = []
    if log_samples:
        for doc_id, (row, truth, guess) in enumerate(zip(logits, prepared.y_true, y_pred)):
            top = np.argsort(-row)[:TOP_K]
            label = prepared.label_names[guess] if guess >= 0 else f"(model label {prepared.model_labels[int(row.argmax())]})"
            samples.append({
                "doc_id": doc_id, "target": prepared.label_names[int(truth)], "resps": [[label]], "filtered_resps": [label],
                "prediction": label, "correct": bool(guess == truth),
                "top_k": [[prepared.model_labels[int(i)], float(row[i])] for i in top],
            })
    return metrics, samples


def evaluate_dataset_tasks(
    classifier: BundleClassifier, tasks: Sequence[DatasetTask], limit: float | None = None, log_samples: bool = False,
    on_task: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Results of ``classifier``'s bundle on ``tasks`` in lm_eval's schema (``samples`` with ``log_samples``)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(classifier.bundle.path))
    prepared = [prepare_task(task, classifier, config.id2label, limit) for task in tasks]  # every check first
    preprocessor = classifier.family.load_preprocessor(classifier.bundle.path)
    results: dict[str, Any] = {
        "results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {},
        "n-samples": {}, "samples": {},
    }
    for ready in prepared:
        name = ready.task.name
        if on_task is not None:
            on_task(name)
        metrics, samples = run_task(classifier, ready, preprocessor, log_samples)
        results["results"][name] = {"alias": name, **{f"{m},none": v for m, v in metrics.items()},
                                    **{f"{m}_stderr,none": "N/A" for m in metrics}}
        results["group_subtasks"][name] = []
        results["configs"][name] = {"task": name, "output_type": ready.task.kind, **ready.task.config}
        results["versions"][name] = ready.task.version
        results["n-shot"][name] = 0
        results["higher_is_better"][name] = {m: True for m in metrics}
        results["n-samples"][name] = {"original": ready.original, "effective": len(ready.dataset)}
        if log_samples:
            results["samples"][name] = samples
    if not log_samples:
        results.pop("samples")
    results["config"] = {"model": "rbln", "batch_size": classifier.batch_size, "limit": limit, "rbln": classifier.info()}
    return results


def save_results(results: dict[str, Any], output_path: str | None, model_name: str, model_args: Any) -> None:
    """Write the results (and samples) as ``lm-eval run --output_path`` does: ``OUTPUT/<model>/results_<time>.json``."""
    if not output_path:
        return
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import sanitize_model_name

    tracker = EvaluationTracker(output_path=output_path)
    general = tracker.general_config_tracker
    general.model_source, general.model_name, general.model_name_sanitized = "rbln", model_name, sanitize_model_name(model_name)
    results["config"]["model_args"] = model_args
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples)
    for name, task_samples in (samples or {}).items():
        tracker.save_results_samples(task_name=name, samples=task_samples)
    if samples is not None:
        results["samples"] = samples
