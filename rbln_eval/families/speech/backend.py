"""The device side of speech bundles for :mod:`rbln_eval.core.programs`.

Whisper (:class:`WhisperBackend`): ``open`` runs the encoder for one batch row (its cross-attention KV lands in
the row's cache block; a row that already holds the same clip skips it), ``step`` runs one decoder step over
every row with its own position: the decoder's self-attention KV cache is kept, never re-prefilled per token.
CTC (:class:`CTCBackend`): ``open`` only places a clip's samples in a row; ``step`` runs the encoder once over
all the rows waiting and hands each row its frames' logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rbln_eval.core.counters import DeviceCounters
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.work import MediaPrompt

#: The longest clip a CTC bundle takes when ``--max-seq-len`` (in samples) is not given: 30 s at 16 kHz.
DEFAULT_CTC_SAMPLES = 30 * 16000


class WhisperBackend:
    """Encoder per row + batched decoder steps over an ``RBLNWhisperForConditionalGeneration``."""

    full_logits = False

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        generation = model.generation_config
        self.model = model
        self.batch_size = int(config.batch_size)
        self.max_length = int(config.dec_max_seq_len)
        self.dtype = getattr(config, "dtype", torch.float32) or torch.float32
        self.use_attention_mask = bool(config.use_attention_mask)
        self.frames = int(model.config.max_source_positions) * 2
        self.suppress_tokens = tuple(int(t) for t in (getattr(generation, "suppress_tokens", None) or ()))
        self.begin_suppress_tokens = tuple(int(t) for t in (getattr(generation, "begin_suppress_tokens", None) or ()))
        self.language_ids = tuple(int(t) for t in (getattr(generation, "lang_to_id", None) or {}).values())
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(self.batch_size, self.max_length)
        self.encoded: list[str | None] = [None] * self.batch_size  # the clip whose encoding each row holds

    def open(self, row: int, prompt: Sequence[int]) -> None:
        if not isinstance(prompt, MediaPrompt):
            raise ValueError("a Whisper row is opened with an audio clip")
        if self.encoded[row] != prompt.media.key:
            features = prompt.media.inputs["input_features"].to(self.dtype)
            with torch.no_grad():
                self.model.encoder(input_features=features, block_tables=torch.tensor([row], dtype=torch.int16))
            self.counters.add("encoder", 1, self.frames)
            self.encoded[row] = prompt.media.key
        return None

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        if max(positions) >= self.max_length:
            raise ValueError(f"decoder position {max(positions)} is beyond the compiled length {self.max_length}")
        mask = None
        if self.use_attention_mask:
            mask = torch.zeros(self.batch_size, self.max_length, dtype=self.dtype)
            for row, position in enumerate(positions):
                mask[row, : position + 1] = 1
        with torch.no_grad():
            output = self.model.decoder(
                decoder_input_ids=torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1),
                decoder_attention_mask=mask,
                cache_position=torch.tensor(list(positions), dtype=torch.int32).unsqueeze(1),
            )
        self.counters.add("decoder", 1, self.batch_size)
        return output.logits[:, -1, :]


def ctc_frames(model_config: Any, samples: int) -> int:
    """The frames a CTC model's convolutional feature encoder makes of ``samples`` (transformers' formula)."""
    length = samples
    for kernel, stride in zip(model_config.conv_kernel, model_config.conv_stride):
        length = (length - kernel) // stride + 1
    for _ in range(int(getattr(model_config, "num_adapter_layers", 0)) if getattr(model_config, "add_adapter", False) else 0):
        length = (length + 2 * 1 - model_config.adapter_kernel_size) // model_config.adapter_stride + 1
    return max(0, int(length))


class CTCBackend:
    """One encoder call per batch over an ``RBLN…ForCTC``: each row's clip padded to the compiled samples."""

    full_logits = True
    graph = "encoder"

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        self.model = model
        self.model_config = model.config
        self.batch_size = int(config.batch_size)
        self.max_length = int(config.max_seq_len)  # samples
        self.dtype = getattr(config, "dtype", torch.float32) or torch.float32
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(self.batch_size, self.max_length, full_logits=True)
        self.rows: list[torch.Tensor | None] = [None] * self.batch_size

    def open(self, row: int, prompt: Sequence[int]) -> None:
        if not isinstance(prompt, MediaPrompt):
            raise ValueError("a CTC row is opened with an audio clip")
        values = prompt.media.inputs["input_values"].reshape(-1)
        if not 0 < len(values) <= self.max_length:
            raise ValueError(f"an audio clip of {len(values)} samples does not fit the compiled {self.max_length}")
        self.rows[row] = values
        return None

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_values=input_values.to(self.dtype)).logits

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> list[torch.Tensor | None]:
        batch = torch.zeros(self.batch_size, self.max_length, dtype=torch.float32)
        lengths = [0] * self.batch_size
        for row, busy in enumerate(active):
            values = self.rows[row] if busy else None
            if values is not None:
                batch[row, : len(values)] = values
                lengths[row] = len(values)
        logits = self.forward(batch)
        self.counters.add(self.graph, 1, self.batch_size * self.max_length)
        rows: list[torch.Tensor | None] = []
        for row, length in enumerate(lengths):
            self.rows[row] = None
            rows.append(logits[row, : ctc_frames(self.model_config, length)] if length else None)
        return rows
