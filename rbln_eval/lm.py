"""The lm-evaluation-harness model ``rbln``: a compiled bundle named by model_args, scored on Rebellions NPUs.

Three ways in: ``rbln-eval run``; ``lm_eval.simple_evaluate(model=RBLNLM(artifact=...))``; and
``lm_eval --model rbln --model_args artifact=...`` (through ``rbln-eval lm-eval`` or the ``lm_eval.models``
entry point). The model_args become one :class:`BundleArgs`, which reaches the bundle through
:func:`rbln_eval.api.obtain_bundle` and its replicas through :func:`rbln_eval.api.open_executor`; the scoring
is :class:`~rbln_eval.core.lm.BundleLM`'s, or that of the bundle family's own lm class when it is scored as ``rbln``
too.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, fields
from typing import Any

from lm_eval.api.registry import register_model

from rbln_eval.api import CompileOptions, obtain_bundle, open_executor
from rbln_eval.core.lm import BundleLM
from rbln_eval.core.work import Executor
from rbln_eval.errors import ConfigError
from rbln_eval.store import Store
from rbln_eval.util.values import as_bool, as_int, is_true_word

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleArgs:
    """The model_args that select a bundle and its replicas, parsed once."""

    artifact: str | None = None
    pretrained: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    options: CompileOptions = CompileOptions()
    export: bool = False
    store: str | None = None
    remote: bool | str = True
    npu: str | None = None
    device: Any = None
    devices: str | None = None
    data_parallel: int | None = None
    ray: str | None = None

    #: The compile options by their model_args spelling.
    COMPILE_ARGS = {arg: option for option, arg in CompileOptions.MODEL_ARGS.items()}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "options") + tuple(cls.COMPILE_ARGS)

    @classmethod
    def parse(cls, args: dict[str, Any]) -> "BundleArgs":
        """The bundle-selecting model_args of ``args`` (popped from it), checked."""
        given = {name: args.pop(name) for name in cls.names() if name in args}
        if given.get("artifact") and given.get("pretrained"):
            raise ConfigError("pass either artifact= or pretrained=, not both")
        if not given.get("artifact") and not given.get("pretrained"):
            raise ConfigError("model_args need artifact=REF (a stored bundle) or pretrained=MODEL")
        compile_values: dict[str, Any] = {}
        for arg, option in cls.COMPILE_ARGS.items():
            if arg in given:
                value = given.pop(arg)
                compile_values[option] = value if option in ("logits", "dtype") else as_int(value, arg)
        remote = given.get("remote", True)
        if not (isinstance(remote, str) and is_true_word(remote) is None):
            remote = as_bool(remote, "remote")  # a remote's name, or every configured remote / none
        return cls(
            **{k: v for k, v in given.items() if k not in ("trust_remote_code", "export", "remote", "data_parallel", "ray")},
            trust_remote_code=as_bool(given.get("trust_remote_code", False), "trust_remote_code"),
            export=as_bool(given.get("export", False), "export"),
            remote=remote,
            data_parallel=as_int(given.get("data_parallel"), "data_parallel"),
            ray=given.get("ray") or None,
            options=CompileOptions(**{k: v for k, v in compile_values.items() if v is not None}),
        )

    def open(self) -> tuple[Executor, bool]:
        """The bundle (compiled through the store with ``export``), its replicas, and whether it was compiled now."""
        obtained = obtain_bundle(
            Store(self.store), artifact=self.artifact, model=self.pretrained, options=self.options, revision=self.revision,
            npu=self.npu, remotes=self.remote, export=self.export, trust_remote_code=self.trust_remote_code,
            notify=logger.info,
        )
        return open_executor(obtained.bundle, self.device, self.devices, self.data_parallel, self.ray), obtained.compiled_now


@register_model("rbln")
class RBLNLM(BundleLM):
    """``rbln``: score the bundle that model_args name (``artifact=`` or ``pretrained=``), or ``executor``'s.

    The instance is of the bundle family's lm class when that class is scored as ``rbln`` too (its
    ``MODEL_NAME``), combined with this one (:func:`scoring_class`); otherwise of this class.
    """

    MODEL_ARGS = BundleArgs.names() + BundleLM.SCORING_ARGS

    def __new__(cls, executor: Executor | None = None, compiled_now: bool = False, **model_args: Any) -> "RBLNLM":
        if executor is None:
            check_names(cls, model_args)  # before anything is opened
            executor, compiled_now = BundleArgs.parse(dict(model_args)).open()
        lm_class = executor.family.lm_class
        if not executor.family.scores_text and not issubclass(cls, lm_class) and lm_class not in rbln_lm_classes(cls):
            executor.close()
            model = getattr(lm_class, "MODEL_NAME", None)
            use = f"use the `{model}` model for it" if model else "score it on dataset tasks with `rbln-eval run`"
            raise ConfigError(f"bundle {executor.bundle.digest[:12]} is a {executor.family.name} bundle: {use}")
        instance = super().__new__(scoring_class(cls, lm_class))
        instance.opened = (executor, compiled_now)
        return instance

    def __init__(self, executor: Executor | None = None, compiled_now: bool = False, **model_args: Any) -> None:
        opened = self.__dict__.pop("opened", None)
        if executor is None and opened is not None:
            executor, compiled_now = opened
            model_args = {name: value for name, value in model_args.items() if name not in BundleArgs.names()}
        assert executor is not None
        try:
            super().__init__(executor, compiled_now, **model_args)
        except BaseException:
            executor.close()
            raise


def rbln_lm_classes(cls: type[RBLNLM]) -> list[type[BundleLM]]:
    """The registered families' lm classes scored under ``cls``'s model name, besides :class:`BundleLM`."""
    from rbln_eval.families.registry import families

    found = []
    for family in families():
        lm_class = family.lm_class
        if lm_class is not BundleLM and getattr(lm_class, "MODEL_NAME", None) == cls.MODEL_NAME and lm_class not in found:
            found.append(lm_class)
    return found


def check_names(cls: type[RBLNLM], model_args: dict[str, Any]) -> None:
    """Refuse model_args that neither ``cls`` nor any lm class it may become takes."""
    accepted = list(cls.MODEL_ARGS)
    for lm_class in rbln_lm_classes(cls):
        accepted += [name for name in lm_class.MODEL_ARGS if name not in accepted]
    unknown = sorted(set(model_args) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown model_args for {cls.MODEL_NAME}: {', '.join(unknown)}; accepted: {', '.join(accepted)}")


@functools.lru_cache(maxsize=None)
def scoring_class(cls: type[RBLNLM], lm_class: type) -> type[RBLNLM]:
    """``cls``, or ``cls`` combined with a family's own lm class scored under the same model name."""
    if lm_class not in rbln_lm_classes(cls) or issubclass(cls, lm_class):
        return cls
    names = BundleArgs.names() + tuple(lm_class.MODEL_ARGS)
    return type(f"{cls.__name__}{lm_class.__name__}", (cls, lm_class), {"MODEL_ARGS": names, "__module__": __name__})
