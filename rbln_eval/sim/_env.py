"""The simulator's settings: the names of its environment variables, and how numbers are read from them."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

#: Serve the ``rebel`` SDK from the simulator (``1``; ``force`` even beside a real SDK).
ENV_SIMULATE = "RBLN_EVAL_SIMULATE"
#: Devices of a simulated node (default 8).
ENV_DEVICES = "RBLN_EVAL_SIM_DEVICES"
#: The simulated NPU's name (default ``RBLN-CA25``).
ENV_NPU = "RBLN_EVAL_SIM_NPU"
#: Device time of every runtime call, in milliseconds (default 0).
ENV_LATENCY_MS = "RBLN_EVAL_SIM_LATENCY_MS"
#: Extra host time every compiled graph takes, in milliseconds (a compile long enough to interrupt).
ENV_COMPILE_MS = "RBLN_EVAL_SIM_COMPILE_MS"
#: Amplitude of ``amplitude * sin(i)`` added to every output, so that a tolerance check can be seen to fail.
ENV_PERTURB = "RBLN_EVAL_SIM_PERTURB"
#: The devices this process may open, as the SDK reads it (``4,5,6,7``); Ray sets it for each task/actor.
ENV_VISIBLE_DEVICES = "RBLN_DEVICES"
#: A JSON file the process writes its per-graph call counters to at exit.
ENV_COUNTERS_FILE = "RBLN_EVAL_SIM_COUNTERS_FILE"

Number = TypeVar("Number", int, float)


def env_number(
    name: str,
    parse: Callable[[str], Number],
    default: Number,
    meaning: str,
    minimum: Number | None = None,
    error: type[Exception] = ValueError,
) -> Number:
    """``parse`` of environment variable ``name``, ``default`` when unset or blank.

    Raises ``error`` ("NAME must be <meaning>, got '...'") when the value does not parse or is below ``minimum``.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise error(f"{name} must be {meaning}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise error(f"{name} must be {meaning}, got {raw!r}")
    return value
