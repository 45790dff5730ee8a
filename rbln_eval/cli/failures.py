"""How failures reach the terminal: one line, settings spelled as flags, an exit status.

2 for what the user can fix (a :class:`~rbln_eval.errors.RblnEvalError`, a command line click cannot parse,
or the network), 1 for the rest, 130 on Ctrl-C; a traceback only with ``--debug`` or ``RBLN_EVAL_DEBUG=1``.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import typer

try:  # typer 0.2x parses with its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # earlier typer: click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

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


def runnable_path(path: Path) -> str:
    """``path`` as typed from the working directory: relative below it (``.venv/bin/rbln-eval``), else absolute."""
    try:
        relative = str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
    return relative if "/" in relative else f"./{relative}"


def program_name() -> str:
    """How to run rbln-eval from here: ``rbln-eval`` when that is on PATH, else this environment's script
    (``.venv/bin/rbln-eval``), else ``python -m rbln_eval`` with this interpreter."""
    script = Path(sys.prefix) / "bin" / "rbln-eval"
    on_path = shutil.which("rbln-eval")
    if script.exists():
        same = on_path is not None and Path(on_path).resolve() == script.resolve()
        return "rbln-eval" if same else runnable_path(script)
    if on_path:
        return "rbln-eval"
    return f"{runnable_path(Path(sys.executable))} -m rbln_eval"


def format_usage_error(exc: click_errors.UsageError) -> str:
    """The one line printed for a command line click cannot parse, with the help that lists what it takes."""
    message = exc.format_message().strip().rstrip(".")
    if message[:2].istitle():  # click's sentence case ("Missing argument 'REF'"), not a name ("REF …")
        message = message[0].lower() + message[1:]
    ctx = exc.ctx
    command = ctx.command_path if ctx is not None and ctx.command.get_help_option(ctx) is not None else ""
    if not command.startswith("rbln-eval"):
        command = "rbln-eval"
    return f"error: {message} (see {program_name()}{command[len('rbln-eval'):]} --help)"


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
        status = command(args)  # click's exit status (--help, typer.Exit), or what the command returned
    except click_errors.NoArgsIsHelpError as exc:  # a group named alone: its help, as click shows it
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:  # BadParameter too
        console.print(format_usage_error(exc), markup=False)
        sys.exit(2)
    except click_errors.ClickException as exc:
        console.print(f"error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        console.print("aborted", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:  # typer returns status 130 for one inside a command (handled below)
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
    if status == 130:
        _interrupted(console)
    if isinstance(status, int) and not isinstance(status, bool) and status:
        sys.exit(status)
