"""Tiny image classifiers built locally (seeded): a ViT and a ResNet with PIL image processors, and a local
dataset task of generated images (``cls_shapes``: PNG files, a JSONL of file names and label names)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

LABELS = ("circle", "square", "stripes", "noise")
IMAGE_SIZE = 32

TASK_YAML = """dataset_task: {name}
kind: image-classification
dataset_path: json
data_files: {{test: {data}}}
split: test
columns: {{image: file}}
label: label
metrics: [top1, top5, macro_f1, mcc]
"""


@functools.lru_cache(maxsize=None)
def tiny_image_classifier(root: str, kind: str, labels: tuple[str, ...] = LABELS) -> Path:
    """Save a tiny seeded ``vit`` or ``resnet`` classifier of ``labels`` with its image processor; its path."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    out = Path(root) / f"tiny-{kind}-{'-'.join(labels)}"
    if (out / "config.json").is_file():
        return out
    names = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    torch.manual_seed(0)
    if kind == "vit":
        config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, **names)
        model = ViTForImageClassification(config).eval()
        processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    elif kind == "resnet":
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **names)
        model = ResNetForImageClassification(config).eval()
        processor = ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_pct=1.0)
    else:
        raise ValueError(kind)
    fit_head(model, processor, len(labels))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def fit_head(model, processor, labels: int, images: int = 8) -> None:
    """Set the classifier so the first ``images`` test images get varied labels (image i: label 3·i mod labels),
    with logits far apart: an untrained head gives every image the same label."""
    import torch

    head = model.classifier[-1] if isinstance(model.classifier, torch.nn.Sequential) else model.classifier
    features = []
    head.register_forward_hook(lambda module, args, output: features.append(args[0]))
    with torch.no_grad():
        model(**processor(images=[make_image(i) for i in range(images)], return_tensors="pt"))
        inputs = torch.cat([features[0], torch.ones(images, 1)], dim=1)
        targets = torch.full((images, labels), -4.0)
        targets[torch.arange(images), (3 * torch.arange(images)) % labels] = 4.0
        solution = torch.linalg.lstsq(inputs, targets).solution  # [features + 1, labels]
        head.weight.copy_(solution[:-1].T)
        head.bias.copy_(solution[-1])


def make_image(seed: int, size: int = 40):
    """A deterministic RGB image: a gradient with a coloured rectangle."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([(x * (3 + seed)) % 256, (y * 7) % 256, ((x + y) * seed) % 256], axis=-1).astype(np.uint8)
    x0, y0 = rng.integers(0, size - 12, 2)
    pixels[y0 : y0 + 12, x0 : x0 + 12] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels, "RGB")


@functools.lru_cache(maxsize=None)
def image_tasks(root: str, count: int = 7, labels: tuple[str, ...] = LABELS) -> Path:
    """A task directory: ``cls_shapes`` (``count`` images labelled by ``labels`` in turn) and ``cls_other`` (the same
    images under label names no model here has)."""
    out = Path(root) / f"image-tasks-{count}"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        make_image(i).save(out / f"img{i}.png")
        rows.append({"file": f"img{i}.png", "label": labels[i % len(labels)]})
    (out / "shapes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    other = [{**r, "label": f"class {i % 3}"} for i, r in enumerate(rows)]
    (out / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other), encoding="utf-8")
    (out / "cls_shapes.yaml").write_text(TASK_YAML.format(name="cls_shapes", data="shapes.jsonl"), encoding="utf-8")
    (out / "cls_other.yaml").write_text(TASK_YAML.format(name="cls_other", data="other.jsonl"), encoding="utf-8")
    return out
