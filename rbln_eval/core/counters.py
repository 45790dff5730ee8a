"""Device calls and the tokens they carry (padding included), per compiled graph."""

from __future__ import annotations

from dataclasses import dataclass


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
