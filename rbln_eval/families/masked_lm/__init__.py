"""The masked-LM family (BERT, RoBERTa, ModernBERT): requests scored by pseudo-log-likelihood."""

from rbln_eval.families.masked_lm.family import MaskedLMFamily

__all__ = ["MaskedLMFamily"]
