"""The causal (decoder-only) LM family."""

from rbln_eval.families.causal.family import CausalFamily

__all__ = ["CausalFamily"]
