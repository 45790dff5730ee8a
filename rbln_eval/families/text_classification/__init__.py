"""Text classification (RoBERTa, XLM-RoBERTa through ``RBLNAutoModelForSequenceClassification``), scored on dataset
tasks."""

from rbln_eval.families.text_classification.family import TextClassificationFamily

__all__ = ["TextClassificationFamily"]
