"""Scoring with lm-evaluation-harness: finding tasks, the checks made before any device work, evaluation with provenance, prefetch for offline use, and the comparison with the float32 reference."""
