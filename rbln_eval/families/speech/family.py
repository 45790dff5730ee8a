"""Speech recognition families: Whisper (``RBLNAutoModelForSpeechSeq2Seq``) and CTC models
(``RBLNAutoModelForCTC``: Wav2Vec2). Their bundles carry the feature extractor (the processor) besides the
tokenizer; their requests are lm_eval's audio requests, scored by ``rbln-audio``
(:mod:`rbln_eval.families.speech.lm`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from rbln_eval.core.programs import Program, with_media
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.work import Work
from rbln_eval.errors import ConfigError
from rbln_eval.families.base import CompileOptions, Family
from rbln_eval.families.speech.backend import DEFAULT_CTC_SAMPLES, CTCBackend, WhisperBackend
from rbln_eval.families.speech.lm import CTCLM, WhisperLM
from rbln_eval.families.speech.metrics import register_wer
from rbln_eval.families.speech.programs import ctc_program, whisper_greedy_program, whisper_loglikelihood_program

#: The processor's own files, copied when the processor cannot be built here.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def save_processor(model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
    """Make sure the bundle carries the feature extractor (and the processor around it)."""
    if (directory / "preprocessor_config.json").exists():
        return
    from transformers import AutoFeatureExtractor, AutoProcessor

    try:
        AutoProcessor.from_pretrained(model_id, **load_kwargs).save_pretrained(directory)
    except (OSError, ValueError, TypeError) as exc:
        log.write(f"rbln-eval: no processor ({type(exc).__name__}: {exc}); saving the feature extractor alone\n")
        AutoFeatureExtractor.from_pretrained(model_id, **load_kwargs).save_pretrained(directory)


class SpeechFamily(Family):
    """What both speech families share: audio media, the processor in the bundle, the ``wer`` metric."""

    request_types = ("generate_until",)
    scores_text = False

    def __init__(self) -> None:
        register_wer()

    def with_inputs(self, program: Program, work: Work) -> Program:
        if work.media is None:
            raise ValueError("a speech request needs its audio")
        return with_media(program, work.media)

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        save_processor(model_id, directory, load_kwargs, log)

    def reference_lm(
        self, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int, **settings: Any,
    ) -> Any:
        from rbln_eval.families.speech.reference import speech_reference_lm

        return speech_reference_lm(self, pretrained, revision, device, max_length, **settings)


class SpeechSeq2SeqFamily(SpeechFamily):
    """Whisper: the encoder once per clip and row, then batched decoder steps with the KV cache."""

    name = "speech-seq2seq"
    auto_class = "RBLNAutoModelForSpeechSeq2Seq"
    transformers_mapping = "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"
    is_encoder_decoder = True
    reference_model = "hf-speech"
    lm_class = WhisperLM
    key_only_fields = ("audio",)
    request_types = ("loglikelihood", "generate_until")

    def supported_types(self) -> list[str]:
        """Whisper only: its programs feed Whisper's decoder prompt and suppression (other speech-to-text
        models optimum-rbln compiles under the same auto class are not Whisper-shaped)."""
        return [t for t in super().supported_types() if t == "whisper"]

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        if options.max_seq_len is not None:
            raise ConfigError(
                "does not apply to Whisper: its lengths are the model's "
                f"({int(model_config.max_source_positions) * 2} encoder frames, {model_config.max_target_positions} "
                "decoder tokens)", option="max_seq_len",
            )
        config = options.shared_config()
        config["audio"] = {  # what shapes the graphs: the mel bins and frames of a window, the decoder length
            "num_mel_bins": int(model_config.num_mel_bins),
            "frames": int(model_config.max_source_positions) * 2,
            "max_target_positions": int(model_config.max_target_positions),
        }
        return config

    def backend(self, model: Any) -> WhisperBackend:
        return WhisperBackend(model)

    def loglikelihood_program(self, backend: Any, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> Program:
        return whisper_loglikelihood_program(backend, context, continuations)

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> Program:
        return whisper_greedy_program(backend, tokens, max_new_tokens, stop, eos_token_ids)

    def job_cost(self, shape: ReplicaShape, context: int, continuations: Sequence[int]) -> int:
        """The encoder call, the prompt's decoder steps, then every continuation's."""
        return 1 + context + sum(continuations) - len(continuations)

    def generation_cost(self, shape: ReplicaShape, context: int, max_gen: int) -> int:
        return 1 + context + max_gen


class CTCFamily(SpeechFamily):
    """CTC models: one encoder call over the batch of clips, greedy CTC decoding on the host."""

    name = "ctc"
    auto_class = "RBLNAutoModelForCTC"
    transformers_mapping = "MODEL_FOR_CTC_MAPPING_NAMES"
    reference_model = "hf-ctc"
    lm_class = CTCLM
    length_keys = ("max_seq_len",)

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        return {} if max_seq_len is None else {"max_seq_len": max_seq_len}  # samples

    def default_lengths(self, model_config: Any) -> dict[str, int]:
        return {"max_seq_len": DEFAULT_CTC_SAMPLES}

    def backend(self, model: Any) -> CTCBackend:
        return CTCBackend(model)

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> Program:
        return ctc_program(backend)

    def job_cost(self, shape: ReplicaShape, context: int, continuations: Sequence[int]) -> int:
        return 1

    def generation_cost(self, shape: ReplicaShape, context: int, max_gen: int) -> int:
        return 1  # one row of one encoder call
