"""A vision-language bundle's processor, built on this machine even where transformers' ``AutoProcessor`` cannot.

- transformers builds ``Qwen2VLProcessor`` and ``Qwen2_5_VLProcessor`` with a video processor, which needs
  torchvision. Image requests need none of it: :class:`ImageOnlyQwen2VLProcessor` (and the Qwen2.5-VL one) is the
  same processor class without its video processor, loaded with transformers' own ``from_pretrained`` from the
  bundle's files — its image processor (the PIL one when torchvision is missing), tokenizer and chat template.
- transformers' lazy imports take a module for one needing torchvision when its text names ``TorchvisionBackend``
  (:data:`TORCHVISION_BY_NAME`), which Idefics3's PIL image processor does in its docstrings: ``AutoProcessor``
  finds no image processor it can import. :func:`with_pil_image_processor` imports it from its module and builds
  the processor class from it, the tokenizer and the processor's saved settings (chat template included).

Either way prompts expand image tokens, tokenize and apply chat templates exactly as transformers' processor does.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

logger = logging.getLogger(__name__)


class ImageOnlyProcessor:
    """Mixin: a processor of images and text only (its class's ``__init__`` also takes a video processor).

    ``ProcessorMixin`` reads a processor's parts from the signature of ``__init__``: this one names the image
    processor and the tokenizer, so ``from_pretrained`` loads no video processor and none is required.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any) -> None:
        # the processor class's own setup (its image and video tokens); it passes the missing video processor on
        # as a third part, which ProcessorMixin does not take: only the parts this signature names are kept
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)  # type: ignore[call-arg]


class ImageOnlyQwen2VLProcessor(ImageOnlyProcessor, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor."""


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyProcessor, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without its video processor."""


#: Processors built without their video processor where transformers' own cannot be built, by model type.
IMAGE_ONLY_PROCESSORS: dict[str, type] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
}


#: Where transformers decides that a module needs torchvision from the module's text.
TORCHVISION_BY_NAME = "transformers/utils/import_utils.py:BASE_FILE_REQUIREMENTS"
#: PIL image processors that need no torchvision but that ``AutoProcessor`` cannot import: (module, class), by model type.
PIL_IMAGE_PROCESSORS: dict[str, tuple[str, str]] = {
    "idefics3": ("transformers.models.idefics3.image_processing_pil_idefics3", "Idefics3ImageProcessorPil"),
}


def with_pil_image_processor(path: str | Path, model_type: str, **kwargs: Any) -> Any:
    """The processor of ``model_type`` at ``path`` built on its PIL image processor (:data:`PIL_IMAGE_PROCESSORS`)."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    module, name = PIL_IMAGE_PROCESSORS[model_type]
    image_processor = getattr(importlib.import_module(module), name).from_pretrained(str(path), **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
    processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])
    settings, _ = processor_class.get_processor_dict(str(path), **kwargs)
    return processor_class.from_args_and_dict([image_processor, tokenizer], settings)


def load_processor(path: str | Path, model_type: str | None, **kwargs: Any) -> Any:
    """The processor of the model at ``path``: transformers' own, else one built around what transformers cannot
    build here (see the module), else ``None``. ``kwargs`` go to ``from_pretrained``."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path), **kwargs)
    except (ImportError, OSError, ValueError, TypeError) as exc:
        image_only = IMAGE_ONLY_PROCESSORS.get(model_type or "")
        if image_only is not None and isinstance(exc, ImportError):
            return image_only.from_pretrained(str(path), **kwargs)
        if model_type in PIL_IMAGE_PROCESSORS:
            return with_pil_image_processor(path, model_type, **kwargs)
        logger.warning("the processor of %s cannot be built here: %s", path, exc)
        return None
