"""Parity report: a bundle against its model's HF reference (lm_eval's ``hf`` model) on the same samples.

Both models run the same tasks with the same limit, few-shot setting and seeds, logging every sample. The
report gives, per task, each metric for both and the delta; per request, the max and mean |Δ log-prob|
(loglikelihood and rolling requests), the multiple-choice argmax agreement and the generation agreement.

A tolerance gates it for CI: a task fails when a request's |Δ log-prob| or a metric's |Δ| exceeds
``tolerance × max(1, |reference value|)`` (absolute for values up to 1, relative above: a rolling
log-likelihood of -2500 is held to the same precision as one of -2.5), or when a generation differs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rbln_eval.errors import RblnEvalError
from rbln_eval.evaluation.evaluate import EvalOptions, evaluate, sample_selection
from rbln_eval.evaluation.tasks import task_manager_for
from rbln_eval.families.registry import family_of
from rbln_eval.store import Bundle
from rbln_eval.errors import ReferenceModelError

logger = logging.getLogger(__name__)

LOGPROB_TYPES = ("loglikelihood", "multiple_choice", "loglikelihood_rolling")
_NOT_METRICS = ("alias", "name", "sample_len", "samples")


@dataclass
class MetricDelta:
    metric: str
    rbln: float
    reference: float
    delta: float


@dataclass
class TaskComparison:
    task: str
    output_type: str
    samples: int
    metrics: list[MetricDelta] = field(default_factory=list)
    logprobs: int = 0
    max_abs_logprob_delta: float | None = None
    mean_abs_logprob_delta: float | None = None
    argmax_agreement: float | None = None
    generation_agreement: float | None = None
    #: Dataset tasks: |Δ| of the model's outputs (logits) rather than of log-probabilities.
    max_abs_output_delta: float | None = None
    mean_abs_output_delta: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ComparisonReport:
    bundle: str
    target: str
    reference: dict[str, Any]
    tasks: list[TaskComparison]
    limit: float | None
    num_fewshot: int | None
    tolerance: float | None

    @property
    def failing(self) -> list[TaskComparison]:
        return [task for task in self.tasks if not task.passed]

    @property
    def passed(self) -> bool:
        return not self.failing

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        for entry, task in zip(data["tasks"], self.tasks):
            entry["passed"] = task.passed
        return data

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return out


# --------------------------------------------------------------------------------------------------
# The reference model
# --------------------------------------------------------------------------------------------------


def reference_source(bundle: Bundle) -> tuple[str, str | None]:
    """``(pretrained, revision)`` of the model ``bundle`` was compiled from."""
    source = bundle.key.source
    if source.get("kind") == "hub":
        return str(source["id"]), source.get("revision")
    path = bundle.manifest.info.get("model_path")
    if not path or not Path(path).is_dir():
        raise ReferenceModelError(
            f"bundle {bundle.digest[:12]} was compiled from a local model directory "
            f"({path or 'not recorded'}) that is not there any more: restore it to compare against it"
        )
    return str(path), None


def reference_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def reference_lm(
    bundle: Bundle, max_length: int | None = None, batch_size: int = 8, device: str | None = None,
    settings: dict[str, Any] | None = None,
) -> Any:
    """The float32 reference of the model behind ``bundle`` (lm_eval's ``hf`` model, or the family's own), scored
    with the bundle lm's ``settings`` (:meth:`~rbln_eval.core.lm.BundleLM.reference_settings`)."""
    pretrained, revision = reference_source(bundle)
    return family_of(bundle.key.model_class).reference_lm(
        pretrained, revision, device or reference_device(), max_length, batch_size, **(settings or {})
    )


# --------------------------------------------------------------------------------------------------
# Comparing logged results
# --------------------------------------------------------------------------------------------------


def scaled(delta: float, reference: float) -> float:
    """|delta| against the tolerance: absolute for values up to 1, relative above."""
    return abs(delta) / max(1.0, abs(reference))


def _responses(sample: dict[str, Any]) -> list[Any]:
    """The raw model answer of each request of a logged sample."""
    return [resp[0] if isinstance(resp, (list, tuple)) and resp else resp for resp in sample["resps"]]


def _logprob(value: Any) -> float:
    return float(value[0] if isinstance(value, (list, tuple)) else value)


def compare_task(task: str, output_type: str, ours: dict[str, Any], ref: dict[str, Any],
                 ours_samples: list[dict], ref_samples: list[dict], tolerance: float | None) -> TaskComparison:
    """Compare one task's metrics and logged samples (matched by ``doc_id``)."""
    result = TaskComparison(task=task, output_type=output_type, samples=len(ref_samples))
    for key, value in ref.items():
        if key in _NOT_METRICS or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        mine = ours.get(key)
        if not isinstance(mine, (int, float)):
            continue
        metric = MetricDelta(key, float(mine), float(value), float(mine) - float(value))
        result.metrics.append(metric)
        if tolerance is not None and not scaled(metric.delta, metric.reference) <= tolerance:
            result.failures.append(f"{key} differs by {metric.delta:+.3g}")
    by_doc = {sample["doc_id"]: sample for sample in ours_samples}
    if set(by_doc) != {sample["doc_id"] for sample in ref_samples}:
        result.failures.append("the two runs logged different documents")
        return result
    deltas: list[float] = []
    worst = 0.0
    agree = generations = same_text = 0
    for ref_sample in ref_samples:
        theirs = _responses(ref_sample)
        mine = _responses(by_doc[ref_sample["doc_id"]])
        if len(mine) != len(theirs):
            result.failures.append(f"doc {ref_sample['doc_id']} has {len(mine)} requests vs {len(theirs)}")
            continue
        if output_type in LOGPROB_TYPES:
            a, b = [_logprob(x) for x in mine], [_logprob(x) for x in theirs]
            for x, y in zip(a, b):
                deltas.append(abs(x - y))
                worst = max(worst, scaled(x - y, y) if math.isfinite(x - y) else math.inf)
            if output_type == "multiple_choice" and b:
                agree += int(max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__))
        elif output_type == "generate_until":
            for x, y in zip(mine, theirs):
                generations += 1
                same_text += int(x == y)
    if deltas:
        result.logprobs = len(deltas)
        result.max_abs_logprob_delta = max(deltas)
        result.mean_abs_logprob_delta = sum(deltas) / len(deltas)
        if tolerance is not None and not worst <= tolerance:
            result.failures.insert(0, f"max |Δ log-prob| {result.max_abs_logprob_delta:.3g}")
    if output_type == "multiple_choice" and ref_samples:
        result.argmax_agreement = agree / len(ref_samples)
    if generations:
        result.generation_agreement = same_text / generations
        if tolerance is not None and same_text < generations:
            result.failures.append(f"{generations - same_text} of {generations} generations differ")
    return result


def compare_results(ours: dict[str, Any], ref: dict[str, Any], tolerance: float | None) -> list[TaskComparison]:
    """Per-task comparisons of two ``simple_evaluate`` results logged with ``log_samples=True``."""
    tasks = []
    for task in sorted(ref["results"]):
        if task not in ref.get("samples", {}):
            continue  # a group: its tasks are compared one by one
        output_type = ref["configs"][task].get("output_type", "")
        tasks.append(compare_task(
            task, output_type, ours["results"].get(task, {}), ref["results"][task],
            ours["samples"].get(task, []), ref["samples"][task], tolerance,
        ))
    return tasks


def run_compare(lm: Any, options: EvalOptions, tolerance: float | None = None, reference: Any = None) -> ComparisonReport:
    """Evaluate ``lm`` (an :class:`~rbln_eval.core.lm.BundleLM`) and the HF reference of its bundle; compare them."""
    from lm_eval import simple_evaluate

    options.log_samples = True
    manager = task_manager_for(options.tasks, options.include_path)
    ours = evaluate(lm, options, task_manager=manager)
    if ours is None:
        raise RblnEvalError("the evaluation returned no results")
    bundle: Bundle = lm.bundle
    ref_lm = reference if reference is not None else reference_lm(bundle, max_length=lm.max_length, settings=lm.reference_settings())
    ref = simple_evaluate(model=ref_lm, **sample_selection(options, manager), log_samples=True)
    if ref is None:
        raise RblnEvalError("the reference evaluation returned no results")
    pretrained, revision = reference_source(bundle)
    return ComparisonReport(
        bundle=bundle.digest,
        target=bundle.key.target,
        reference={
            "model": family_of(bundle.key.model_class).reference_model, "pretrained": pretrained, "revision": revision, "dtype": "float32",
            "device": str(getattr(ref_lm, "device", None) or reference_device()),
            "settings": lm.reference_settings(),
        },
        tasks=compare_results(ours, ref, tolerance),
        limit=options.limit,
        num_fewshot=options.num_fewshot,
        tolerance=tolerance,
    )
