"""Per-graph call counters of the simulated runtimes (process-local).

Each `Runtime` call adds to the counters of its graph, keyed by the compiled model's name (the
`.rbln` file stem: `prefill`, `decoder_batch_4`, `encoder`, `decoder`, ...):

- `calls`: number of runtime calls.
- `input_tokens`: tokens fed to the graph, padding included: the element count of the input named
  `input_ids` (for `inputs_embeds`, its element count divided by the hidden size). A prefill call
  of a 128-token chunk counts 128 even for a 5-token prompt; a decode call of batch 4 counts 4.
- `seconds`: wall time spent in the calls, simulated latency included.

If `RBLN_EVAL_SIM_COUNTERS_FILE` is set, the counters are written there as JSON at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import Any

__all__ = ["ENV_COUNTERS_FILE", "format_counters", "record", "reset", "snapshot"]

from ._env import ENV_COUNTERS_FILE  # noqa: E402

_lock = threading.Lock()
_counters: dict[str, dict[str, Any]] = {}


def record(graph: str, input_tokens: int, seconds: float) -> None:
    """Count one call of `graph`."""
    with _lock:
        entry = _counters.setdefault(graph, {"calls": 0, "input_tokens": 0, "seconds": 0.0})
        entry["calls"] += 1
        entry["input_tokens"] += int(input_tokens)
        entry["seconds"] += float(seconds)


def snapshot() -> dict[str, dict[str, Any]]:
    """A copy of the counters: `{graph: {"calls": int, "input_tokens": int, "seconds": float}}`."""
    with _lock:
        return {graph: dict(entry) for graph, entry in sorted(_counters.items())}


def reset() -> None:
    """Zero all counters."""
    with _lock:
        _counters.clear()


def format_counters(counters: dict[str, dict[str, Any]] | None = None) -> str:
    """A plain-text table of `counters` (default: the current ones), with a total row."""
    counters = snapshot() if counters is None else counters
    rows = [(graph, e["calls"], e["input_tokens"], e["seconds"]) for graph, e in counters.items()]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows)))
    width = max(len("graph"), *(len(r[0]) for r in rows))
    lines = [f"{'graph':<{width}}  {'calls':>10}  {'input_tokens':>14}  {'seconds':>10}"]
    lines += [f"{g:<{width}}  {c:>10d}  {t:>14d}  {s:>10.3f}" for g, c, t, s in rows]
    return "\n".join(lines)


def _dump_at_exit() -> None:
    path = os.environ.get(ENV_COUNTERS_FILE)
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(snapshot(), fh, indent=2, sort_keys=True)


atexit.register(_dump_at_exit)
