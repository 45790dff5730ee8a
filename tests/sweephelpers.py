"""Sweep plans over the demo models and tasks, for the local and the Ray sweep tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lmhelpers import MODEL_DIRS, TASKS_DIR

#: Few documents per task: the sweep's machinery is under test, not the scores.
TASKS = [
    {"task": "demo_mc", "limit": 3, "include_path": TASKS_DIR, "log_samples": True},
    {"task": "demo_gen", "limit": 2, "include_path": TASKS_DIR, "log_samples": True},
    {"task": "demo_cloze", "limit": 3, "include_path": TASKS_DIR, "log_samples": True},
    {"task": "demo_ppl", "limit": 2, "include_path": TASKS_DIR, "log_samples": True},
]


def write_plan(path: Path, models: list[dict[str, Any]], tasks: list[dict[str, Any]] = TASKS) -> Path:
    path.write_text(yaml.safe_dump({"models": models, "tasks": tasks}))
    return path


def two_models() -> list[dict[str, Any]]:
    """Two keys of the demo Llama, and a third entry with the first one's key."""
    llama = str(MODEL_DIRS["causal"])
    return [
        {"model": llama, "name": "llama-bs2", "batch_size": 2},
        {"model": llama, "name": "llama-last", "batch_size": 1, "logits": "last"},
        {"model": llama, "name": "llama-bs2-again", "batch_size": 2},
    ]


def cell_samples(output: Path, model: str, task: str) -> list[Any]:
    """A cell's logged responses, in document order."""
    path = output / "cells" / f"{model}__{task}" / f"samples_{task}.jsonl"
    rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
    return [r["resps"] for r in rows]


def metrics(result: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c.model, c.task): c.metrics for c in result.cells}
