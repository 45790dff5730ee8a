"""The ``rbln-eval`` command line: parse, call the library, print.

One module per command group (:mod:`.store`, :mod:`.build`, :mod:`.evaluate`, :mod:`.remote`,
:mod:`.sweep`, :mod:`.system`), the option types they share in :mod:`._cli_utils`, and :mod:`._errors`, which turns a
library error into one line on stderr and its exit status (2 for what the user can fix); nothing in the
store is changed by a command that fails that way.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from .. import __version__
from ..errors import RblnEvalError
from . import build, evaluate, remote, store, sweep, system
from ._cli_utils import err, out
from ._errors import format_error

app = typer.Typer(
    name="rbln-eval",
    help=(
        "Compile language models for Rebellions NPUs once into content-addressed bundles, "
        "and evaluate them with lm-evaluation-harness.\n\n"
        "Example: rbln-eval ls --store artifacts"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        out.print(f"rbln-eval {__version__}")
        raise typer.Exit()


for _group in (store, build, evaluate, remote, sweep, system):
    _group.register(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: user errors become one line on stderr and their exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, prog_name="rbln-eval")
    except RblnEvalError as exc:
        err.print(format_error(exc), markup=False)
        sys.exit(exc.exit_code)


__all__ = ["app", "main"]
