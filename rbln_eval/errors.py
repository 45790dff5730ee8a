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


class HubUnreachableError(RblnEvalError):
    """The Hub (``HF_ENDPOINT``) cannot be reached and the files needed are not in the HF cache."""


class NotCachedError(RblnEvalError):
    """Offline mode is on and a model or dataset is not in the HF cache."""


class ReferenceModelError(RblnEvalError):
    """The model a bundle was compiled from cannot be found for the reference run."""


class PlanError(ConfigError):
    """A sweep plan is malformed."""


class UnsupportedModelError(RblnEvalError):
    """The model's architecture is in no family that rbln-eval and optimum-rbln both know."""


class ArtifactConversionError(RblnEvalError):
    """optimum-rbln wrote torch artifacts that are not plain ``{group: {name: tensor}}`` tensors."""


class RemoteError(RblnEvalError):
    """A remote cannot be reached, read or written."""


class RemoteConfigError(RblnEvalError):
    """A remote name or location is unknown or malformed."""


class BundleRefusedError(RblnEvalError):
    """A remote bundle does not match its manifest (or its manifest is unsafe): nothing was stored."""


class MultimodalRequestError(RblnEvalError):
    """A multimodal request that this bundle cannot score as given."""


class DevicePlacementError(RblnEvalError):
    """Devices asked for do not exist, or do not split into replicas of the bundle's tensor parallelism."""


class IncompatibleBundleError(RblnEvalError):
    """The bundle was compiled for another target or toolchain than this machine has."""


class RuntimeCreationError(RblnEvalError):
    """optimum-rbln could not create the bundle's runtimes on the devices (a device or driver fault)."""

    exit_code = 1


class WorkerDiedError(RblnEvalError):
    """A worker process exited while it had work (or while loading); the evaluation has no scores."""


class WorkerFailedError(RblnEvalError):
    """A worker raised an error that is not a user error; its traceback is logged."""


class RayUnavailableError(RblnEvalError):
    """Ray is not installed, or the cluster cannot be reached."""


def _rebuild(cls: type[RblnEvalError], what: str, hint: str | None, option: str | None) -> RblnEvalError:
    return cls(what, hint, option=option)
