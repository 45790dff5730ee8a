"""The device side of a causal LM for :mod:`rbln_eval.core.programs`: optimum-rbln's prefill runtime (one batch
row at a time, chunked) and its decode runtime at the compiled batch size, counted per graph.

A row can be prefilled from a chunk boundary on top of what its KV cache holds (optimum-rbln takes a
``cache_position`` that starts at a multiple of ``prefill_chunk_size`` as an externally cached prefix). The
runtime's own page table hands a row a fresh KV block on every prefill, which would drop that prefix, so such
a prefill passes the row's current block table explicitly.
"""

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
        window = getattr(config, "sliding_window", None) if getattr(config, "cache_impl", "static") != "static" else None
        self.shape = ReplicaShape(
            self.batch_size, self.max_length, prefill_chunk=self.prefill_chunk, full_logits=self.full_logits,
            sliding_window=int(window) if window else None,
        )
        self.filled = [0] * self.batch_size  # positions of each row's KV cache written by its last prefills

    @property
    def reuses_prefix(self) -> bool:
        """Whether :meth:`open` takes a ``start`` (prefill on top of a row's cached prefix). A subclass with a
        prefill of its own (image embeddings, multimodal positions) does not, unless it says so; nor does a
        sliding-window cache, whose rows are not addressed by position."""
        static = getattr(self.model.rbln_config, "cache_impl", "static") == "static"
        return static and type(self).open is CausalBackend.open

    def open(self, row: int, tokens: Sequence[int], start: int = 0) -> torch.Tensor:
        """Prefill ``row`` with ``tokens`` at positions ``start``…; logits of those positions (or of the last).

        ``start`` > 0 keeps the row's positions before it, which this row's earlier prefills wrote; it must be a
        multiple of the prefill chunk, as optimum-rbln's prefix caching requires.
        """
        cache_position = self.prefill_positions(len(tokens), start)
        input_ids = torch.tensor([list(tokens)], dtype=torch.long)
        kwargs: dict[str, Any] = {}
        if start:
            if start % self.prefill_chunk or start > self.filled[row]:
                raise ValueError(
                    f"a prefill from position {start} needs a chunk boundary (chunk {self.prefill_chunk}) the row "
                    f"has filled ({self.filled[row]} positions)"
                )
            kwargs["block_tables"] = self.row_blocks(row, start + len(tokens))
        output = self.model.prefill_decoder(input_ids=input_ids, cache_position=cache_position, batch_idx=row, **kwargs)
        self.filled[row] = start + len(tokens)
        return self.prefill_logits(output, len(tokens))

    def row_blocks(self, row: int, end: int) -> torch.Tensor:
        """The row's KV block table, with blocks for positions up to ``end`` (those it holds are kept)."""
        pages = self.model.prefill_decoder.page_table_manager
        block_size = int(self.model.rbln_config.kvcache_block_size)
        for block in range(-(-end // block_size)):
            pages.update_block(row, block)
        return pages.replace_empty_block(pages.block_tables[row])

    def prefill_positions(self, length: int, start: int = 0) -> torch.Tensor:
        """The cache positions of a prefill of ``length`` tokens from ``start``, which must fit the compiled length."""
        if length <= 0 or start < 0 or start + length > self.max_length:
            raise ValueError(f"prefill of {length} tokens from position {start} does not fit the compiled length {self.max_length}")
        return torch.arange(start, start + length, dtype=torch.int32).unsqueeze(0)

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
        for row, position in enumerate(positions):
            self.filled[row] = min(self.filled[row], position)  # a step writes its row's KV at ``position``
        self.counters.add("decode", 1, self.batch_size)
        return output.logits[:, -1, :]
