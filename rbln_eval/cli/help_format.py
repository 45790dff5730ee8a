"""Help that reads the same at 80 columns as on a wide terminal.

Plain (not boxed) help keeps every option name whole and puts a long one's text on the next line; values
are named as click names them (``TEXT``, ``INTEGER``, ``FLOAT``, ``PATH``), arguments by their name
(``REF``), and flags take none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

#: How values of each annotation are named in help, as click names them.
VALUE_NAMES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", Path: "PATH"}


def value_name(option: TyperOption) -> str:
    """``TEXT``, ``INTEGER``, ``PATH``, ``[a|b]`` for a choice… for the value ``option`` takes."""
    descriptor = option.type_descriptor
    if descriptor.is_choice and descriptor.choices is not None:
        return "[" + "|".join(str(getattr(choice, "value", choice)) for choice in descriptor.choices) + "]"
    if descriptor.is_path:
        return "PATH"
    annotation = descriptor.annotation
    if descriptor.is_list and get_args(annotation):
        annotation = get_args(annotation)[0]
    return VALUE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


class NamedArgument(TyperArgument):
    """An argument listed in help by its name alone (``REF``), as click lists it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:  # typer's hook for the usage line: ``REF``, not ``{REF}``
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def label_parameters(command: Any) -> None:
    """Give ``command``'s options and arguments (and its subcommands', if a group) their help names."""
    for param in getattr(command, "params", []):
        if param.metavar is not None:
            continue
        if isinstance(param, TyperArgument):
            param.metavar = (param.name or "value").upper()
            param.__class__ = NamedArgument
        elif isinstance(param, TyperOption) and not (param.is_flag or param.count):
            param.metavar = value_name(param)
    for subcommand in getattr(command, "commands", {}).values():
        label_parameters(subcommand)


class PlainHelpGroup(TyperGroup):
    """A command group whose help, and its commands' help, is plain text with click's value names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        label_parameters(self)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Each command with the first sentence of its help, wrapped rather than cut."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def plain_typer(help: str, **settings: Any) -> typer.Typer:
    """A command group with the project's settings and plain help."""
    settings = {"no_args_is_help": True, "add_completion": False, "pretty_exceptions_enable": False, **settings}
    return typer.Typer(help=help, cls=PlainHelpGroup, rich_markup_mode=None, **settings)
