"""How failures reach the terminal: one line, settings spelled as flags, an exit status.

2 for what the user can fix (a :class:`~rbln_eval.errors.RblnEvalError`, or the network), 1 for the rest,
130 on Ctrl-C; a traceback only with ``--debug`` or ``RBLN_EVAL_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable

from rbln_eval.errors import RblnEvalError
from rbln_eval.util.values import is_true_word

#: Settings whose flag keeps lm_eval's underscore spelling (the dash form is accepted too).
_LM_EVAL_FLAGS = frozenset({"num_fewshot", "include_path", "gen_kwargs", "output_path", "log_samples"})
DEBUG_ENV = "RBLN_EVAL_DEBUG"


def flag(name: str) -> str:
    """The command-line spelling of a library setting: ``max_seq_len`` → ``--max-seq-len``."""
    if name in _LM_EVAL_FLAGS:
        return f"--{name}"
    return "--" + name.replace("_", "-")


def format_error(exc: RblnEvalError) -> str:
    """The one line printed for ``exc``."""
    return f"error: {exc.render(flag)}"


def _interrupted(console: Any) -> None:
    """Exit 130 at once: the command's own clean-up (temporaries, workers) ran while the interrupt unwound;
    the interpreter's teardown of loaded models can take seconds and is skipped."""
    console.print("interrupted", markup=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def run_guarded(command: Callable[[list[str]], Any], args: list[str], console: Any) -> None:
    """Run ``command(args)`` (a typer app) and turn whatever ends it into one line and an exit status."""
    from rbln_eval.util.interrupts import install as reliable_interrupts
    from rbln_eval.util.netfaults import describe_failure

    reliable_interrupts()
    debug = bool(is_true_word(os.environ.get(DEBUG_ENV, "")))
    if args[:1] != ["lm-eval"] and "--debug" in args:
        args = [a for a in args if a != "--debug"]
        debug = True
    try:
        command(args)
    except KeyboardInterrupt:  # typer turns it into exit 130 itself, unless it arrives outside a command
        _interrupted(console)
    except SystemExit as exc:
        if exc.code == 130:
            _interrupted(console)
        raise
    except RblnEvalError as exc:
        if debug:
            traceback.print_exc()
        console.print(format_error(exc), markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        message, code = describe_failure(exc, debug)
        console.print(f"error: {message}", markup=False)
        sys.exit(code)
