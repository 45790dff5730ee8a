"""The lm-evaluation-harness models named by their inputs: ``rbln-vlm`` (image-text-to-text bundles) and
``rbln-audio`` (speech bundles).

model_args are read as for ``rbln`` (:class:`rbln_eval.lm.BundleArgs`); the scoring is the lm class of the
bundle's family that is scored under the model's name (its ``MODEL_NAME``), found through the family registry.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model

from rbln_eval.core.work import Executor
from rbln_eval.errors import ConfigError, MultimodalRequestError
from rbln_eval.lm import RBLNLM


class InputKindModel(RBLNLM):
    """A model that scores only the bundles whose family's lm class carries its name."""

    def __new__(cls, executor: Executor | None = None, compiled_now: bool = False, **model_args: Any) -> "InputKindModel":
        instance = super().__new__(cls, executor, compiled_now, **model_args)
        if type(instance) is cls:  # the bundle's family has no lm class scored under this name
            opened, _ = instance.__dict__.pop("opened")
            opened.close()
            name = getattr(opened.family.lm_class, "MODEL_NAME", "rbln")
            raise ConfigError(f"bundle {opened.bundle.digest[:12]} is a {opened.family.name} bundle: use the `{name}` model for it")
        return instance  # type: ignore[return-value]


@register_model("rbln-vlm")
class RBLNVLM(InputKindModel):
    """``rbln-vlm``: score the image-text-to-text bundle that model_args name, or ``executor``'s."""

    MODEL_NAME = "rbln-vlm"


@register_model("rbln-audio")
class RBLNAudio(InputKindModel):
    """``rbln-audio``: score the speech bundle that model_args name, or ``executor``'s."""

    MODEL_NAME = "rbln-audio"


__all__ = ["MultimodalRequestError", "RBLNAudio", "RBLNVLM"]
