"""Evaluate a classifier or extractive QA bundle on dataset tasks; results in lm_eval's results schema.

Everything is checked before any device work: the task's kind against the bundle's family, its metrics, its
dataset (loaded, ``--limit`` applied) and its labels against the model's (a QA task: its gold answers). Examples
are then prepared (decoded, resized, normalized, tokenized; a long QA context split into windows, one row each)
by host threads one chunk ahead of the device: while the replicas run a chunk, the next one is being prepared,
so the device waits on the host only when preparing a chunk costs more than running it. Chunks are whole batches
per replica; the last batch is padded, the padding never counted. The family turns an example's rows' outputs
into its prediction (logits; an answer span), which :mod:`.classify` or :mod:`.answers` score.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.core.work import Media
from rbln_eval.errors import ConfigError, RblnEvalError
from rbln_eval.evaluation.datasets.answers import dataset_answers, score_answers
from rbln_eval.evaluation.datasets.classify import ClassLabels, class_labels, score_classes
from rbln_eval.evaluation.datasets.metrics import check_metrics
from rbln_eval.evaluation.datasets.spec import DatasetTask

#: Batches per replica prepared at a time: one chunk runs while the next is prepared (the first chunk is one
#: batch per replica, so that the device starts after one batch is ready).
CHUNK_BATCHES = 4


@dataclass
class PreparedTask:
    """A task ready to run: its examples (``--limit`` applied) and what they are scored against: the labels of a
    classification task, or the gold answers of a QA task."""

    task: DatasetTask
    dataset: Any
    original: int
    labels: ClassLabels | None = None
    answers: list[list[str]] | None = None


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


def limited(count: int, limit: float | None) -> int:
    if limit is None:
        return count
    return min(count, math.ceil(count * limit) if limit < 1 else int(limit))


def checked_examples(task: DatasetTask) -> Any:
    """``task``'s dataset, its metrics and input columns checked: what needs no bundle (``run`` checks it before
    compiling or loading one)."""
    check_metrics(task.name, task.kind, task.metrics)
    dataset = load_examples(task)
    missing = [column for column in task.columns.values() if column not in dataset.column_names]
    if missing:
        raise ConfigError(f"task {task.name}: the dataset has no column {', '.join(map(repr, missing))} ({', '.join(dataset.column_names)})")
    return dataset


def prepare_task(task: DatasetTask, classifier: BundleClassifier, id2label: Any, limit: float | None) -> PreparedTask:
    """Load ``task``'s dataset and check it against the bundle, before any device work."""
    family = classifier.family
    bundle = classifier.bundle.digest[:12]
    if task.kind != family.task_kind:
        raise ConfigError(f"task {task.name} is a {task.kind} task; bundle {bundle} is a {family.name} bundle")
    dataset = checked_examples(task)
    count = limited(len(dataset), limit)
    examples = dataset.select(range(count))
    if task.kind == "question-answering":
        return PreparedTask(task, examples, len(dataset), answers=dataset_answers(task, examples))
    labels = class_labels(task, dataset, id2label, bundle)  # every label name, the unselected examples' too
    return PreparedTask(task, examples, len(dataset), labels=labels.limited(count))


def chunks(count: int, size: int, first: int | None = None) -> Iterator[range]:
    """Consecutive ranges of ``size`` examples over ``count``; the first of ``first`` (so the device starts sooner)."""
    start = 0
    while start < count:
        end = min(count, start + (first if first and start == 0 else size))
        yield range(start, end)
        start = end


def run_task(
    classifier: BundleClassifier, prepared: PreparedTask, preprocessor: Any, log_samples: bool,
    outputs_seen: list[list[Any]] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Score one prepared task: its metrics, and its samples when ``log_samples``; each example's rows' outputs are
    appended to ``outputs_seen`` when given (``compare`` holds them against the reference's)."""
    task, dataset = prepared.task, prepared.dataset
    family = classifier.family

    def example_rows(index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        fields = task.example(dataset[index])
        return fields, family.example_features(preprocessor, fields, task.columns)

    unit = classifier.batch_size * classifier.data_parallel  # a batch for every replica
    predictions: list[Any] = []
    waiting: deque[tuple[dict[str, Any], list[dict[str, Any]]]] = deque()  # examples whose rows are not all run
    unsent: list[dict[str, Any]] = []  # their rows not yet sent: whole batches go, the rest waits for the next chunk
    received: list[Any] = []  # the outputs of the rows sent, in order, not yet taken by their example
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        parts = list(chunks(len(dataset), unit * CHUNK_BATCHES, first=unit))
        ahead: Iterator[tuple[dict[str, Any], list[dict[str, Any]]]] | None = pool.map(example_rows, parts[0]) if parts else None
        for number in range(len(parts)):
            ready = list(ahead) if ahead is not None else []
            ahead = pool.map(example_rows, parts[number + 1]) if number + 1 < len(parts) else None
            waiting.extend(ready)
            unsent.extend(row for _, features in ready for row in features)
            count = len(unsent) if ahead is None else len(unsent) // unit * unit
            received += [host_outputs(out) for out in classifier.forward([Media(row, 1, "") for row in unsent[:count]])]
            del unsent[:count]
            while waiting and len(received) >= len(waiting[0][1]):
                fields, features = waiting.popleft()
                mine, received[: len(features)] = received[: len(features)], []
                if outputs_seen is not None:
                    outputs_seen.append(mine)
                predictions.append(family.example_prediction(fields, task.columns, features, mine, task.config))
    if prepared.answers is not None:
        metrics, samples = score_answers(prepared.answers, task.metrics, predictions, log_samples)
    else:
        assert prepared.labels is not None
        logits = np.stack([np.asarray(p) for p in predictions]) if predictions else np.zeros((0, 0))
        metrics, samples = score_classes(prepared.labels, task.metrics, logits, log_samples)
    if samples:
        add_hashes(prepared, samples)
    return metrics, samples


def host_outputs(output: Any) -> Any:
    """A row's outputs as float32 host tensors (a tensor, or a tuple of them)."""
    if isinstance(output, tuple):
        return tuple(host_outputs(o) for o in output)
    return output.float() if hasattr(output, "float") else torch.as_tensor(output).float()


def add_hashes(prepared: PreparedTask, samples: list[dict]) -> None:
    """lm_eval's per-sample hashes (its results file hashes each task's samples): the example's fields other than
    its media, its (empty) prompt and its target."""
    import json

    from lm_eval.utils import hash_string

    media = prepared.task.media_columns
    fields = prepared.dataset.select_columns([c for c in prepared.dataset.column_names if c not in media])
    for sample, row in zip(samples, fields):
        sample["doc"] = row
        sample["doc_hash"] = hash_string(json.dumps(row, sort_keys=True, default=str))
        sample["prompt_hash"] = hash_string("")
        sample["target_hash"] = hash_string(str(sample["target"]))


def prepare_tasks(classifier: BundleClassifier, tasks: Sequence[DatasetTask], limit: float | None) -> tuple[list[PreparedTask], Any]:
    """Every task checked and loaded (before any device work), and the bundle's preprocessor."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(classifier.bundle.path))
    prepared = [prepare_task(task, classifier, config.id2label, limit) for task in tasks]
    preprocessor = classifier.family.load_preprocessor(classifier.bundle.path)
    if classifier.family.checks_examples:
        for ready in prepared:
            check_examples(classifier.family, ready, preprocessor)
    return prepared, preprocessor


def check_examples(family: Any, prepared: PreparedTask, preprocessor: Any) -> None:
    """Every example of a task checked by its family (an audio clip's sampling rate), before any device work."""
    task = prepared.task
    for index, row in enumerate(prepared.dataset.select_columns(sorted(set(task.columns.values())))):
        try:
            family.check_example(preprocessor, task.example(row), task.columns)
        except RblnEvalError as exc:
            raise type(exc)(f"task {task.name}, example {index}: {exc.what}", exc.hint) from None


def evaluate_dataset_tasks(
    classifier: BundleClassifier, tasks: Sequence[DatasetTask], limit: float | None = None, log_samples: bool = False,
    on_task: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Results of ``classifier``'s bundle on ``tasks`` in lm_eval's schema (``samples`` with ``log_samples``)."""
    prepared, preprocessor = prepare_tasks(classifier, tasks, limit)
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
