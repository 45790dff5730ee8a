"""How library errors reach the terminal: one line, the settings spelled as flags, an exit status."""

from __future__ import annotations

from ..errors import RblnEvalError

#: Settings whose flag keeps lm_eval's underscore spelling (the dash form is accepted too).
_LM_EVAL_FLAGS = frozenset({"num_fewshot", "include_path", "gen_kwargs", "output_path", "log_samples"})


def flag(name: str) -> str:
    """The command-line spelling of a library setting: ``max_seq_len`` → ``--max-seq-len``."""
    if name in _LM_EVAL_FLAGS:
        return f"--{name}"
    return "--" + name.replace("_", "-")


def format_error(exc: RblnEvalError) -> str:
    """The one line printed for ``exc``."""
    return f"error: {exc.render(flag)}"
