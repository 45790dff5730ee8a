"""``compare`` for dataset tasks: a classifier or QA bundle against the float32 transformers model it was compiled
from, on the same examples prepared the same way.

Both run every task through the same loop (:func:`~rbln_eval.evaluation.datasets.run.run_task`): the bundle over
its replicas, the reference over :class:`ReferenceForward`. The report (the one ``compare`` writes for lm_eval
tasks) gives each metric for both and its delta, the largest and mean |Δ| of the outputs (logits; a QA window's
start and end logits) and the share of examples predicted alike (the argmax label; the answer text). A tolerance
fails a task when an output's or a metric's |Δ| exceeds ``tolerance × max(1, |reference value|)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.core.work import Media
from rbln_eval.evaluation.compare import (
    ComparisonReport,
    MetricDelta,
    TaskComparison,
    reference_source,
    scaled,
)
from rbln_eval.evaluation.datasets.run import prepare_tasks, run_task
from rbln_eval.evaluation.datasets.spec import DatasetTask
from rbln_eval.families.base import Family
from rbln_eval.store import Bundle


class ReferenceForward:
    """A transformers model answering :meth:`BundleClassifier.forward` on the host, ``batch_size`` rows a call."""

    data_parallel = 1

    def __init__(self, family: Family, model: Any, batch_size: int) -> None:
        self.family = family
        self.model = model
        self.batch_size = batch_size
        self.accepted = set(inspect.signature(model.forward).parameters)

    def forward(self, examples: Sequence[Media]) -> list[Any]:
        answers: list[Any] = []
        for start in range(0, len(examples), self.batch_size):
            rows = [example.inputs for example in examples[start : start + self.batch_size]]
            batch = {name: torch.stack([row[name] for row in rows]) for name in rows[0] if name in self.accepted}
            with torch.no_grad():
                out = self.model(**batch)
            outputs = (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else out.logits
            if isinstance(outputs, tuple):
                answers += [tuple(o[i] for o in outputs) for i in range(len(rows))]
            else:
                answers += [outputs[i] for i in range(len(rows))]
        return answers


def reference_forward(bundle: Bundle, family: Family, batch_size: int = 8) -> ReferenceForward:
    """The float32 transformers model ``bundle`` was compiled from (its family's head), on the host."""
    import transformers
    from transformers.models.auto import modeling_auto

    pretrained, revision = reference_source(bundle)
    config = transformers.AutoConfig.from_pretrained(pretrained, revision=revision)
    model_class = getattr(transformers, getattr(modeling_auto, family.transformers_mapping)[config.model_type])
    model = model_class.from_pretrained(pretrained, revision=revision, dtype=torch.float32).eval()
    return ReferenceForward(family, model, batch_size)


def compare_outputs(ours: list[list[Any]], theirs: list[list[Any]]) -> tuple[float, float, float]:
    """The largest and mean |Δ| over every output value, and the largest |Δ| scaled by the reference value."""
    largest = worst = total = 0.0
    count = 0
    for mine_rows, their_rows in zip(ours, theirs):
        for mine, their in zip(mine_rows, their_rows):
            for a, b in zip(mine if isinstance(mine, tuple) else (mine,), their if isinstance(their, tuple) else (their,)):
                delta = (a.float() - b.float()).abs()
                largest = max(largest, float(delta.max()))
                worst = max(worst, float((delta / b.float().abs().clamp(min=1.0)).max()))
                total += float(delta.sum())
                count += delta.numel()
    return largest, total / max(count, 1), worst


def compare_task(
    task: DatasetTask, ours: tuple[dict, list[dict]], theirs: tuple[dict, list[dict]],
    outputs: tuple[list[list[Any]], list[list[Any]]], tolerance: float | None,
) -> TaskComparison:
    (our_metrics, our_samples), (their_metrics, their_samples) = ours, theirs
    result = TaskComparison(task=task.name, output_type=task.kind, samples=len(their_samples))
    for name, value in their_metrics.items():
        metric = MetricDelta(name, float(our_metrics[name]), float(value), float(our_metrics[name]) - float(value))
        result.metrics.append(metric)
        if tolerance is not None and not scaled(metric.delta, metric.reference) <= tolerance:
            result.failures.append(f"{name} differs by {metric.delta:+.3g}")
    largest, mean, worst = compare_outputs(*outputs)
    result.max_abs_output_delta, result.mean_abs_output_delta = largest, mean
    if tolerance is not None and not worst <= tolerance:
        result.failures.insert(0, f"max |Δ output| {largest:.3g}")
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(our_samples, their_samples))
    result.argmax_agreement = same / len(their_samples) if their_samples else None
    return result


def compare_dataset_tasks(
    classifier: BundleClassifier, tasks: Sequence[DatasetTask], limit: float | None, tolerance: float | None,
    reference: ReferenceForward | None = None,
) -> ComparisonReport:
    """Score ``classifier``'s bundle and its float32 reference on ``tasks``; compare them."""
    prepared, preprocessor = prepare_tasks(classifier, tasks, limit)  # every check before any device work
    ref = reference or reference_forward(classifier.bundle, classifier.family)
    comparisons = []
    for ready in prepared:
        our_outputs: list[list[Any]] = []
        their_outputs: list[list[Any]] = []
        ours = run_task(classifier, ready, preprocessor, True, our_outputs)
        theirs = run_task(ref, ready, preprocessor, True, their_outputs)  # type: ignore[arg-type]
        comparisons.append(compare_task(ready.task, ours, theirs, (our_outputs, their_outputs), tolerance))
    pretrained, revision = reference_source(classifier.bundle)
    return ComparisonReport(
        bundle=classifier.bundle.digest, target=classifier.bundle.key.target,
        reference={"model": "transformers", "pretrained": pretrained, "revision": revision, "dtype": "float32",
                   "device": "cpu", "settings": {}},
        tasks=comparisons, limit=limit, num_fewshot=None, tolerance=tolerance,
    )
