"""What differs between model families (causal LMs, encoder-decoder LMs, vision-language models), in one
object per family.

A :class:`Family` knows which configs it compiles and through which optimum-rbln auto class, how its compile
options are spelled, what a bundle carries besides the model, how a request is fitted into the compiled
lengths, how a greedy generation is budgeted, how its programs talk to the device, what a job costs in
device work, which lm_eval model scores it and what its reference is. Everything else in rbln-eval asks the
family instead of branching on the model class, so a new family is one more object here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lm_eval.models.utils import has_bos_prefix

from .backends import CausalBackend, Seq2SeqBackend
from .engine import Program, causal_greedy_program, causal_loglikelihood_program
from .engine import seq2seq_greedy_program, seq2seq_loglikelihood_program
from .shapes import ReplicaShape

if TYPE_CHECKING:
    from .compiler import CompileOptions


@dataclass(frozen=True)
class Fitted:
    """A request after fitting: the tokens the device sees, and whether anything was cut off."""

    context: list[int]
    continuation: list[int]
    truncated: str | None = None  # what was truncated ("a request", "a context", …), None if nothing


class Family:
    """The policy of one model family; see the module docstring."""

    name: str
    auto_class: str
    #: transformers' auto-model mapping whose architectures optimum-rbln compiles for this family.
    transformers_mapping: str
    is_encoder_decoder: bool
    #: lm_eval's ``hf`` model ``backend`` for the same model (the reference of ``compare``).
    hf_backend: str
    #: The lm_eval model that is the reference.
    reference_model = "hf"
    #: Whether the reference is given the compiled length to truncate to, as the bundle does.
    reference_truncates: bool
    #: The lm_eval model that scores bundles of this family (``module:Class``).
    lm_class = "rbln_eval.lm:RBLNLM"
    #: Whether a pushed bundle loads as it is with ``from_pretrained(repo, revision=…, export=False)``.
    hub_loadable = True

    # ---- compiling --------------------------------------------------------------------------------
    def supported_types(self) -> list[str]:
        """Model types optimum-rbln compiles for this family (needs the ``rebel`` SDK or the simulator)."""
        import optimum.rbln as rbln
        from transformers.models.auto import modeling_auto

        mapping = getattr(modeling_auto, self.transformers_mapping)
        return sorted(t for t, name in mapping.items() if isinstance(name, str) and hasattr(rbln, f"RBLN{name}"))

    def matches(self, model_config: Any) -> bool:
        """Whether ``model_config`` is a model of this family that optimum-rbln compiles."""
        return (
            getattr(model_config, "model_type", None) in self.supported_types()
            and bool(getattr(model_config, "is_encoder_decoder", False)) == self.is_encoder_decoder
        )

    def rbln_config(self, options: "CompileOptions", model_config: Any) -> dict[str, Any]:
        """The compile-time rbln_config of ``options`` for this model, default lengths filled in."""
        config = options.rbln_config(self.name)
        for name, length in self.default_lengths(model_config).items():
            config.setdefault(name, length)
        return config

    def compiler_config(self, rbln_config: dict[str, Any]) -> dict[str, Any]:
        """What of a key's compile config is passed to optimum-rbln (all of it, unless key-only)."""
        return dict(rbln_config)

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        """Files the bundle needs besides optimum-rbln's and the tokenizer."""

    def load_lm_class(self) -> type:
        module, _, name = self.lm_class.partition(":")
        return getattr(importlib.import_module(module), name)

    def reference_lm(self, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int) -> Any:
        """lm_eval's own model for the same weights in float32: the reference of ``rbln-eval compare``."""
        from lm_eval.models.huggingface import HFLM

        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        if max_length and self.reference_truncates:
            kwargs["max_length"] = max_length  # truncate like the bundle does
        return HFLM(pretrained=pretrained, backend=self.hf_backend, dtype="float32", device=device, batch_size=batch_size, **kwargs)

    def backend(self, model: Any) -> Any:
        """The device backend over a loaded optimum-rbln model of this family."""
        raise NotImplementedError

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        """The family's rbln_config spelling of ``--max-seq-len`` and ``--logits``."""
        raise NotImplementedError

    def default_lengths(self, model_config: Any) -> dict[str, int]:
        """Compiled lengths to use when none is given: the model's own context length."""
        length = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
        return {name: int(length) for name in self.length_keys} if length else {}

    length_keys: tuple[str, ...] = ()

    def fit(self, shape: ReplicaShape, context: list[int], continuation: list[int]) -> Fitted:
        """Left-truncate a loglikelihood request to the compiled lengths, as lm_eval's ``hf`` model does."""
        raise NotImplementedError

    def generation_tokens(self, tokenizer: Any, context: str, add_bos_token: bool | None) -> list[int]:
        """The tokens of a generation context, as lm_eval's ``hf`` model encodes them."""
        raise NotImplementedError

    def generation_limit(self, shape: ReplicaShape, max_gen: int) -> int:
        """How many context tokens a generation request may keep."""
        raise NotImplementedError

    def generation_steps(self, context_tokens: int, max_gen: int) -> int:
        """The number of new tokens to generate at most for ``max_gen_toks`` ``max_gen``."""
        return max_gen

    def loglikelihood_program(self, backend: Any, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
        raise NotImplementedError

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> Program:
        raise NotImplementedError

    def job_cost(self, shape: ReplicaShape, context: int, continuations: Sequence[int]) -> int:
        """Device work of one loglikelihood job, in decode tokens: its prefill, then teacher-forced steps."""
        return shape.prefill_cost(context) + sum(continuations) - len(continuations)

    def generation_cost(self, shape: ReplicaShape, context: int, max_gen: int) -> int:
        """Device work of one generation at most: its prefill, then ``max_gen`` decode steps."""
        return shape.prefill_cost(context) + max_gen


class CausalFamily(Family):
    """Decoder-only LMs: chunked prefill of one row, then batched decode steps."""

    name = "causal"
    auto_class = "RBLNAutoModelForCausalLM"
    transformers_mapping = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    is_encoder_decoder = False
    hf_backend = "causal"
    reference_truncates = True
    length_keys = ("max_seq_len",)

    def backend(self, model: Any) -> CausalBackend:
        return CausalBackend(model)

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        options: dict[str, Any] = {"logits_to_keep": 0 if logits == "all" else 1}
        if max_seq_len is not None:
            options["max_seq_len"] = max_seq_len
        return options

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

    def greedy_program(self, backend, tokens, max_new_tokens, stop, eos_token_ids) -> Program:
        return causal_greedy_program(backend, tokens, max_new_tokens, backend.max_length, stop, eos_token_ids)

    def job_cost(self, shape: ReplicaShape, context: int, continuations: Sequence[int]) -> int:
        if shape.full_logits:  # everything is read off one prefill
            return shape.prefill_cost(context + max(continuations) - 1)
        return super().job_cost(shape, context, continuations)


class Seq2SeqFamily(Family):
    """Encoder-decoder LMs: one encoder call per row, then batched decoder steps from the start token."""

    name = "seq2seq"
    auto_class = "RBLNAutoModelForSeq2SeqLM"
    transformers_mapping = "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"
    is_encoder_decoder = True
    hf_backend = "seq2seq"
    reference_truncates = False
    length_keys = ("enc_max_seq_len", "dec_max_seq_len")

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

    def greedy_program(self, backend, tokens, max_new_tokens, stop, eos_token_ids) -> Program:
        return seq2seq_greedy_program(backend, tokens, max_new_tokens, backend.max_length, stop, eos_token_ids)


class VisionLanguageFamily(CausalFamily):
    """Image-text-to-text models: a vision tower and projector feeding a causal language model's prefill.

    Requests are those of a causal LM, plus images: the backend turns them into input embeddings before the
    prefill (:mod:`rbln_eval.multimodal_backend`); scoring is ``rbln-vlm`` (:mod:`rbln_eval.multimodal`).
    """

    name = "image-text-to-text"
    auto_class = "RBLNAutoModelForImageTextToText"
    transformers_mapping = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
    reference_model = "hf-multimodal"
    lm_class = "rbln_eval.multimodal:RBLNVLM"
    hub_loadable = False  # its torch artifacts travel as safetensors: the loader rebuilds what optimum-rbln reads

    def backend(self, model: Any) -> Any:
        from .multimodal_backend import vision_language_backend

        return vision_language_backend(model)

    def matches(self, model_config: Any) -> bool:
        from .multimodal_compile import is_vision_language

        return is_vision_language(model_config)

    def rbln_config(self, options: "CompileOptions", model_config: Any) -> dict[str, Any]:
        from .multimodal_compile import complete_config, text_submodule, vlm_rbln_config

        return complete_config(vlm_rbln_config(options, text_submodule(model_config)), model_config)

    def compiler_config(self, rbln_config: dict[str, Any]) -> dict[str, Any]:
        from .multimodal_compile import KEY_ONLY_FIELDS

        return {k: v for k, v in rbln_config.items() if k not in KEY_ONLY_FIELDS}

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        from .multimodal_compile import save_processor

        save_processor(model_id, directory, load_kwargs, log)

    def reference_lm(self, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int) -> Any:
        from .multimodal_reference import multimodal_reference_lm

        return multimodal_reference_lm(pretrained, revision, device, max_length)


FAMILIES: dict[str, Family] = {
    family.name: family for family in (CausalFamily(), Seq2SeqFamily(), VisionLanguageFamily())
}
#: The order in which :func:`rbln_eval.compiler.detect_model_class` asks the families.
DETECTION_ORDER = ("image-text-to-text", "causal", "seq2seq")


def family_of(model_class: str) -> Family:
    """The family of a bundle key's ``model_class``."""
    try:
        return FAMILIES[model_class]
    except KeyError:
        raise ValueError(f"unknown model class {model_class!r}; known: {', '.join(FAMILIES)}") from None
