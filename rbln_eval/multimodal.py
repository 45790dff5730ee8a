"""The lm-evaluation-harness model ``rbln-vlm``: an image-text-to-text bundle named by model_args.

model_args are read as for ``rbln`` (:class:`rbln_eval.lm.BundleArgs`); the scoring is the lm class of the
bundle's family that is scored as ``rbln-vlm`` (its ``MODEL_NAME``), found through the family registry.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model

from rbln_eval.core.work import Executor
from rbln_eval.errors import ConfigError, MultimodalRequestError
from rbln_eval.lm import RBLNLM


@register_model("rbln-vlm")
class RBLNVLM(RBLNLM):
    """``rbln-vlm``: score the image-text-to-text bundle that model_args name, or ``executor``'s."""

    MODEL_NAME = "rbln-vlm"

    def __new__(cls, executor: Executor | None = None, compiled_now: bool = False, **model_args: Any) -> "RBLNVLM":
        instance = super().__new__(cls, executor, compiled_now, **model_args)
        if type(instance) is cls:  # the bundle's family has no lm class scored as rbln-vlm
            opened, _ = instance.__dict__.pop("opened")
            opened.close()
            raise ConfigError(f"bundle {opened.bundle.digest[:12]} is a {opened.family.name} bundle: use the `rbln` model for it")
        return instance  # type: ignore[return-value]


__all__ = ["MultimodalRequestError", "RBLNVLM"]
