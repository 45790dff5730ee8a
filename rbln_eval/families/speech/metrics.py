"""The word error rate as an lm_eval metric tasks can name (``metric: wer``), computed by jiwer.

Per sample the metric passes ``(reference, transcription)`` through; the aggregation is the corpus WER (all
word edits over all reference words, jiwer's definition and its default normalisation: whitespace collapsed
and stripped), lower is better. Registered when the speech family is imported, so with every rbln-eval model.
"""

from __future__ import annotations

from typing import Any, Sequence

import lm_eval.api.metrics  # noqa: F401  # lm_eval's own metrics first: it loads them only into an empty registry
from lm_eval.api.registry import aggregation_registry, metric_registry, register_aggregation, register_metric

METRIC = "wer"


def corpus_wer(items: Sequence[Sequence[Any]]) -> float:
    """The word error rate of ``[(reference, transcription), ...]`` over the whole corpus."""
    import jiwer

    references = [str(reference) for reference, _ in items]
    transcriptions = [str(transcription) for _, transcription in items]
    return float(jiwer.wer(references, transcriptions))


def wer_passthrough(items: Any) -> Any:
    return items


def register_wer() -> None:
    """Register ``wer`` (metric and aggregation) with lm_eval, once."""
    if METRIC not in aggregation_registry:
        register_aggregation(METRIC)(corpus_wer)
    if METRIC not in metric_registry:
        register_metric(metric=METRIC, higher_is_better=False, output_type="generate_until", aggregation=METRIC)(wer_passthrough)


register_wer()
