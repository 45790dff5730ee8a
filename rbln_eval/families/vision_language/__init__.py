"""The vision-language (image-text-to-text) family."""

from rbln_eval.families.vision_language.family import VisionLanguageFamily

__all__ = ["VisionLanguageFamily"]
