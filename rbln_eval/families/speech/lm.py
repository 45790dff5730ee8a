"""The lm_eval model of speech bundles, ``rbln-audio`` (picked by ``rbln-eval run`` for these bundles).

Requests come in lm_eval's audio format (a task's ``doc_to_audio``, as ``common_voice_en`` and the
``hf-audiolm-qwen`` model use it): ``(context, gen_kwargs, {"audio": [clip]})``. ``generate_until``
transcribes the clip greedily, with stop sequences and ``max_gen_toks``, batched over the compiled rows; a
recognizer takes no instruction, so the context's text is not read. Whisper (:class:`WhisperLM`) also answers
``loglikelihood``: the decoder's log-probability of the continuation given the clip and the context's text (its
``<audio>`` placeholders removed) as the start of the transcript, so multiple-choice audio tasks can be scored.
Every clip is checked (one per request, the feature extractor's sampling rate, the compiled length) before any
device work.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from lm_eval.models.utils import postprocess_generated_text

from rbln_eval.core.lm import BundleLM
from rbln_eval.core.work import Executor, GenerateWork, Media, ScoreWork
from rbln_eval.errors import ConfigError, MultimodalRequestError
from rbln_eval.core.audio import Clip, check_rate, request_clip
from rbln_eval.families.speech.prompts import decoder_prompt

logger = logging.getLogger(__name__)

#: The placeholder of a clip in a task's prompt (lm_eval's audio tasks).
AUDIO_PLACEHOLDER = "<audio>"


def load_feature_extractor(path: Any) -> Any:
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(str(path))


class AudioLM(BundleLM):
    """Transcribe audio requests over a speech bundle's executor; subclasses say how a clip becomes inputs."""

    MODEL_NAME = "rbln-audio"
    MULTIMODAL = True

    def __init__(self, executor: Executor, compiled_now: bool = False, **scoring_args: Any) -> None:
        super().__init__(executor, compiled_now, **scoring_args)
        self.feature_extractor = load_feature_extractor(getattr(executor, "source_dir", None) or self.bundle.path)
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        self.clips = 0
        self.audio_seconds = 0.0

    @property
    def bundle_name(self) -> str:
        return self.bundle.digest[:12] if self.bundle is not None else str(self.tokenizer.name_or_path)

    # ---- hooks ------------------------------------------------------------------------------------------
    def clip_inputs(self, clip: Clip) -> dict[str, Any]:
        """The model inputs of one clip (checked against the compiled shapes)."""
        raise NotImplementedError

    def prompt_tokens(self) -> list[int]:
        """The decoder prompt a transcription starts from (none for a CTC model)."""
        return []

    def transcript(self, tokens: Sequence[int]) -> str:
        return self.tok_decode(tokens)

    # ---- requests -----------------------------------------------------------------------------------
    def media(self, aux: Any) -> Media:
        """A request's clip, checked and prepared as the model's inputs."""
        clip = request_clip(aux)
        check_rate(clip, self.sampling_rate, f"bundle {self.bundle_name}")
        self.clips += 1
        self.audio_seconds += clip.seconds
        return Media(self.clip_inputs(clip), 1, clip.fingerprint())

    @staticmethod
    def audio_args(request: Any) -> tuple[Any, ...]:
        args = tuple(request.args)
        if len(args) < 3 or not isinstance(args[-1], dict) or "audio" not in args[-1]:
            task = getattr(request, "task_name", None) or "?"
            raise MultimodalRequestError(f"task {task} sends text-only requests: rbln-audio scores audio requests (doc_to_audio)")
        return args

    def refuse(self, requests: list, request_type: str) -> None:
        tasks = sorted({str(getattr(request, "task_name", None) or "?") for request in requests})
        raise ConfigError(f"task(s) {', '.join(tasks)} ask for {request_type} requests, which {self.family.name} bundles do not answer")

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        with self._timed("generate_until", len(requests)):
            planned = []
            for request in requests:
                _, gen_kwargs, aux = self.audio_args(request)
                if not isinstance(gen_kwargs, dict):
                    raise MultimodalRequestError(f"generation arguments must be a dict, got {type(gen_kwargs).__name__}")
                until, max_gen = self._greedy_settings(gen_kwargs)
                planned.append(GenerateWork(tuple(self.prompt_tokens()), max_gen, tuple(until), self.media(aux)))
            costs = [self.family.generation_cost(self.shape, len(work.tokens), work.max_new_tokens) for work in planned]
            generated = self._run("generate_until", planned, costs, [1] * len(planned), disable_tqdm)
            outputs = []
            for request, work, tokens in zip(requests, planned, generated):
                text = postprocess_generated_text(self.transcript(tokens), list(work.until), None)
                outputs.append(text)
                self.cache_hook.add_partial("generate_until", tuple(request.args[:2]), text)
            return outputs

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self.refuse(requests, "loglikelihood")
        return []

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        self.refuse(requests, "loglikelihood_rolling")
        return []

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info["rbln"]["audio"] = {
            "clips": self.clips, "seconds": round(self.audio_seconds, 3), "sampling_rate": self.sampling_rate,
        }
        return info


class WhisperLM(AudioLM):
    """Whisper: greedy transcription with the decoder's KV cache; ``loglikelihood`` of transcripts."""

    MODEL_ARGS: tuple[str, ...] = BundleLM.SCORING_ARGS + ("language", "task")

    def __init__(
        self, executor: Executor, compiled_now: bool = False, language: str | None = None, task: str | None = None,
        **scoring_args: Any,
    ) -> None:
        super().__init__(executor, compiled_now, **scoring_args)
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig.from_pretrained(str(getattr(executor, "source_dir", None) or self.bundle.path))
        self.prompt = decoder_prompt(self.generation_config, language or None, task or None)
        self.language, self.task = language, task
        self.frames = int(self.feature_extractor.nb_max_frames)
        self._long_warned = False

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        super().check_args(args)
        if args.get("task") and args["task"] not in ("transcribe", "translate"):
            raise ConfigError(f"must be transcribe or translate, got {args['task']!r}", option="task")

    def prompt_tokens(self) -> list[int]:
        return list(self.prompt)

    def clip_inputs(self, clip: Clip) -> dict[str, Any]:
        limit = self.feature_extractor.n_samples / self.sampling_rate
        if clip.seconds > limit and not self._long_warned:
            logger.warning("audio clips longer than %.1f s (Whisper's window) are cut at %.1f s", limit, limit)
            self._long_warned = True
        features = self.feature_extractor(clip.samples, sampling_rate=clip.rate, return_tensors="pt")
        return {"input_features": features["input_features"]}

    def transcript(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def text_tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        with self._timed("loglikelihood", len(requests)):
            groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
            encoded: list[tuple[list[int], Media]] = []
            for index, request in enumerate(requests):
                context, continuation, aux = self.audio_args(request)
                context = context.replace(AUDIO_PLACEHOLDER, "").lstrip()
                spaces = len(context) - len(context.rstrip())
                if spaces:
                    context, continuation = context[:-spaces], context[-spaces:] + continuation
                prefix = self.text_tokens(context) if context else []
                tokens = self.text_tokens(context + continuation)[len(prefix) :] if context else self.text_tokens(continuation)
                if not tokens:
                    raise MultimodalRequestError("a loglikelihood request has an empty continuation")
                prompt = self.prompt + prefix
                if len(prompt) + len(tokens) - 1 > self.max_length:
                    raise MultimodalRequestError(
                        f"a transcript of {len(prompt) + len(tokens)} decoder tokens does not fit the compiled "
                        f"decoder length {self.max_length}"
                    )
                media = self.media(aux)
                encoded.append((tokens, media))
                groups.setdefault((media.key, tuple(prompt)), []).append(index)
            items, owners = [], []
            for (_, prompt), members in groups.items():  # one encoder call and prompt per clip and context
                continuations = tuple(tuple(encoded[i][0]) for i in members)
                items.append(ScoreWork(prompt, continuations, encoded[members[0]][1]))
                owners.append(members)
            costs = [self.family.job_cost(self.shape, len(w.context), [len(c) for c in w.continuations]) for w in items]
            scored = self._run("loglikelihood", items, costs, [len(o) for o in owners], disable_tqdm)
            results: list[Any] = [None] * len(requests)
            for members, scores in zip(owners, scored):
                for member, score in zip(members, scores):
                    results[member] = tuple(score)
                    self.cache_hook.add_partial("loglikelihood", tuple(requests[member].args[:2]), results[member])
            return results

    def reference_settings(self) -> dict[str, Any]:
        return {name: value for name, value in (("language", self.language), ("task", self.task)) if value}

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info["rbln"]["audio"].update(decoder_prompt=list(self.prompt), language=self.language, task=self.task)
        return info


class CTCLM(AudioLM):
    """A CTC model: one encoder call per batch of clips, greedy CTC decoding (repeats merged, blanks dropped)."""

    def clip_inputs(self, clip: Clip) -> dict[str, Any]:
        values = self.feature_extractor(clip.samples, sampling_rate=clip.rate, return_tensors="pt")["input_values"][0]
        if len(values) > self.max_length:
            raise MultimodalRequestError(
                f"an audio clip of {clip.seconds:.2f} s ({len(values)} samples) does not fit bundle {self.bundle_name}'s "
                f"compiled {self.max_length} samples: compile with --max-seq-len {len(values)} or more"
            )
        return {"input_values": values}

    def transcript(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))  # a CTC tokenizer groups repeats and drops the blank
