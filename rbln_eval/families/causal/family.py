"""Decoder-only LMs (``RBLNAutoModelForCausalLM``): chunked prefill of one row, then batched decode steps."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from lm_eval.models.utils import has_bos_prefix

from rbln_eval.core.lm import BundleLM
from rbln_eval.core.programs import Program
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.errors import ConfigError
from rbln_eval.families.base import CompileOptions, Family, Fitted
from rbln_eval.families.causal.backend import CausalBackend
from rbln_eval.families.causal.programs import causal_greedy_program, causal_loglikelihood_program


#: Where optimum-rbln keeps the hidden state of the last prefill position only, for models with local attention.
LOCAL_ATTENTION_LOGITS = "optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:DecoderOnlyForCausalLM.forward"


def sliding_window(config: Any) -> int | None:
    """The window of the language model's sliding-window layers as optimum-rbln compiles them (``None``: none).

    Their KV cache keeps the last ``window`` positions in turn, not by position: once a row has passed the
    window, a decode step cannot go back to an earlier position.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    all_global = set(getattr(text, "layer_types", None) or ()) == {"full_attention"}
    if window is None or not getattr(text, "use_sliding_window", True) or all_global:
        return None
    return int(window)


def refuse_local_attention_logits(model_type: str) -> None:
    """A full-logit bundle of a model with sliding-window layers compiles, then fails on its first prefill."""
    import optimum.rbln

    raise ConfigError(
        f"--logits all with {model_type}: optimum-rbln {optimum.rbln.__version__} returns one logit row per "
        f"prefill chunk of a model with sliding-window layers ({LOCAL_ATTENTION_LOGITS})",
        "compile it with --logits last",
    )


def causal_compile_options(max_seq_len: int | None, logits: str) -> dict[str, Any]:
    """optimum-rbln's spelling of ``--max-seq-len`` and ``--logits`` for a decoder-only LM."""
    options: dict[str, Any] = {"logits_to_keep": 0 if logits == "all" else 1}
    if max_seq_len is not None:
        options["max_seq_len"] = max_seq_len
    return options


class CausalFamily(Family):
    """Decoder-only LMs: chunked prefill of one row, then batched decode steps."""

    name = "causal"
    auto_class = "RBLNAutoModelForCausalLM"
    transformers_mapping = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    is_encoder_decoder = False
    hf_backend = "causal"
    reference_truncates = True
    length_keys = ("max_seq_len",)
    lm_class = BundleLM

    def backend(self, model: Any) -> CausalBackend:
        return CausalBackend(model)

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        config = super().rbln_config(options, model_config)
        if config.get("logits_to_keep") == 0 and sliding_window(model_config) is not None:
            refuse_local_attention_logits(str(getattr(model_config, "model_type", "this model")))
        return config

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        return causal_compile_options(max_seq_len, logits)

    def fit(self, shape: ReplicaShape, context: list[int], continuation: list[int]) -> Fitted:
        whole = context + continuation
        truncated = None
        if len(whole) > shape.max_length + 1:
            truncated = "a request"
            whole = whole[-(shape.max_length + 1) :]
        if len(continuation) >= len(whole):
            continuation = whole[1:]
        return Fitted(whole[: len(whole) - len(continuation)], continuation, truncated)

    def generation_tokens(self, tokenizer: Any, context: str, add_bos_token: bool | None) -> list[int]:
        special: dict[str, bool] = {}
        if has_bos_prefix(context, getattr(tokenizer, "bos_token", None)):
            special = {"add_special_tokens": False}
        elif add_bos_token is not None:
            special = {"add_special_tokens": add_bos_token}
        return list(tokenizer(context, verbose=False, **special)["input_ids"])  # truncation is ours

    def generation_limit(self, shape: ReplicaShape, max_gen: int) -> int:
        return shape.max_length - max_gen

    def loglikelihood_program(self, backend: Any, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
        return causal_loglikelihood_program(backend, context, continuations)

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> Program:
        return causal_greedy_program(backend, tokens, max_new_tokens, stop, eos_token_ids)

    def job_cost(self, shape: ReplicaShape, context: int, continuations: Sequence[int]) -> int:
        if not shape.full_logits:
            return super().job_cost(shape, context, continuations)
        multi = [length for length in continuations if length > 1]
        if len(multi) <= 1:  # everything is read off one prefill
            return shape.prefill_cost(context + max(continuations) - 1)
        # the context's whole chunks once, then each multi-token continuation after the context's tail; a job of
        # contexts sharing a prefix comes as that prefix (whole chunks) and each context's rest + continuation
        start = context // shape.prefill_chunk * shape.prefill_chunk if shape.prefill_chunk else 0
        shared = shape.prefill_cost(start) if start else 0
        return shared + sum(shape.prefill_cost(context - start + length - 1) for length in multi)
