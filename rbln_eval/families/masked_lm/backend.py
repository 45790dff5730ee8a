"""The device side of a masked LM for :mod:`rbln_eval.core.programs`: optimum-rbln's encoder at the compiled
batch size and length, one call for all the rows waiting on it, counted as the graph ``encoder``.

:meth:`MaskedLMBackend.open` only places a row's tokens; :meth:`MaskedLMBackend.step` runs the encoder over
every row (idle rows carry one padding token) and returns each row's logits at the position it asked for.
:class:`TorchMaskedBackend` is the same over a transformers model (the reference of ``compare``).
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from rbln_eval.core.counters import DeviceCounters
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.text_inputs import usable_length

class MaskedLMBackend:
    """The encoder of an ``RBLN…ForMaskedLM`` loaded with runtimes."""

    full_logits = True
    graph = "encoder"

    def __init__(self, model: Any) -> None:
        config = model.rbln_config
        lengths = config.max_seq_len if isinstance(config.max_seq_len, int) else max(config.max_seq_len)
        self.model = model
        self.batch_size = int(config.batch_size)
        self.compiled_length = int(lengths)
        self.max_length = usable_length(model.config, self.compiled_length)
        self.input_names = tuple(config.model_input_names or ("input_ids", "attention_mask"))
        self.pad_token_id = int(model.config.pad_token_id or 0)
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(self.batch_size, self.max_length, full_logits=True)
        self.rows: list[Sequence[int] | None] = [None] * self.batch_size

    def open(self, row: int, tokens: Sequence[int]) -> None:
        if not 0 < len(tokens) <= self.max_length:
            raise ValueError(f"a masked copy of {len(tokens)} tokens does not fit the compiled length {self.max_length}")
        self.rows[row] = tokens
        return None

    def inputs(self, active: Sequence[bool]) -> dict[str, torch.Tensor]:
        """The encoder's inputs: every active row's tokens, padded to the compiled length."""
        input_ids = torch.full((self.batch_size, self.compiled_length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(self.batch_size, self.compiled_length, dtype=torch.long)
        for row, busy in enumerate(active):
            tokens = self.rows[row] if busy else None
            if tokens is None:
                attention_mask[row, 0] = 1  # an idle row: one padding token, attended
                continue
            input_ids[row, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
            attention_mask[row, : len(tokens)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        return inputs

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs).logits

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        logits = self.forward(self.inputs(active))
        self.counters.add(self.graph, 1, self.batch_size * self.compiled_length)
        for row, busy in enumerate(active):
            if not busy:
                self.rows[row] = None
        return logits[torch.arange(self.batch_size), torch.tensor(list(positions))]


class TorchMaskedBackend(MaskedLMBackend):
    """The same rows over a transformers masked LM on the host (float32): the reference's backend."""

    graph = "torch"

    def __init__(self, model: Any, batch_size: int, max_length: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.compiled_length = max_length
        self.max_length = usable_length(model.config, max_length)
        names = ("input_ids", "attention_mask", "token_type_ids")
        self.input_names = tuple(n for n in names if n in inspect.signature(model.forward).parameters)
        self.pad_token_id = int(model.config.pad_token_id or 0)
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(self.batch_size, self.max_length, full_logits=True)
        self.rows = [None] * self.batch_size

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.model.device
        with torch.no_grad():
            return self.model(**{name: value.to(device) for name, value in inputs.items()}).logits.float().cpu()
