"""Audio classification (AST through ``RBLNAutoModelForAudioClassification``), scored on dataset tasks."""

from rbln_eval.families.audio_classification.family import AudioClassificationFamily

__all__ = ["AudioClassificationFamily"]
