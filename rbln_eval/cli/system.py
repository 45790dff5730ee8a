"""System commands: doctor."""

from __future__ import annotations

import json

import typer

from ..store import Store
from ._cli_utils import StoreOpt, out


def doctor_command(
    store: StoreOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Check this machine: toolchain, NPUs (rebel, rbln-stat), CUDA, the store, remotes, Hub token.

    Example: rbln-eval doctor
    """
    from ..doctor import collect, render

    data = collect(Store(store))
    if as_json:
        out.print_json(json.dumps(data))
    else:
        render(data, out)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
