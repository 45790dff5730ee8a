"""The ``rbln-eval`` command line: parse, call the library, print.

One module per command group (:mod:`.store`, :mod:`.build`, :mod:`.evaluate`, :mod:`.remote`,
:mod:`.sweep`, :mod:`.system`), the option types they share in :mod:`.options`, help and tables that read
whole at 80 columns in :mod:`.help_format` and :mod:`.tables`, and :mod:`.failures`, which turns every
failure into one line on stderr and its exit status (2 for what the user can fix, 1 for the rest, 130 on
Ctrl-C); nothing in the store is changed by a command that fails that way.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from rbln_eval import __version__
from rbln_eval.cli import build, evaluate, remote, store, sweep, system
from rbln_eval.cli.options import err, out
from rbln_eval.cli.failures import run_guarded
from rbln_eval.cli.help_format import plain_typer
from rbln_eval.util.logs import quiet_lm_eval

app = plain_typer(
    name="rbln-eval",
    help=(
        "Compile language models for Rebellions NPUs once into content-addressed bundles, "
        "and evaluate them with lm-evaluation-harness.\n\n"
        "Example: rbln-eval ls --store artifacts"
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of failures (also RBLN_EVAL_DEBUG=1)."),
) -> None:
    if version:
        out.print(f"rbln-eval {__version__}")
        raise typer.Exit()


for _group in (store, build, evaluate, remote, sweep, system):
    _group.register(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: every failure becomes one line on stderr and an exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lm_eval()
    args = list(sys.argv[1:] if argv is None else argv)
    run_guarded(lambda arguments: app(args=arguments, prog_name="rbln-eval", standalone_mode=False), args, err)


__all__ = ["app", "main"]
