"""rbln-eval: evaluate language models on Rebellions NPUs, compiling each model once."""

__version__ = "0.1.0"
