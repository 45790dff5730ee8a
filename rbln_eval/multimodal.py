"""The lm-evaluation-harness model ``rbln-vlm``: an image-text-to-text bundle named by model_args.

The scoring is :class:`~rbln_eval.families.vision_language.lm.VisionLanguageLM`'s; model_args are read as for
``rbln`` (:class:`rbln_eval.lm.BundleArgs`).
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model

from rbln_eval.core.work import Executor
from rbln_eval.errors import ConfigError
from rbln_eval.errors import MultimodalRequestError
from rbln_eval.families.vision_language.lm import VisionLanguageLM
from rbln_eval.lm import BundleArgs, open_from_model_args


@register_model("rbln-vlm")
class RBLNVLM(VisionLanguageLM):
    """``rbln-vlm``: score the image-text-to-text bundle that model_args name, or ``executor``'s."""

    MODEL_ARGS = BundleArgs.names() + VisionLanguageLM.MODEL_ARGS

    def __init__(self, executor: Executor | None = None, compiled_now: bool = False, **model_args: Any) -> None:
        if executor is None:
            executor, compiled_now = open_from_model_args(type(self), model_args)
        if not issubclass(executor.family.lm_class, VisionLanguageLM):
            executor.close()
            raise ConfigError(
                f"bundle {executor.bundle.digest[:12]} is a {executor.family.name} bundle: use the `rbln` model for it"
            )
        try:
            super().__init__(executor, compiled_now, **model_args)
        except BaseException:
            executor.close()
            raise


__all__ = ["MultimodalRequestError", "RBLNVLM"]
