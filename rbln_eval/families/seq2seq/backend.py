"""The device side of an encoder-decoder LM for :mod:`rbln_eval.core.programs`: the encoder (one row at a time)
and the decoder at the compiled batch size, counted per graph."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rbln_eval.core.counters import DeviceCounters
from rbln_eval.core.shapes import ReplicaShape


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
