"""Text classifiers (``RBLNAutoModelForSequenceClassification``: RoBERTa, XLM-RoBERTa): one forward call per batch
of sentences or sentence pairs.

An example is a ``text`` (and, for pair tasks such as MNLI, a ``text_pair``) tokenized by the bundle's tokenizer,
truncated to the tokens the compiled length holds and padded to it: the ``input_ids`` and ``attention_mask`` the
graph takes. The compiled length is ``--max-seq-len`` (default: the tokens the model's positions hold, at most
512). They are scored on dataset tasks (``rbln_eval.evaluation.datasets``), not lm_eval's prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from rbln_eval.families.text_encoder import TextEncoderFamily, TokenBatchBackend


@dataclass(frozen=True)
class TextEncoder:
    """A bundle's tokenizer and the compiled shape: a sentence (pair) → the graph's inputs for one row."""

    tokenizer: Any
    compiled_length: int
    max_tokens: int
    input_names: tuple[str, ...]

    def __call__(self, text: str, text_pair: str | None = None) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            text, text_pair, truncation=True, max_length=self.max_tokens, padding="max_length", return_tensors="pt",
        )
        inputs = {}
        for name in self.input_names:
            values = encoded[name][0] if name in encoded else torch.zeros(self.max_tokens, dtype=torch.long)
            fill = int(self.tokenizer.pad_token_id or 0) if name == "input_ids" else 0
            padding = torch.full((self.compiled_length - len(values),), fill, dtype=torch.long)
            inputs[name] = torch.cat([values.to(torch.long), padding])  # past the positions: padding only
        return inputs


class TextClassifierBackend(TokenBatchBackend):
    """The batch's token inputs → logits ``[batch, labels]``."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model_outputs(inputs).logits


class TextClassificationFamily(TextEncoderFamily):
    """RoBERTa and XLM-RoBERTa sequence classifiers."""

    name = "text-classification"
    auto_class = "RBLNAutoModelForSequenceClassification"
    transformers_mapping = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"
    task_kind = "text-classification"

    def backend(self, model: Any) -> TextClassifierBackend:
        return TextClassifierBackend(model)

    def load_preprocessor(self, path: Path) -> TextEncoder:
        return TextEncoder(*self.tokenizer_settings(path))

    def example_inputs(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
        pair = example[columns["text_pair"]] if "text_pair" in columns else None
        return preprocessor(str(example[columns["text"]]), None if pair is None else str(pair))
