"""The canonical form of an optimum-rbln compile config: equal configs give equal keys."""

from __future__ import annotations

import re
from typing import Any, Mapping

from rbln_eval.errors import ConfigError

#: optimum-rbln options that only affect how a compiled model is loaded, never what is compiled.
RUNTIME_ONLY_KEYS = frozenset({"create_runtimes", "device", "device_map", "activate_profiler", "timeout"})
#: Spellings of the tensor-parallel degree, folded into :data:`TP_KEY`.
TP_ALIASES = ("tp", "tensor_parallel_size", "num_devices")
TP_KEY = "num_devices"
#: Defaults made explicit so that leaving an option out and passing its default give one key.
COMPILE_DEFAULTS: Mapping[str, Any] = {"batch_size": 1, TP_KEY: 1}


def _normalize_scalar(value: Any) -> Any:
    """Make string and numeric spellings of one value equal ("4" == 4, "true" == True)."""
    if isinstance(value, str):
        text = value.strip()
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+\.?\d*[eE][+-]?\d+)", text):
            number = float(text)
            return int(number) if number.is_integer() else number
        return text
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value).__module__ == "torch":  # torch.dtype
        return str(value).removeprefix("torch.")
    return value


def _normalize_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _normalize_mapping(value, top_level=False)
    if isinstance(value, (list, tuple)):
        return [_normalize_value(item) for item in value]
    return _normalize_scalar(value)


def _normalize_mapping(config: Mapping[str, Any], top_level: bool) -> dict[str, Any]:
    normalized: dict[str, Any] = {}
    for raw_key, value in config.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"compile option names must be strings, got {raw_key!r}")
        key = raw_key.removeprefix("rbln_")
        if key in RUNTIME_ONLY_KEYS:
            continue
        if key in TP_ALIASES:
            key = TP_KEY
        value = _normalize_value(value)
        if key in normalized and normalized[key] != value:
            raise ConfigError(f"compile option {key!r} given twice with different values ({normalized[key]!r}, {value!r})")
        normalized[key] = value
    if top_level:
        for key, default in COMPILE_DEFAULTS.items():
            normalized.setdefault(key, default)
    return dict(sorted(normalized.items()))


def normalize_compile_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Canonical form of an optimum-rbln compile config.

    ``rbln_`` prefixes are dropped, runtime-only keys removed, ``tp``/``tensor_parallel_size``/``num_devices``
    folded into ``num_devices``, string and numeric forms of one value made equal, defaults made explicit,
    keys sorted (recursively).
    """
    return _normalize_mapping(dict(config or {}), top_level=True)
