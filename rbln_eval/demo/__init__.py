"""Embedded demo assets: two tiny trained language models and an lm_eval task suite.

The models and the task data are produced by ``scripts/train_demo_models.py``
and shipped as package data, so examples and tests run without any download.
See ``README.md`` in this directory.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR: Path = Path(__file__).resolve().parent

#: lm_eval task names of the suite, in the order of the ``demo`` group.
TASK_NAMES: tuple[str, ...] = ("demo_cloze", "demo_mc", "demo_ppl", "demo_gen")
#: Name of the lm_eval group that contains all demo tasks.
GROUP_NAME = "demo"


def causal_model_dir() -> Path:
    """Directory of the tiny Llama causal LM (``save_pretrained`` layout)."""
    return DEMO_DIR / "models" / "llama"


def seq2seq_model_dir() -> Path:
    """Directory of the tiny T5 encoder-decoder LM (``save_pretrained`` layout)."""
    return DEMO_DIR / "models" / "t5"


def tasks_dir() -> Path:
    """Directory to pass to lm_eval as ``--include_path`` / ``TaskManager(include_path=...)``."""
    return DEMO_DIR / "tasks"


__all__ = ["DEMO_DIR", "GROUP_NAME", "TASK_NAMES", "causal_model_dir", "seq2seq_model_dir", "tasks_dir"]
