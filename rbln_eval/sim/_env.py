"""Numeric settings of the simulator, read from the environment at use."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

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
