"""lm_eval task YAMLs the tests write: loglikelihood tasks over a ``text``/``target`` dataset."""

from __future__ import annotations

from pathlib import Path

#: A task directory's ``custom_dataset`` module: ``load_local`` reads the directory's JSONL files (lm_eval's
#: ``data_files``) into a DatasetDict. Tasks name it as ``!function <module>.load_local``.
JSONL_LOADER = '''"""Load the tasks' JSONL files from this directory."""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_local(data_files, **_metadata):
    rows = {}
    for split, name in data_files.items():
        with (HERE / name).open(encoding="utf-8") as fh:
            rows[split] = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()})
'''

#: The Hub dataset of ``tiny_hub`` and the task's name.
TINY_HUB_DATASET = "org/tiny"
TINY_HUB_TASK = "tiny_hub"


def loglikelihood_task(name: str, dataset: dict[str, str]) -> str:
    """A task scoring ``target`` after ``text`` by accuracy; ``dataset`` gives its dataset lines (``dataset_path``, …)."""
    lines = [f"task: {name}", *(f"{key}: {value}" for key, value in dataset.items())]
    lines += [
        "output_type: loglikelihood",
        "test_split: test",
        'doc_to_text: "{{text}}"',
        'doc_to_target: "{{target}}"',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
    ]
    return "\n".join(lines) + "\n"


def write_task(directory: Path, name: str, dataset: dict[str, str]) -> Path:
    """Write :func:`loglikelihood_task` as ``directory/<name>.yaml``; returns its path."""
    path = directory / f"{name}.yaml"
    path.write_text(loglikelihood_task(name, dataset))
    return path


def write_tiny_hub_task(directory: Path) -> Path:
    """The ``tiny_hub`` task, whose test split is the Hub dataset ``org/tiny``."""
    return write_task(directory, TINY_HUB_TASK, {"dataset_path": TINY_HUB_DATASET})
