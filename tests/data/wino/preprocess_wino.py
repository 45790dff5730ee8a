"""The local Winogrande-style task: lm_eval's own Winogrande prompt functions over the JSONL files here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
from lm_eval.tasks.winogrande.preprocess_winogrande import (
    doc_to_choice,
    doc_to_target,
    doc_to_text,
)

__all__ = ["doc_to_choice", "doc_to_target", "doc_to_text", "load_local"]

HERE = Path(__file__).resolve().parent


def load_local(data_files: dict[str, str], **_metadata: Any) -> datasets.DatasetDict:
    """``custom_dataset`` hook: ``data_files`` names are relative to this directory."""
    splits = {}
    for split, name in data_files.items():
        with (HERE / name).open(encoding="utf-8") as fh:
            splits[split] = datasets.Dataset.from_list([json.loads(line) for line in fh if line.strip()])
    return datasets.DatasetDict(splits)
