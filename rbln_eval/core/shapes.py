"""The compiled shapes of a replica, as the host side needs them to fit and weigh requests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaShape:
    """The compiled shapes of one replica: all that is needed to fit and weigh requests as it runs them."""

    batch_size: int
    max_length: int
    enc_max_length: int | None = None
    prefill_chunk: int | None = None
    full_logits: bool = False
    #: The window of a sliding-window KV cache (``None``: every position kept where it is).
    sliding_window: int | None = None

    @property
    def steps_go_back(self) -> bool:
        """Whether a row's decode steps may go back to an earlier position (the next continuation of a shared
        context): a sliding-window cache keeps the last ``window`` positions in turn, so only while it holds them all."""
        return self.sliding_window is None or self.max_length <= self.sliding_window

    def prefill_cost(self, tokens: int) -> int:
        """A prefill (or encoder) call holds the whole device: one decode token per batch row per chunk."""
        chunks = -(-tokens // self.prefill_chunk) if self.prefill_chunk else 1
        return self.batch_size * max(1, chunks)
