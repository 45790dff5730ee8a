"""Load the demo tasks' JSONL files from this directory, whatever the working directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

TASKS_DIR = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_local(data_files: dict[str, str], **_metadata: Any) -> datasets.DatasetDict:
    """``custom_dataset`` hook: ``data_files`` names are relative to this directory.

    lm_eval also passes the task metadata and model arguments as keyword
    arguments; they are not needed here.
    """
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list(read_jsonl(TASKS_DIR / name)) for split, name in data_files.items()}
    )
