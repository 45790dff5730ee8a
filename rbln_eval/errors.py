"""Errors raised by rbln-eval.

Every error that a user can fix is a :class:`RblnEvalError`: the CLI prints its message as one line and
exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RblnEvalError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""

    exit_code = 2


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
    """A compile configuration value is malformed."""
