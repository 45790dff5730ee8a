"""Extractive QA models (``RBLNAutoModelForQuestionAnswering``: BERT, DistilBERT): one forward call per batch of
question + context windows, answers decoded on the host (:mod:`rbln_eval.families.extractive_qa.spans`).

The compiled length is ``--max-seq-len`` (default: the model's positions, at most 384, SQuAD's usual length). An
example whose context does not fit takes several rows (overlapping windows); its answer is the best span over
them. They are scored on dataset tasks (``rbln_eval.evaluation.datasets``), not lm_eval's prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from rbln_eval.families.extractive_qa.spans import DEFAULT_MAX_ANSWER_LENGTH, QuestionContextEncoder, best_answer
from rbln_eval.families.text_encoder import TextEncoderFamily, TokenBatchBackend


class QuestionAnsweringBackend(TokenBatchBackend):
    """The batch's token inputs → ``(start_logits, end_logits)``, each ``[batch, length]``."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model_outputs(inputs)
        return outputs.start_logits, outputs.end_logits


class ExtractiveQAFamily(TextEncoderFamily):
    """BERT and DistilBERT extractive QA models."""

    name = "question-answering"
    auto_class = "RBLNAutoModelForQuestionAnswering"
    transformers_mapping = "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"
    task_kind = "question-answering"
    default_max_length = 384  # SQuAD's usual length

    def backend(self, model: Any) -> QuestionAnsweringBackend:
        return QuestionAnsweringBackend(model)

    def load_preprocessor(self, path: Path) -> QuestionContextEncoder:
        return QuestionContextEncoder(*self.tokenizer_settings(path))

    def example_features(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> list[dict[str, Any]]:
        return preprocessor.windows(str(example[columns["question"]]), str(example[columns["context"]]))

    def example_prediction(
        self, example: Mapping[str, Any], columns: Mapping[str, str], features: Sequence[Mapping[str, Any]],
        outputs: Sequence[Any], settings: Mapping[str, Any],
    ) -> dict[str, Any]:
        answer = best_answer(
            str(example[columns["context"]]), features, outputs,
            max_answer_len=int(settings.get("max_answer_length") or DEFAULT_MAX_ANSWER_LENGTH),
            unanswerable=bool(settings.get("unanswerable", False)),
        )
        return {"text": answer.text, "score": answer.score}
