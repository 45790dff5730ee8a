"""A rough size of each cell, so that the longest cells start first and the last ones to start are short."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from rbln_eval.sweep.cells import Cell

#: Device calls per generation request, roughly (a prefill and some decode steps), against one per scored request.
GENERATION_WEIGHT = 4.0


def settings_id(settings: dict[str, Any]) -> str:
    """The task settings as one string (the HF reference does not change a cell's size)."""
    return json.dumps({k: v for k, v in settings.items() if k != "reference"}, sort_keys=True, default=str)


def task_costs(settings: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The size of the cells of each task setting (by :func:`settings_id`): documents × choices, or
    generations weighted by :data:`GENERATION_WEIGHT`.

    Only an order for scheduling, so only tasks of an ``include_path`` are looked at (lm_eval's index of its
    own tasks takes many seconds to build); any other task, or one that cannot be loaded here, counts 0.
    """
    from lm_eval.tasks import TaskManager

    managers: dict[str, Any] = {}
    costs: dict[str, float] = {}
    for entry in settings:
        key = settings_id(entry)
        if key in costs:
            continue
        costs[key] = 0.0
        include_path, limit = entry.get("include_path"), entry.get("limit")
        if not include_path:
            continue
        try:
            if include_path not in managers:
                managers[include_path] = TaskManager(include_path=include_path, include_defaults=False)
            built = managers[include_path].load([entry["task"]])
            task = (built["tasks"] if "tasks" in built else built)[entry["task"]]
            docs = task.eval_docs
            count = len(docs)
            if limit is not None:
                count = min(count, int(limit) if limit >= 1 else math.ceil(count * limit))
            if task.OUTPUT_TYPE == "multiple_choice" and count:
                per = float(len(task.doc_to_choice(docs[0])))
            elif task.OUTPUT_TYPE == "generate_until":
                per = GENERATION_WEIGHT
            else:
                per = 1.0
            costs[key] = count * per
        except Exception:  # noqa: BLE001 - only the order of the cells depends on it
            pass
    return costs


def longest_first(cells: list[Cell]) -> list[Cell]:
    """``cells`` from the largest to the smallest (ties: in their order)."""
    costs = task_costs(cell.settings for cell in cells)
    return sorted(cells, key=lambda cell: -costs.get(settings_id(cell.settings), 0.0))
