"""Errors raised by rbln-eval.

Every error that a user can fix is a :class:`RblnEvalError`. It carries what went wrong and, apart from
it, what to do (``hint``). Settings are named by their library names, which each front end spells its
own way: ``option`` is the setting the message is about, and the text names others as ``{name}``. The CLI
spells them as flags (``--logits``) in :mod:`rbln_eval.cli.failures`; ``str(error)`` keeps the library
names (``logits``), as Python and lm_eval's ``--model_args`` users write them. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Callable

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class RblnEvalError(Exception):
    """A problem the user can fix: ``what`` went wrong, and a ``hint`` of what to do.

    ``option``, when set, is the library name of the setting the message starts with.
    """

    exit_code = 2

    def __init__(self, what: str, hint: str | None = None, *, option: str | None = None) -> None:
        self.what = what
        self.hint = hint
        self.option = option
        super().__init__(what, hint)

    def __reduce__(self):  # keeps ``hint`` and ``option`` across processes
        return _rebuild, (type(self), self.what, self.hint, self.option)

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The one-line message, with every setting named as ``spell(library name)``."""
        what = f"{{{self.option}}} {self.what}" if self.option else self.what
        text = f"{what}: {self.hint}" if self.hint else what
        return _PLACEHOLDER.sub(lambda m: spell(m.group(1)), text)

    def __str__(self) -> str:
        return self.render()


class BundleNotFoundError(RblnEvalError):
    """No bundle matches a reference (digest, prefix, alias or path)."""


class AmbiguousReferenceError(RblnEvalError):
    """A digest prefix matches more than one bundle."""


class CorruptBundleError(RblnEvalError):
    """A stored bundle's manifest or files do not match what the store expects."""


class StoreNotWritableError(RblnEvalError):
    """The store directory cannot be created or written."""


class BuildFailedError(RblnEvalError):
    """A build failed before (failure record present) and the caller asked not to retry."""


class ModelSourceError(RblnEvalError):
    """A model id or directory cannot be resolved to a source identity."""


class ConfigError(RblnEvalError):
    """A compile or evaluation setting is malformed."""


def _rebuild(cls: type[RblnEvalError], what: str, hint: str | None, option: str | None) -> RblnEvalError:
    return cls(what, hint, option=option)
