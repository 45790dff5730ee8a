"""Running lm-evaluation-harness on a loaded bundle and recording where the scores came from.

:class:`EvalOptions` holds lm_eval's own settings, with lm_eval's names; :func:`options_from_lm_eval_args`
reads them from command-line arguments with the installed lm_eval's own ``run`` parser and configuration,
so ``rbln-eval run`` accepts (and checks) exactly what ``lm-eval run`` does; :func:`evaluate` passes them to
``simple_evaluate`` and the EvaluationTracker as ``lm-eval run`` does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from rbln_eval.errors import ConfigError
from rbln_eval.evaluation.preflight import check_request_types
from rbln_eval.evaluation.tasks import task_manager_for

if TYPE_CHECKING:
    from rbln_eval.core.lm import BundleLM
    from rbln_eval.store import Bundle

DEFAULT_SEED = [0, 1234, 1234, 1234]
#: simple_evaluate's default.
DEFAULT_BOOTSTRAP_ITERS = 100000
#: lm_eval ``run`` settings that mean something else in ``rbln-eval run`` (its own options take them).
RBLN_SETTINGS = ("model", "batch_size", "max_batch_size", "device")


@dataclass
class EvalOptions:
    """lm_eval's own options, with lm_eval's names."""

    tasks: list[str]
    num_fewshot: int | None = None
    limit: float | None = None
    output_path: str | None = None
    log_samples: bool = False
    include_path: str | None = None
    gen_kwargs: str | dict[str, Any] | None = None
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: bool | None = None
    seed: list[int | None] = field(default_factory=lambda: list(DEFAULT_SEED))
    use_cache: str | None = None
    samples: dict[str, list[int]] | None = None
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS
    check_integrity: bool = False
    write_out: bool = False
    system_instruction: str | None = None
    #: ``--cache_requests`` as lm_eval reads it: cache_requests / rewrite_requests_cache / delete_requests_cache.
    cache_requests: dict[str, bool] = field(default_factory=dict)
    predict_only: bool = False
    confirm_run_unsafe_code: bool = False
    #: Task metadata (lm_eval merges the model_args into it).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: model_args of the scoring (``max_gen_toks=…``); the bundle is named by the command's own options.
    model_args: dict[str, Any] = field(default_factory=dict)
    verbosity: str | None = None
    show_config: bool = False
    wandb_args: dict[str, Any] = field(default_factory=dict)
    wandb_config_args: dict[str, Any] = field(default_factory=dict)
    trackio_args: dict[str, Any] = field(default_factory=dict)
    hf_hub_log_args: dict[str, Any] = field(default_factory=dict)


def parse_seed(text: str | None) -> list[int | None]:
    """lm_eval's ``--seed``: one integer for all four seeds, or four comma-separated values (``None`` allowed)."""
    if text is None:
        return list(DEFAULT_SEED)
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


# ---- lm_eval's command line ---------------------------------------------------------------------------
def lm_eval_run_parser(prog: str = "rbln-eval run") -> argparse.ArgumentParser:
    """The installed lm_eval's own ``run`` parser, whose errors raise one-line :class:`ConfigError`."""
    from lm_eval._cli.run import Run  # lm_eval's `lm-eval run` command: its options, types and actions

    subcommands = argparse.ArgumentParser(prog=prog).add_subparsers()
    Run.create(subcommands)
    parser = subcommands.choices["run"]
    parser.prog = prog

    def refuse(message: str) -> None:
        raise ConfigError(message)

    parser.error = refuse  # type: ignore[method-assign]
    return parser


def lm_eval_option_strings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of ``parser`` (``--limit``, ``-L``, …) and its action."""
    return {string: action for action in parser._actions for string in action.option_strings}


def lm_eval_spelling(args: Sequence[str], known: Sequence[str]) -> list[str]:
    """``args`` with dash spellings of lm_eval's options (``--include-path``) written as lm_eval's (``--include_path``)."""
    spelled = []
    for arg in args:
        name, sep, value = arg.partition("=")
        underscored = name.replace("-", "_")
        if name.startswith("--") and name not in known and "--" + underscored[2:] in known:
            arg = "--" + underscored[2:] + sep + value
        spelled.append(arg)
    return spelled


def options_from_lm_eval_args(args: Sequence[str], trust_remote_code: bool = False) -> EvalOptions:
    """lm_eval's ``run`` options in ``args``, read as ``lm-eval run`` reads them (``--config`` YAML included).

    Refuses, in one line, what lm_eval refuses (``--log_samples`` without ``--output_path``, ``--samples``
    with ``--limit``, …) and lm_eval settings that ``rbln-eval run`` takes as its own options.
    """
    from lm_eval.config.evaluate_config import EvaluatorConfig

    parser = lm_eval_run_parser()
    strings = lm_eval_option_strings(parser)
    namespace = parser.parse_args(lm_eval_spelling(args, list(strings)))
    given = [f"--{name}" for name in RBLN_SETTINGS if getattr(namespace, name, None) not in (None, {}, [])]
    if getattr(namespace, "config", None):
        try:
            from_file = EvaluatorConfig.load_yaml_config(namespace.config)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(str(exc), option="config") from None
        given += [f"{name} in {namespace.config}" for name in RBLN_SETTINGS if name in from_file]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: lm_eval's model settings are not taken here; rbln-eval run names the bundle with "
            "--artifact or --model, its compiled batch size with --batch_size and its NPUs with --device"
        )
    if trust_remote_code:
        namespace.trust_remote_code = True
    try:
        config = EvaluatorConfig.from_cli(namespace)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    hub_args = dict(config.hf_hub_log_args or {})
    from lm_eval.loggers import EvaluationTracker

    try:
        inspect.signature(EvaluationTracker).bind(**hub_args)
    except TypeError as exc:
        raise ConfigError(f"--hf_hub_log_args {', '.join(hub_args)}: {exc}") from None
    samples = config.samples
    if samples is not None and not isinstance(samples, dict):
        raise ConfigError(f"{samples!r} is neither a JSON object nor a JSON file", option="samples")
    model_args = dict(config.model_args or {})
    model_args.pop("trust_remote_code", None)  # a compile setting here (--trust-remote-code)
    tasks = config.tasks.split(",") if isinstance(config.tasks, str) else [t for task in config.tasks for t in str(task).split(",")]
    return EvalOptions(
        tasks=[t.strip() for t in tasks if t.strip()],
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        output_path=config.output_path,
        log_samples=bool(config.log_samples),
        include_path=config.include_path,
        gen_kwargs=config.gen_kwargs,
        apply_chat_template=config.apply_chat_template,
        fewshot_as_multiturn=config.fewshot_as_multiturn,
        seed=list(config.seed) if config.seed is not None else [None] * 4,
        use_cache=config.use_cache,
        samples=samples,
        check_integrity=bool(config.check_integrity),
        write_out=bool(config.write_out),
        system_instruction=config.system_instruction,
        cache_requests=dict(config.cache_requests or {}),
        predict_only=bool(config.predict_only),
        confirm_run_unsafe_code=bool(config.confirm_run_unsafe_code),
        metadata=dict(config.metadata or {}),
        model_args=model_args,
        verbosity=config.verbosity,
        show_config=bool(config.show_config),
        wandb_args=dict(config.wandb_args or {}),
        wandb_config_args=dict(config.wandb_config_args or {}),
        trackio_args=dict(config.trackio_args or {}),
        hf_hub_log_args=hub_args,
    )


# ---- tasks ---------------------------------------------------------------------------------------------
def sample_selection(options: EvalOptions, manager: Any) -> dict[str, Any]:
    """``simple_evaluate`` arguments that decide which prompts are scored (identical for two models compared)."""
    return {
        "tasks": options.tasks,
        "num_fewshot": options.num_fewshot,
        "limit": options.limit,
        "samples": options.samples,
        "gen_kwargs": options.gen_kwargs,
        "system_instruction": options.system_instruction,
        "apply_chat_template": options.apply_chat_template,
        "fewshot_as_multiturn": options.fewshot_as_multiturn,
        "task_manager": manager,
        "random_seed": options.seed[0],
        "numpy_random_seed": options.seed[1],
        "torch_random_seed": options.seed[2],
        "fewshot_random_seed": options.seed[3],
    }


# ---- evaluation ----------------------------------------------------------------------------------------
def source_model_name(bundle: "Bundle") -> str:
    """The model a bundle was compiled from, as lm_eval's ``hf`` names it: the Hub id, or the local directory."""
    source = bundle.key.source
    if source.get("kind") == "hub" and source.get("id"):
        return str(source["id"])
    info = bundle.manifest.info
    return str(info.get("model_path") or info.get("model") or bundle.digest)


def _environment_described_once() -> None:
    """lm_eval describes the environment in every result (torch's ``collect_env``, which runs ``pip list``:
    about a second); it does not change within a process, so later evaluations reuse the first description."""
    import functools

    from torch.utils import collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.lru_cache(maxsize=1)(collect_env.get_pretty_env_info)


def evaluate(
    lm: "BundleLM",
    options: EvalOptions,
    task_manager: Any | None = None,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Run ``simple_evaluate`` on ``lm`` and save results (and samples) as ``lm-eval run`` does.

    Results are named after ``model_name`` (default: the bundle's source model), as lm_eval's ``hf`` names
    them after ``pretrained``: ``OUTPUT/<model>/results_<time>.json``; ``model_args`` are recorded in
    ``config.model_args`` (default ``artifact=<digest>``), the bundle itself in ``config.rbln``.
    """
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import sanitize_model_name

    _environment_described_once()
    check_request_types(lm.family, task_manager)
    metadata = (model_args or {}) | options.metadata
    manager = task_manager or task_manager_for(options.tasks, options.include_path, metadata)
    wandb_logger = trackio_logger = None
    if options.wandb_args:
        from lm_eval.loggers import WandbLogger

        wandb_logger = WandbLogger(options.wandb_args, options.wandb_config_args)
    if options.trackio_args:
        from lm_eval.loggers import TrackioLogger

        trackio_logger = TrackioLogger(options.trackio_args)
    hub_args = dict(options.hf_hub_log_args)
    if options.output_path:
        hub_args["output_path"] = options.output_path
    if os.environ.get("HF_TOKEN"):
        hub_args["token"] = os.environ["HF_TOKEN"]
    tracker = EvaluationTracker(**hub_args)
    use_cache = f"{options.use_cache}-{lm.bundle.digest[:16]}" if options.use_cache else None
    log_samples = options.log_samples or options.predict_only
    results = simple_evaluate(
        model=lm, model_args=model_args, **sample_selection(options, manager), log_samples=log_samples,
        use_cache=use_cache, evaluation_tracker=tracker, bootstrap_iters=options.bootstrap_iters,
        check_integrity=options.check_integrity, write_out=options.write_out,
        cache_requests=options.cache_requests.get("cache_requests", False),
        rewrite_requests_cache=options.cache_requests.get("rewrite_requests_cache", False),
        delete_requests_cache=options.cache_requests.get("delete_requests_cache", False),
        verbosity=options.verbosity, predict_only=options.predict_only,
        confirm_run_unsafe_code=options.confirm_run_unsafe_code, metadata=metadata,
    )
    if results is None:
        return None
    name = model_name or source_model_name(lm.bundle)
    general = tracker.general_config_tracker
    general.model_source, general.model_name, general.model_name_sanitized = lm.MODEL_NAME, name, sanitize_model_name(name)
    results["config"]["model"] = lm.MODEL_NAME
    results["config"]["model_args"] = model_args if model_args is not None else f"artifact={lm.bundle.digest}"
    samples = results.pop("samples", None) if log_samples else None
    for logger in (wandb_logger, trackio_logger):
        if logger is not None:
            _log_to(logger, results, samples)
    tracker.save_results_aggregated(results=results, samples=samples)
    if samples is not None:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    if tracker.push_results_to_hub or tracker.push_samples_to_hub:
        tracker.recreate_metadata_card()
    if samples is not None:
        results["samples"] = samples
    for logger in (wandb_logger, trackio_logger):
        if logger is not None:
            _finish(logger)
    return results


def _log_to(logger: Any, results: dict[str, Any], samples: dict[str, Any] | None) -> None:
    """Log to Weights & Biases or Trackio as ``lm-eval run`` does: a failure is logged, not raised."""
    import logging

    try:
        logger.post_init(results)
        logger.log_eval_result()
        if samples is not None:
            logger.log_eval_samples(samples)
    except Exception as exc:  # noqa: BLE001 - lm_eval's own behaviour
        logging.getLogger(__name__).info("Logging to %s failed: %s", type(logger).__name__, exc)


def _finish(logger: Any) -> None:
    run = getattr(logger, "run", None)
    if run is not None and hasattr(run, "finish"):
        run.finish()
    elif hasattr(logger, "finish"):
        logger.finish()


def summary_json(results: dict[str, Any]) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
