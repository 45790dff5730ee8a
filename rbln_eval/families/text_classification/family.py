"""Text classifiers (``RBLNAutoModelForSequenceClassification``: RoBERTa, XLM-RoBERTa): one forward call per batch
of sentences or sentence pairs.

An example is a ``text`` (and, for pair tasks such as MNLI, a ``text_pair``) tokenized by the bundle's tokenizer,
truncated to the tokens the compiled length holds and padded to it: the ``input_ids`` and ``attention_mask`` the
graph takes. The compiled length is ``--max-seq-len`` (default: the tokens the model's positions hold, at most
512). They are scored on dataset tasks (``rbln_eval.evaluation.datasets``), not lm_eval's prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from rbln_eval.core.batched import BatchedForwardBackend
from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.errors import ConfigError
from rbln_eval.families.base import CompileOptions, Family

#: The compiled length when none is given, at most.
DEFAULT_MAX_LENGTH = 512
#: Model types whose position ids start after the padding index (RoBERTa's scheme): they hold fewer tokens.
POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta"})
#: What optimum-rbln's sequence classifiers take when the compiled config does not say.
DEFAULT_INPUT_NAMES = ("input_ids", "attention_mask")


def usable_length(model_config: Any, compiled: int) -> int:
    """The tokens (special ones included) a sequence may hold: the compiled length, within the positions."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return compiled
    if getattr(model_config, "model_type", None) in POSITION_OFFSET_TYPES:
        positions -= int(model_config.pad_token_id or 0) + 1
    return min(compiled, int(positions))


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


def compiled_settings(path: Path) -> tuple[int, tuple[str, ...]]:
    """The compiled length and input names a bundle's ``rbln_config.json`` records."""
    try:
        config = json.loads((path / "rbln_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the compiled config of bundle {path.name}: {exc}") from None
    length = config.get("max_seq_len")
    if not isinstance(length, int):
        raise ConfigError(f"bundle {path.name} is compiled for sequence lengths {length!r}; one length is supported")
    return length, tuple(config.get("model_input_names") or DEFAULT_INPUT_NAMES)


class TextClassifierBackend(BatchedForwardBackend):
    """The batch's token inputs → logits ``[batch, labels]``."""

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        super().__init__(model, int(config.batch_size), int(config.max_seq_len))
        self.input_names = tuple(config.model_input_names or DEFAULT_INPUT_NAMES)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{name: inputs[name] for name in self.input_names}).logits


class TextClassificationFamily(Family):
    """RoBERTa and XLM-RoBERTa sequence classifiers."""

    name = "text-classification"
    auto_class = "RBLNAutoModelForSequenceClassification"
    transformers_mapping = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"
    task_kind = "text-classification"
    request_types = ()
    lm_class = BundleClassifier
    scores_text = False
    has_tokenizer = True

    def matches(self, model_config: Any) -> bool:
        """A checkpoint of the sequence-classification head itself (a masked LM of the same type is not one)."""
        from transformers.models.auto import modeling_auto

        if not super().matches(model_config):
            return False
        mapping = getattr(modeling_auto, self.transformers_mapping)
        return mapping[model_config.model_type] in (getattr(model_config, "architectures", None) or [])

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        positions = getattr(model_config, "max_position_embeddings", None)
        if options.max_seq_len is not None and positions is not None and options.max_seq_len > positions:
            raise ConfigError(f"must be at most the model's {positions} positions, got {options.max_seq_len}", option="max_seq_len")
        config = options.shared_config()
        if options.max_seq_len is not None:
            config["max_seq_len"] = options.max_seq_len
        elif positions is not None:
            config["max_seq_len"] = usable_length(model_config, min(int(positions), DEFAULT_MAX_LENGTH))
        return config

    def backend(self, model: Any) -> TextClassifierBackend:
        return TextClassifierBackend(model)

    def load_preprocessor(self, path: Path) -> TextEncoder:
        from transformers import AutoConfig, AutoTokenizer

        length, names = compiled_settings(path)
        tokens = usable_length(AutoConfig.from_pretrained(str(path)), length)
        return TextEncoder(AutoTokenizer.from_pretrained(str(path)), length, tokens, names)

    def example_inputs(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
        pair = example[columns["text_pair"]] if "text_pair" in columns else None
        return preprocessor(str(example[columns["text"]]), None if pair is None else str(pair))
