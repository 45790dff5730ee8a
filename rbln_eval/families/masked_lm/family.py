"""Masked LMs (``RBLNAutoModelForMaskedLM``: BERT, RoBERTa, ModernBERT): one encoder graph at the compiled batch
size, requests scored by pseudo-log-likelihood (:mod:`rbln_eval.families.masked_lm.pll`) through
:class:`~rbln_eval.families.masked_lm.lm.MaskedLM`. They do not generate."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rbln_eval.core.programs import Program
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.errors import ConfigError
from rbln_eval.families.base import Family, Fitted
from rbln_eval.families.masked_lm.backend import MaskedLMBackend
from rbln_eval.families.masked_lm.lm import MaskedLM
from rbln_eval.families.masked_lm.programs import masked_copy_program

#: The compiled length when none is given, at most: every masked copy fills a whole row of it.
DEFAULT_MAX_LENGTH = 512


class MaskedLMFamily(Family):
    """Encoder-only masked LMs: a batch of masked copies per encoder call."""

    name = "masked-lm"
    auto_class = "RBLNAutoModelForMaskedLM"
    transformers_mapping = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"
    is_encoder_decoder = False
    hf_backend = "masked-lm"
    reference_model = "hf-pll"
    reference_truncates = True
    length_keys = ("max_seq_len",)
    lm_class = MaskedLM
    request_types = ("loglikelihood", "loglikelihood_rolling")

    def supported_types(self) -> list[str]:
        """Encoder-only types (the masked-LM mapping also lists encoder-decoders, which the seq2seq family compiles)."""
        from transformers.models.auto import modeling_auto

        mapping = getattr(modeling_auto, self.transformers_mapping)
        return [t for t in super().supported_types() if not mapping[t].endswith("ForConditionalGeneration")]

    def matches(self, model_config: Any) -> bool:
        """A checkpoint of the masked-LM head itself: optimum-rbln's auto class reads ``architectures``, and a
        classifier's checkpoint has no masked-LM head to score with."""
        return super().matches(model_config) and self.has_own_head(model_config)

    def backend(self, model: Any) -> MaskedLMBackend:
        return MaskedLMBackend(model)

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        return {} if max_seq_len is None else {"max_seq_len": max_seq_len}

    def default_lengths(self, model_config: Any) -> dict[str, int]:
        return {name: min(length, DEFAULT_MAX_LENGTH) for name, length in super().default_lengths(model_config).items()}

    def fit(self, shape: ReplicaShape, context: list[int], continuation: list[int]) -> Fitted:
        """Keep the last tokens that fit between ``[CLS]`` and ``[SEP]``: the context first, then the continuation."""
        room = shape.max_length - 2
        if len(context) + len(continuation) <= room:
            return Fitted(context, continuation)
        if len(continuation) >= room:
            return Fitted([], continuation[-room:], "a continuation")
        return Fitted(context[len(context) + len(continuation) - room :], continuation, "a context")

    def loglikelihood_program(self, backend: Any, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
        """``context``: one masked copy; ``continuations``: ``(position, target)`` pairs read off it."""
        return masked_copy_program(backend, context, continuations)

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> Program:
        raise ConfigError("a masked LM does not generate text (generate_until)")

    def generation_tokens(self, tokenizer: Any, context: str, add_bos_token: bool | None) -> list[int]:
        raise ConfigError("a masked LM does not generate text (generate_until)")

    def generation_limit(self, shape: ReplicaShape, max_gen: int) -> int:
        return 0

    def job_cost(self, shape: ReplicaShape, context: int, continuations: Sequence[int]) -> int:
        """One row of one encoder call: the device work of one masked copy."""
        return 1

    def generation_cost(self, shape: ReplicaShape, context: int, max_gen: int) -> int:
        return 0

    def reference_lm(
        self, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int, **settings: Any,
    ) -> Any:
        from rbln_eval.families.masked_lm.reference import masked_reference_lm

        return masked_reference_lm(self, pretrained, revision, device, max_length, batch_size, settings.get("pll"))
