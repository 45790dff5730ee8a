"""The reference of ``rbln-eval compare`` for speech bundles: the float32 transformers model on the host, run
by the same programs as a replica (so only the model differs): Whisper's decoder recomputed from the whole
prefix at every step (no KV cache), a CTC model's forward over the same padded clip."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from rbln_eval.core.counters import DeviceCounters
from rbln_eval.core.programs import run_programs
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.work import MediaPrompt, ScoreWork, Work
from rbln_eval.errors import ConfigError
from rbln_eval.families.speech.backend import DEFAULT_CTC_SAMPLES, CTCBackend
from rbln_eval.families.speech.lm import CTCLM, WhisperLM

#: Rows of the reference (its batch only changes how requests are interleaved, not their results).
REFERENCE_BATCH = 4


class TorchWhisperBackend:
    """:class:`~rbln_eval.families.speech.backend.WhisperBackend`'s interface over a transformers Whisper."""

    full_logits = False

    def __init__(self, model: Any, batch_size: int) -> None:
        generation = model.generation_config
        self.model = model
        self.batch_size = batch_size
        self.max_length = int(model.config.max_target_positions)
        self.suppress_tokens = tuple(int(t) for t in (getattr(generation, "suppress_tokens", None) or ()))
        self.begin_suppress_tokens = tuple(int(t) for t in (getattr(generation, "begin_suppress_tokens", None) or ()))
        self.language_ids = tuple(int(t) for t in (getattr(generation, "lang_to_id", None) or {}).values())
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(batch_size, self.max_length)
        self.encoded: list[Any] = [None] * batch_size
        self.history: list[list[int]] = [[] for _ in range(batch_size)]

    def open(self, row: int, prompt: MediaPrompt) -> None:
        with torch.no_grad():
            self.encoded[row] = self.model.get_encoder()(prompt.media.inputs["input_features"].to(self.model.device))
        self.history[row] = []
        self.counters.add("torch", 1, 1)
        return None

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        rows = []
        for row, busy in enumerate(active):
            if not busy:
                rows.append(None)
                continue
            self.history[row] = self.history[row][: positions[row]] + [int(tokens[row])]
            ids = torch.tensor([self.history[row]], dtype=torch.long, device=self.model.device)
            with torch.no_grad():
                logits = self.model(encoder_outputs=self.encoded[row], decoder_input_ids=ids).logits
            rows.append(logits[0, -1].float().cpu())
        self.counters.add("torch", 1, sum(active))
        vocab = next(r for r in rows if r is not None).shape[-1]
        return torch.stack([r if r is not None else torch.zeros(vocab) for r in rows])


class TorchCTCBackend(CTCBackend):
    """:class:`CTCBackend` over a transformers CTC model on the host: clips padded to the same length."""

    graph = "torch"

    def __init__(self, model: Any, batch_size: int, max_length: int) -> None:
        self.model = model
        self.model_config = model.config
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = torch.float32
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(batch_size, max_length, full_logits=True)
        self.rows = [None] * batch_size

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_values=input_values.to(self.model.device)).logits.float().cpu()


class SpeechHostExecutor:
    """An :class:`~rbln_eval.core.work.Executor` over a transformers speech model in this process."""

    bundle = None
    groups = None
    load_seconds = 0.0

    def __init__(self, family: Any, backend: Any, tokenizer: Any, source_dir: str) -> None:
        self.family = family
        self.backend = backend
        self.tokenizer = tokenizer
        self.source_dir = source_dir  # where the feature extractor and generation config are read
        self.shape = backend.shape
        self.eos_ids = frozenset(i for i in (tokenizer.eos_token_id,) if i is not None)

    def run(self, items: Sequence[Work], costs: Sequence[int], sizes: Sequence[int], on_done: Callable[[int], None]) -> list[Any]:
        results: list[Any] = [None] * len(items)

        def collect(index: int, value: Any) -> None:
            results[index] = value
            on_done(sizes[index])

        def programs() -> Any:
            for work in items:
                if isinstance(work, ScoreWork):
                    program = self.family.loglikelihood_program(self.backend, work.context, work.continuations)
                else:
                    program = self.family.greedy_program(
                        self.backend, work.tokens, work.max_new_tokens, self.stopper(work.until), self.eos_ids,
                    )
                yield self.family.with_inputs(program, work)

        run_programs(self.backend, programs(), on_result=collect, pad_token=min(self.eos_ids, default=0))
        return results

    def stopper(self, until: Sequence[str]) -> Callable[[list[int]], bool]:
        def stop(tokens: list[int]) -> bool:
            text = self.tokenizer.decode(tokens[-64:], skip_special_tokens=False)
            return any(term in text for term in until)

        return stop

    def counters(self) -> dict[str, dict[str, int]]:
        return self.backend.counters.as_dict()

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class WhisperReferenceLM(WhisperLM):
    MODEL_NAME = "hf-speech"

    def get_model_info(self) -> dict[str, Any]:
        return {"reference": {"pretrained": self.executor.source_dir, "dtype": "float32", "decoder_prompt": self.prompt}}


class CTCReferenceLM(CTCLM):
    MODEL_NAME = "hf-ctc"

    def get_model_info(self) -> dict[str, Any]:
        return {"reference": {"pretrained": self.executor.source_dir, "dtype": "float32", "max_length": self.max_length}}


def speech_reference_lm(
    family: Any, pretrained: str, revision: str | None, device: str, max_length: int | None, **settings: Any,
) -> Any:
    """The float32 transformers model of ``pretrained`` scored like the bundle (CTC clips padded to ``max_length``;
    Whisper with the bundle's ``language`` and ``task`` settings)."""
    from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    whisper = family.lm_class is WhisperLM
    auto = AutoModelForSpeechSeq2Seq if whisper else AutoModelForCTC
    try:
        tokenizer = AutoTokenizer.from_pretrained(pretrained, **kwargs)
        model = auto.from_pretrained(pretrained, dtype=torch.float32, **kwargs).to(device).eval()
    except OSError as exc:
        raise ConfigError(f"cannot load the reference model {pretrained}: {exc}") from None
    source = model.name_or_path or pretrained
    if whisper:
        executor = SpeechHostExecutor(family, TorchWhisperBackend(model, REFERENCE_BATCH), tokenizer, source)
        return WhisperReferenceLM(executor, **settings)
    backend = TorchCTCBackend(model, REFERENCE_BATCH, max_length or DEFAULT_CTC_SAMPLES)
    return CTCReferenceLM(SpeechHostExecutor(family, backend, tokenizer, source))
