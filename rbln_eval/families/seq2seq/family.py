"""Encoder-decoder LMs (``RBLNAutoModelForSeq2SeqLM``): one encoder call per row, then batched decoder steps."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rbln_eval.core.lm import BundleLM
from rbln_eval.core.programs import Program
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.families.base import Family, Fitted
from rbln_eval.families.seq2seq.backend import Seq2SeqBackend
from rbln_eval.families.seq2seq.programs import seq2seq_greedy_program, seq2seq_loglikelihood_program


class Seq2SeqFamily(Family):
    """Encoder-decoder LMs: one encoder call per row, then batched decoder steps from the start token."""

    name = "seq2seq"
    auto_class = "RBLNAutoModelForSeq2SeqLM"
    transformers_mapping = "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"
    is_encoder_decoder = True
    hf_backend = "seq2seq"
    reference_truncates = False
    length_keys = ("enc_max_seq_len", "dec_max_seq_len")
    lm_class = BundleLM

    def backend(self, model: Any) -> Seq2SeqBackend:
        return Seq2SeqBackend(model)

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        if max_seq_len is None:
            return {}
        return {"enc_max_seq_len": max_seq_len, "dec_max_seq_len": max_seq_len}

    def fit(self, shape: ReplicaShape, context: list[int], continuation: list[int]) -> Fitted:
        truncated = None
        encoder_length = int(shape.enc_max_length or shape.max_length)
        if len(context) > encoder_length:
            truncated = "a context"
            context = context[-encoder_length:]
        if len(continuation) > shape.max_length:
            truncated = "a continuation"
            continuation = continuation[-shape.max_length :]
        return Fitted(context, continuation, truncated)

    def generation_tokens(self, tokenizer: Any, context: str, add_bos_token: bool | None) -> list[int]:
        return list(tokenizer(context, verbose=False)["input_ids"])

    def generation_limit(self, shape: ReplicaShape, max_gen: int) -> int:
        return int(shape.enc_max_length or shape.max_length)

    def generation_steps(self, context_tokens: int, max_gen: int) -> int:
        # lm_eval's hf model passes max_length = context length + max_gen_toks to an encoder-decoder's
        # generate(), which counts decoder tokens: follow it (per request) so both score the same text.
        return context_tokens + max_gen - 1

    def loglikelihood_program(self, backend: Any, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
        return seq2seq_loglikelihood_program(backend, context, continuations)

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> Program:
        return seq2seq_greedy_program(backend, tokens, max_new_tokens, stop, eos_token_ids)
