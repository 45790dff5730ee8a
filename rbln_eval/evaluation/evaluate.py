"""Running lm-evaluation-harness on a loaded bundle and recording where the scores came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbln_eval.errors import ConfigError
from rbln_eval.core.lm import BundleLM


@dataclass
class EvalOptions:
    """lm_eval's own options, with lm_eval's names."""

    tasks: list[str]
    num_fewshot: int | None = None
    limit: float | None = None
    output_path: str | None = None
    log_samples: bool = False
    include_path: str | None = None
    gen_kwargs: str | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool | None = None
    seed: list[int | None] = field(default_factory=lambda: [0, 1234, 1234, 1234])
    use_cache: str | None = None


def parse_seed(text: str | None) -> list[int | None]:
    """lm_eval's ``--seed``: one integer for all four seeds, or four comma-separated values (``None`` allowed)."""
    if text is None:
        return [0, 1234, 1234, 1234]
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [None if p.lower() == "none" else int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{text!r}: give an integer or four comma-separated integers", option="seed") from None
    if len(values) == 1:
        return values * 4
    if len(values) != 4:
        raise ConfigError(f"{text!r}: give one value or four (python, numpy, torch, fewshot)", option="seed")
    return values


def task_manager_for(tasks: list[str], include_path: str | None):
    """A TaskManager that knows ``tasks``; lm_eval's built-in index is only built when needed."""
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ConfigError("no tasks given", "pass {tasks} NAME[,NAME…]")
    if include_path is not None and not Path(include_path).exists():
        raise ConfigError(f"{include_path} does not exist", option="include_path")
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if _missing_tasks(local, tasks) == []:
            return local
    manager = TaskManager(include_path=include_path)
    missing = _missing_tasks(manager, tasks)
    if missing:
        raise ConfigError(
            f"unknown task(s): {', '.join(missing)}", "list them with `lm_eval ls tasks` or add {include_path} DIR"
        )
    return manager


def _missing_tasks(manager: Any, tasks: list[str]) -> list[str]:
    known = set(manager.all_tasks)
    from lm_eval import utils

    return [t for t in tasks if not Path(t).is_file() and not utils.pattern_match([t], sorted(known))]


def sample_selection(options: EvalOptions, manager: Any) -> dict[str, Any]:
    """``simple_evaluate`` arguments that decide which prompts are scored (identical for two models compared)."""
    return {
        "tasks": options.tasks,
        "num_fewshot": options.num_fewshot,
        "limit": options.limit,
        "gen_kwargs": options.gen_kwargs,
        "apply_chat_template": options.apply_chat_template,
        "fewshot_as_multiturn": options.fewshot_as_multiturn,
        "task_manager": manager,
        "random_seed": options.seed[0],
        "numpy_random_seed": options.seed[1],
        "torch_random_seed": options.seed[2],
        "fewshot_random_seed": options.seed[3],
    }


def _environment_described_once() -> None:
    """lm_eval describes the environment in every result (torch's ``collect_env``, which runs ``pip list``:
    about a second); it does not change within a process, so later evaluations reuse the first description."""
    import functools

    from torch.utils import collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.lru_cache(maxsize=1)(collect_env.get_pretty_env_info)


def evaluate(lm: BundleLM, options: EvalOptions, task_manager: Any | None = None) -> dict[str, Any] | None:
    """Run ``simple_evaluate`` on ``lm``; save results (and samples) like lm_eval's CLI does."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    _environment_described_once()
    manager = task_manager or task_manager_for(options.tasks, options.include_path)
    tracker = EvaluationTracker(output_path=options.output_path) if options.output_path else None
    use_cache = None
    if options.use_cache:
        use_cache = f"{options.use_cache}-{lm.bundle.digest[:16]}"
    results = simple_evaluate(
        model=lm, **sample_selection(options, manager), log_samples=options.log_samples,
        use_cache=use_cache, evaluation_tracker=tracker,
    )
    if results is None:
        return None
    results["config"]["model"] = lm.MODEL_NAME
    results["config"]["model_args"] = f"artifact={lm.bundle.digest}"
    if tracker is not None:
        samples = results.pop("samples", None) if options.log_samples else None
        tracker.save_results_aggregated(results=results, samples=samples)
        if samples:
            for task_name in results["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        if samples is not None:
            results["samples"] = samples
    return results


def summary_json(results: dict[str, Any]) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
