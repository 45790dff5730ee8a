"""What the families scored on dataset tasks that read text share (text classification, extractive QA): a
checkpoint of their own head, the compiled length, the bundle's tokenizer, and one forward call per batch of
token rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rbln_eval.core.batched import BatchedForwardBackend
from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.core.text_inputs import DEFAULT_INPUT_NAMES, compiled_settings, encoder_rbln_config, usable_length
from rbln_eval.families.base import CompileOptions, Family


class TokenBatchBackend(BatchedForwardBackend):
    """The compiled batch of token rows (``input_ids``, ``attention_mask``…) through the model, once."""

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        super().__init__(model, int(config.batch_size), int(config.max_seq_len))
        self.input_names = tuple(config.model_input_names or DEFAULT_INPUT_NAMES)

    def model_outputs(self, inputs: dict[str, torch.Tensor]) -> Any:
        """The model's outputs for the inputs its graph takes."""
        return self.model(**{name: inputs[name] for name in self.input_names})


class TextEncoderFamily(Family):
    """A text encoder with a task head, scored on dataset tasks."""

    request_types = ()
    lm_class = BundleClassifier
    scores_text = False
    has_tokenizer = True
    #: The compiled length when none is given, at most (within the model's positions).
    default_max_length = 512

    def matches(self, model_config: Any) -> bool:
        """A checkpoint of the family's head itself (a masked LM of the same type is not one)."""
        return super().matches(model_config) and self.has_own_head(model_config)

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        return encoder_rbln_config(options.shared_config(), options.max_seq_len, model_config, self.default_max_length)

    def tokenizer_settings(self, path: Path) -> tuple[Any, int, int, tuple[str, ...]]:
        """A bundle's tokenizer, compiled length, the tokens a row may hold and the graph's input names."""
        from transformers import AutoConfig, AutoTokenizer

        length, names = compiled_settings(path)
        tokens = usable_length(AutoConfig.from_pretrained(str(path)), length)
        return AutoTokenizer.from_pretrained(str(path)), length, tokens, names
