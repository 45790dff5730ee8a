"""A vision-language bundle's processor, built on this machine even where transformers' ``AutoProcessor`` cannot.

- transformers builds ``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor`` and ``Qwen3VLProcessor`` with a video
  processor, which needs torchvision. Image requests need none of it: :class:`ImageOnlyQwen2VLProcessor` (and the
  Qwen2.5-VL and Qwen3-VL ones) is the same processor class without its video processor, loaded with transformers'
  own ``from_pretrained`` from the bundle's files — its image processor (the PIL one when torchvision is missing),
  tokenizer and chat template.
- transformers' lazy imports take a module for one needing torchvision when its text names ``TorchvisionBackend``
  (:data:`TORCHVISION_BY_NAME`), which Idefics3's PIL image processor does in its docstrings: ``AutoProcessor``
  finds no image processor it can import. :func:`with_pil_image_processor` imports it from its module and builds
  the processor class from it, the tokenizer and the processor's saved settings (chat template included).
- transformers' ``PixtralProcessor`` (a LLaVA with a Pixtral tower) cannot even be imported without torchvision
  (:data:`PIXTRAL_PROCESSOR`): :class:`PixtralImageTextProcessor` is its image-token expansion on transformers'
  generic processor, over the PIL image processor.

Either way prompts expand image tokens, tokenize and apply chat templates exactly as transformers' processor does.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

logger = logging.getLogger(__name__)

#: Processor outputs with one value per token (not image inputs); PaliGemma's processor adds training labels.
TOKEN_FIELDS = ("attention_mask", "mm_token_type_ids", "token_type_ids", "labels")


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


class ImageOnlyQwen3VLProcessor(ImageOnlyProcessor, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without its video processor."""


#: Processors built without their video processor where transformers' own cannot be built, by model type.
IMAGE_ONLY_PROCESSORS: dict[str, type] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
}


#: The module of transformers' Pixtral processor: it imports a torchvision image processor at import time.
PIXTRAL_PROCESSOR = "transformers/models/pixtral/processing_pixtral.py"


class PixtralImageTextProcessor(ProcessorMixin):
    """transformers' ``PixtralProcessor`` (:data:`PIXTRAL_PROCESSOR`) without its torchvision import: each image
    becomes rows of ``[IMG]`` tokens (one per patch), each row ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``;
    the image processor (the PIL one here) resizes to patch multiples; the rest is transformers' generic processor."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template: Any = None,
        image_token: str = "[IMG]",
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token, self.image_break_token, self.image_end_token = image_token, image_break_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    def _process_images(self, images: Any, **images_kwargs: Any) -> Any:
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        stride = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        row = self.image_token * (int(width) // stride)
        return (row + self.image_break_token) * (int(height) // stride - 1) + row + self.image_end_token

    @property
    def model_input_names(self) -> list[str]:
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + ["image_sizes"]


#: Processors rebuilt here when transformers' own cannot be imported, by the ``processor_class`` a model saves:
#: the processor and its PIL image processor (module, class).
PROCESSORS_BY_CLASS: dict[str, tuple[type, str, str]] = {
    "PixtralProcessor": (
        PixtralImageTextProcessor, "transformers.models.pixtral.image_processing_pil_pixtral", "PixtralImageProcessorPil",
    ),
}


def saved_processor_class(path: str | Path) -> str | None:
    """The ``processor_class`` of the processor saved at ``path`` (``None``: none saved, or a remote model)."""
    import json

    config = Path(path) / "processor_config.json"
    return json.loads(config.read_text()).get("processor_class") if config.is_file() else None


def rebuilt_processor(path: str | Path, class_name: str, **kwargs: Any) -> Any:
    """The processor saved at ``path`` as :data:`PROCESSORS_BY_CLASS` rebuilds ``class_name``: its PIL image
    processor, tokenizer and saved settings (chat template included)."""
    import transformers

    processor_class, module, name = PROCESSORS_BY_CLASS[class_name]
    image_processor = getattr(importlib.import_module(module), name).from_pretrained(str(path), **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
    settings, _ = processor_class.get_processor_dict(str(path), **kwargs)
    return processor_class.from_args_and_dict([image_processor, tokenizer], settings)


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
        class_name = saved_processor_class(path)
        if class_name in PROCESSORS_BY_CLASS and isinstance(exc, ImportError):
            return rebuilt_processor(path, class_name, **kwargs)
        logger.warning("the processor of %s cannot be built here: %s", path, exc)
        return None


def encode_prefix_and_suffix(processor: Any, context: str, continuation: str, images: list[Any]) -> tuple[list[int], list[int], dict[str, Any]]:
    """A prefix-LM's (PaliGemma's) encoding of a scored pair: the context as its prompt (the prefix, attended
    bidirectionally), the continuation as the processor's ``suffix`` (marked by ``token_type_ids`` 1), without the
    end-of-sequence token the processor appends to it. Context tokens, continuation tokens, image inputs."""
    encoding = processor(images=[images], text=[context], suffix=[continuation], return_tensors="pt")
    tokens = encoding.pop("input_ids")[0].tolist()
    suffix = encoding["token_type_ids"][0].tolist()
    start = suffix.index(1) if 1 in suffix else len(tokens)
    if tokens[-1] != processor.tokenizer.eos_token_id or 0 in suffix[start:]:
        raise ValueError("the processor's suffix is not the end of the prompt followed by the end-of-sequence token")
    for name in TOKEN_FIELDS:
        encoding.pop(name, None)
    return tokens[:start], tokens[start:-1], dict(encoding)
