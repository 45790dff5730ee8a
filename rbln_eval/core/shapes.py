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

    def prefill_cost(self, tokens: int) -> int:
        """A prefill (or encoder) call holds the whole device: one decode token per batch row per chunk."""
        chunks = -(-tokens // self.prefill_chunk) if self.prefill_chunk else 1
        return self.batch_size * max(1, chunks)
