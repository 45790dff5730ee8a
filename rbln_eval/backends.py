"""Device backends for :mod:`rbln_eval.engine` over optimum-rbln's loaded runtimes.

Each family (:mod:`rbln_eval.families`) names its backend. Causal LMs use the model's prefill runtime (one batch row at a time, chunked) and its decode runtime at the
compiled batch size; seq2seq LMs use the encoder (one row at a time) and the decoder. Each backend counts
its device calls and the tokens it sends, padding included, per graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .shapes import ReplicaShape


@dataclass
class GraphCounter:
    calls: int = 0
    tokens: int = 0


class DeviceCounters(dict):
    """``{graph: GraphCounter}`` with a JSON view."""

    def add(self, graph: str, calls: int, tokens: int) -> None:
        counter = self.setdefault(graph, GraphCounter())
        counter.calls += calls
        counter.tokens += tokens

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: {"calls": c.calls, "tokens": c.tokens} for name, c in sorted(self.items())}


class CausalBackend:
    """Prefill + decode over an ``RBLN…ForCausalLM`` loaded with runtimes."""

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        self.model = model
        self.batch_size = int(config.batch_size)
        self.max_length = int(config.max_seq_len)
        self.prefill_chunk = int(config.prefill_chunk_size)
        self.full_logits = int(config.logits_to_keep or 0) == 0
        self.decoder = model.decoders[self.batch_size]
        self.use_attention_mask = bool(config.use_attention_mask)
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(self.batch_size, self.max_length, prefill_chunk=self.prefill_chunk, full_logits=self.full_logits)

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        cache_position = self.prefill_positions(len(tokens))
        input_ids = torch.tensor([list(tokens)], dtype=torch.long)
        output = self.model.prefill_decoder(input_ids=input_ids, cache_position=cache_position, batch_idx=row)
        return self.prefill_logits(output, len(tokens))

    def prefill_positions(self, length: int) -> torch.Tensor:
        """The cache positions of a prefill of ``length`` tokens, which must fit the compiled length."""
        if not 0 < length <= self.max_length:
            raise ValueError(f"prefill of {length} tokens does not fit the compiled length {self.max_length}")
        return torch.arange(length, dtype=torch.int32).unsqueeze(0)

    def prefill_logits(self, output: Any, length: int) -> torch.Tensor:
        """Count a prefill of ``length`` tokens and check it returned the logit rows the bundle keeps."""
        chunks = math.ceil(length / self.prefill_chunk)
        self.counters.add("prefill", chunks, chunks * self.prefill_chunk)
        logits = output.logits[0]
        expected = length if self.full_logits else 1
        if logits.shape[0] != expected:
            raise RuntimeError(f"prefill returned {logits.shape[0]} logit rows, expected {expected}")
        return logits

    def _decode_mask(self, positions: Sequence[int]) -> torch.Tensor | None:
        if not self.use_attention_mask:
            return None
        mask = torch.zeros_like(self.decoder.dec_attn_mask)  # the runtime's own mask layout
        for row, position in enumerate(positions):
            mask[row, ..., : position + 1] = 1
        return mask

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        if max(positions) >= self.max_length:
            raise ValueError(f"decode position {max(positions)} is beyond the compiled length {self.max_length}")
        input_ids = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)
        cache_position = torch.tensor(list(positions), dtype=torch.int32).unsqueeze(1)
        kwargs: dict[str, Any] = {}
        mask = self._decode_mask(positions)
        if mask is not None:
            kwargs["attention_mask"] = mask
        output = self.decoder(input_ids=input_ids, cache_position=cache_position, **kwargs)
        self.counters.add("decode", 1, self.batch_size)
        return output.logits[:, -1, :]


class Seq2SeqBackend:
    """Encoder + decoder over an ``RBLN…ForConditionalGeneration`` loaded with runtimes."""

    full_logits = False

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        self.model = model
        self.batch_size = int(config.batch_size)
        self.enc_max_length = int(config.enc_max_seq_len)
        self.max_length = int(config.dec_max_seq_len)
        self.dtype = getattr(config, "dtype", torch.float32) or torch.float32
        self.pad_token_id = int(model.config.pad_token_id or 0)
        start = model.config.decoder_start_token_id
        self.decoder_start_token_id = int(start if start is not None else self.pad_token_id)
        self.encoder_masks = torch.ones(self.batch_size, self.enc_max_length, dtype=self.dtype)
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(self.batch_size, self.max_length, enc_max_length=self.enc_max_length)

    def open(self, row: int, tokens: Sequence[int]) -> None:
        length = len(tokens)
        if not 0 < length <= self.enc_max_length:
            raise ValueError(f"encoder input of {length} tokens does not fit the compiled length {self.enc_max_length}")
        input_ids = torch.full((1, self.enc_max_length), self.pad_token_id, dtype=torch.long)
        input_ids[0, :length] = torch.tensor(list(tokens), dtype=torch.long)
        mask = torch.zeros(1, self.enc_max_length, dtype=self.dtype)
        mask[0, :length] = 1
        self.model.encoder(input_ids=input_ids, attention_mask=mask, block_tables=torch.tensor([row], dtype=torch.int16))
        self.encoder_masks[row] = mask[0]
        self.counters.add("encoder", 1, self.enc_max_length)
        return None

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        if max(positions) >= self.max_length:
            raise ValueError(f"decoder position {max(positions)} is beyond the compiled length {self.max_length}")
        decoder_input_ids = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)
        cache_position = torch.tensor(list(positions), dtype=torch.int32).unsqueeze(1)
        decoder_mask = torch.zeros(self.batch_size, self.max_length, dtype=self.dtype)
        for row, position in enumerate(positions):
            decoder_mask[row, : position + 1] = 1
        output = self.model.decoder(
            decoder_input_ids=decoder_input_ids,
            attention_mask=self.encoder_masks.clone(),
            decoder_attention_mask=decoder_mask,
            cache_position=cache_position,
        )
        self.counters.add("decoder", 1, self.batch_size)
        return output.logits[:, -1, :]
