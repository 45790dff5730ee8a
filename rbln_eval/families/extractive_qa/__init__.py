"""Extractive question answering (BERT, DistilBERT through ``RBLNAutoModelForQuestionAnswering``), scored on dataset
tasks such as SQuAD."""

from rbln_eval.families.extractive_qa.family import ExtractiveQAFamily

__all__ = ["ExtractiveQAFamily"]
