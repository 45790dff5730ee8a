"""Image classification (ViT, ResNet through ``RBLNAutoModelForImageClassification``), scored on dataset tasks."""

from rbln_eval.families.image_classification.family import ImageClassificationFamily

__all__ = ["ImageClassificationFamily"]
