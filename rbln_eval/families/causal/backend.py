"""The device side of a causal LM for :mod:`rbln_eval.core.programs`: optimum-rbln's prefill runtime (one batch
row at a time, chunked) and its decode runtime at the compiled batch size, counted per graph."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from rbln_eval.core.counters import DeviceCounters
from rbln_eval.core.shapes import ReplicaShape


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
