"""Values given as text (model_args, environment variables): one reading of booleans and integers."""

from __future__ import annotations

from typing import Any

from rbln_eval.errors import ConfigError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "none", "")


def is_true_word(text: str) -> bool | None:
    """True or False for a spelling of a boolean (``yes``, ``off``, …), None for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def as_bool(value: Any, name: str) -> bool:
    """A model_args boolean (``true``/``false``, ``1``/``0``, …)."""
    if isinstance(value, bool):
        return value
    parsed = is_true_word(str(value))
    if parsed is None:
        raise ConfigError(f"model_args {name}={value!r} is not a boolean (use true or false)")
    return parsed


def as_int(value: Any, name: str) -> int | None:
    """A model_args integer, or None."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model_args {name}={value!r} is not an integer") from None
