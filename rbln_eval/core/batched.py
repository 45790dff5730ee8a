"""The device side of models that answer in one forward pass (classifiers, extractive QA): one call over the
compiled batch rows, each row one example.

:meth:`BatchedForwardBackend.open` only places an example's inputs (a :class:`~rbln_eval.core.work.MediaPrompt`)
in a row; :meth:`BatchedForwardBackend.step` stacks every row's inputs (an idle row repeats the first busy one,
whose outputs are dropped), runs the model once and hands each busy row its own outputs. Families give the call
itself (:meth:`BatchedForwardBackend.forward`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rbln_eval.core.counters import DeviceCounters
from rbln_eval.core.shapes import ReplicaShape
from rbln_eval.core.work import MediaPrompt


class BatchedForwardBackend:
    """One forward call over the compiled batch; ``forward`` maps the stacked inputs to ``[batch, ...]`` outputs."""

    full_logits = True
    graph = "model"

    def __init__(self, model: Any, batch_size: int, max_length: int = 1) -> None:
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.counters = DeviceCounters()
        self.shape = ReplicaShape(batch_size, max_length, full_logits=True)
        self.rows: list[dict[str, torch.Tensor] | None] = [None] * batch_size

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        """The model's outputs for a whole batch of inputs: a tensor, or a tuple of tensors, batch first."""
        raise NotImplementedError

    def open(self, row: int, prompt: Sequence[int]) -> None:
        if not isinstance(prompt, MediaPrompt):
            raise ValueError("a row of a forward-pass model is opened with an example's inputs")
        self.rows[row] = prompt.media.inputs
        return None

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> list[Any]:
        busy = [row for row, on in enumerate(active) if on and self.rows[row] is not None]
        if not busy:
            raise RuntimeError("a forward step with no example in any row")
        filler = self.rows[busy[0]]
        assert filler is not None
        batch = {
            name: torch.stack([(self.rows[row] if row in busy else filler)[name] for row in range(self.batch_size)])  # type: ignore[index]
            for name in filler
        }
        with torch.no_grad():
            outputs = self.forward(batch)
        self.counters.add(self.graph, 1, self.batch_size)
        self.rows = [None] * self.batch_size
        if isinstance(outputs, torch.Tensor):
            return [outputs[row] if row in busy else None for row in range(self.batch_size)]
        return [tuple(o[row] for o in outputs) if row in busy else None for row in range(self.batch_size)]
