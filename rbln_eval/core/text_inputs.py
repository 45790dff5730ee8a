"""What text encoders (masked LMs, text classifiers, extractive QA) share: how many tokens a compiled length holds,
and the compiled settings a bundle records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rbln_eval.errors import ConfigError

#: Model types whose position ids start after the padding index (RoBERTa's scheme): they hold fewer tokens.
POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "data2vec-text"})
#: What optimum-rbln's text encoders take when the compiled config does not say.
DEFAULT_INPUT_NAMES = ("input_ids", "attention_mask")


def usable_length(model_config: Any, compiled: int) -> int:
    """The tokens (special ones included) a sequence may hold: the compiled length, within the positions."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return compiled
    if getattr(model_config, "model_type", None) in POSITION_OFFSET_TYPES:
        positions -= int(model_config.pad_token_id or 0) + 1
    return min(compiled, int(positions))


def compiled_settings(path: Path) -> tuple[int, tuple[str, ...]]:
    """The compiled length and input names a bundle's ``rbln_config.json`` records."""
    try:
        config = json.loads((path / "rbln_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the compiled config of bundle {path.name}: {exc}") from None
    length = config.get("max_seq_len")
    if not isinstance(length, int):
        raise ConfigError(f"bundle {path.name} is compiled for sequence lengths {length!r}; one length is supported")
    return length, tuple(config.get("model_input_names") or DEFAULT_INPUT_NAMES)


def encoder_rbln_config(config: dict[str, Any], max_seq_len: int | None, model_config: Any, default_length: int) -> dict[str, Any]:
    """``config`` with the compiled length of a text encoder: ``max_seq_len`` (at most the model's positions), else
    the tokens its positions hold, at most ``default_length``."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if max_seq_len is not None and positions is not None and max_seq_len > positions:
        raise ConfigError(f"must be at most the model's {positions} positions, got {max_seq_len}", option="max_seq_len")
    if max_seq_len is not None:
        config["max_seq_len"] = max_seq_len
    elif positions is not None:
        config["max_seq_len"] = usable_length(model_config, min(int(positions), default_length))
    return config
