"""Finding lm_eval tasks: a task manager that knows the tasks asked for, local ones first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rbln_eval.errors import ConfigError


def task_manager_for(tasks: list[str], include_path: str | None, metadata: dict[str, Any] | None = None):
    """A TaskManager that knows ``tasks``; lm_eval's built-in index is only built when needed."""
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ConfigError("no tasks given", "pass {tasks} NAME[,NAME…]")
    if include_path is not None and not Path(include_path).exists():
        raise ConfigError(f"{include_path} does not exist", option="include_path")
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False, metadata=metadata or {})
        if missing_tasks(local, tasks) == []:
            return local
    manager = TaskManager(include_path=include_path, metadata=metadata or {})
    missing = missing_tasks(manager, tasks)
    if missing:
        raise ConfigError(
            f"unknown task(s): {', '.join(missing)}", "list them with `rbln-eval lm-eval ls tasks` or add {include_path} DIR"
        )
    return manager


def missing_tasks(manager: Any, tasks: list[str]) -> list[str]:
    known = set(manager.all_tasks)
    from lm_eval import utils

    return [t for t in tasks if not Path(t).is_file() and not utils.pattern_match([t], sorted(known))]
