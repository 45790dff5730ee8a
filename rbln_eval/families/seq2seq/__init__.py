"""The encoder-decoder LM family."""

from rbln_eval.families.seq2seq.family import Seq2SeqFamily

__all__ = ["Seq2SeqFamily"]
