"""Image classifiers (``RBLNAutoModelForImageClassification``: ViT, ResNet): one forward call per batch of images.

Examples are images (PIL, a path, or datasets' ``{"path", "bytes"}``) prepared by the bundle's image processor
(transformers' PIL processors: no torchvision); the key holds the image size and channels the graph is compiled
for. They are scored on dataset tasks (``rbln_eval.evaluation.datasets``), not lm_eval's prompts.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import torch

from rbln_eval.core.batched import BatchedForwardBackend
from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.errors import ConfigError, MultimodalRequestError
from rbln_eval.families.base import CompileOptions, Family


class ImageClassifierBackend(BatchedForwardBackend):
    """``pixel_values`` of the batch → logits ``[batch, labels]``."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, int(model.rbln_config.batch_size))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(pixel_values=inputs["pixel_values"]).logits


def as_image(value: Any) -> Any:
    """A PIL RGB image of a dataset value (an image, a file path, or ``{"path", "bytes"}``)."""
    from PIL import Image

    if isinstance(value, dict):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(value, (str, io.BytesIO)):
        try:
            value = Image.open(value)
        except OSError as exc:
            raise MultimodalRequestError(f"cannot read the image {value if isinstance(value, str) else '(bytes)'}: {exc}") from None
    if not hasattr(value, "convert"):
        raise MultimodalRequestError(f"an image must be a PIL image, a path or {{'path', 'bytes'}}, got {type(value).__name__}")
    return value.convert("RGB")


def pil_image_processor(model_id: str, **kwargs: Any) -> Any:
    """The model's image processor on the PIL backend (transformers' top-level ``AutoImageProcessor`` asks for
    torchvision, which this toolchain cannot install)."""
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_id, backend="pil", **kwargs)


class ImageClassificationFamily(Family):
    """ViT and ResNet image classifiers."""

    name = "image-classification"
    auto_class = "RBLNAutoModelForImageClassification"
    transformers_mapping = "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"
    task_kind = "image-classification"
    key_only_fields = ("inputs",)
    request_types = ()
    lm_class = BundleClassifier
    scores_text = False
    has_tokenizer = False

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        if options.max_seq_len is not None:
            raise ConfigError("does not apply to an image classifier (its input is the image size)", option="max_seq_len")
        config = options.shared_config()
        config["inputs"] = {  # what shapes the graph besides the batch: recorded in the key
            "image_size": getattr(model_config, "image_size", None),
            "num_channels": getattr(model_config, "num_channels", 3),
        }
        return config

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        if (directory / "preprocessor_config.json").exists():
            return
        pil_image_processor(model_id, **load_kwargs).save_pretrained(directory)

    def backend(self, model: Any) -> ImageClassifierBackend:
        return ImageClassifierBackend(model)

    def load_preprocessor(self, path: Path) -> Any:
        return pil_image_processor(str(path))

    def example_inputs(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
        pixels = preprocessor(images=[as_image(example[columns["image"]])], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels[0]}
