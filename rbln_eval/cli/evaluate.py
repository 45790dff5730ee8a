"""Evaluation commands: run (alias eval), compare, and lm_eval's own CLI with the ``rbln`` model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from rbln_eval.api import evaluate_bundle, open_classifier, open_executor, open_lm
from rbln_eval.errors import RblnEvalError
from rbln_eval.store import Bundle
from rbln_eval.cli.options import (
    BootstrapItersOpt,
    CompileBatchOpt,
    DeviceOpt,
    DtypeOpt,
    FewshotOpt,
    GenKwargsOpt,
    IncludePathOpt,
    LimitOpt,
    LogitsOpt,
    MaxSeqLenOpt,
    NoRemoteOpt,
    NpuOpt,
    RblnConfigOpt,
    RemoteOpt,
    RevisionOpt,
    RunTrustRemoteCodeOpt,
    SeedOpt,
    StoreOpt,
    TasksOpt,
    TpOpt,
    err,
    open_store,
    out,
    split_tasks,
)
from rbln_eval.cli.build import compile_options, obtain_model
from rbln_eval.cli.comparison import print_comparison, whole


def _open_replicas(
    bundle: Bundle, groups: Optional[list[list[int]]], data_parallel: Optional[int] = None, ray: Optional[str] = None
) -> Any:
    """One replica of ``bundle`` or K worker processes (or Ray actors), saying where they were placed."""
    from rbln_eval.execution.devices import format_devices

    with err.status(f"loading bundle {bundle.digest[:12]}…", spinner="dots"):
        if ray:
            executor = open_executor(bundle, data_parallel=data_parallel, ray=ray)
        else:
            executor = open_executor(bundle, groups=groups)
    groups = executor.groups
    if groups is not None and len(groups) > 1:
        placed = ", ".join(format_devices(group) for group in groups)
        err.print(
            f"loaded {len(groups)} replicas of {bundle.digest[:12]} ({bundle.key.target}) on {placed} in {executor.load_seconds:.1f}s"
        )
    else:
        where = "" if groups is None else f" on {format_devices(groups[0])}"
        err.print(f"loaded {bundle.digest[:12]} ({bundle.key.target}){where} in {executor.load_seconds:.1f}s")
    return executor


def run_command(
    ctx: typer.Context,
    artifact: Optional[str] = typer.Option(None, "--artifact", help="Bundle: digest, prefix, alias or path."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to compile on a miss (with the compile options)."),
    batch_size: CompileBatchOpt = None,
    bootstrap_iters: BootstrapItersOpt = None,
    device: DeviceOpt = None,
    devices: Optional[str] = typer.Option(None, "--devices", help="NPUs to use, split into replicas of the bundle's tp (0-7)."),
    data_parallel: Optional[int] = typer.Option(None, "--data-parallel", help="Replicas, each in its own process on its own NPUs."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Put the --data-parallel replicas on a Ray cluster: its address, 'auto' (this machine's cluster) or 'local' (a new one here)."
    ),
    revision: RevisionOpt = None,
    tp: TpOpt = None,
    max_seq_len: MaxSeqLenOpt = None,
    logits: LogitsOpt = "all",
    npu: NpuOpt = None,
    dtype: DtypeOpt = None,
    rbln_config: RblnConfigOpt = None,
    store: StoreOpt = None,
    trust_remote_code: RunTrustRemoteCodeOpt = False,
    no_remote: NoRemoteOpt = False,
    remote: RemoteOpt = None,
) -> None:
    """Evaluate a bundle with lm-evaluation-harness (compiling it first with --model on a miss).

    Every option of `lm-eval run` is taken as lm_eval takes it (listed below); results are named after the
    model, as lm_eval's hf model names them: OUTPUT/<model>/results_<time>.json. Classifier and extractive QA
    bundles are scored on dataset tasks instead (cls_*, qa_*, or YAML files with a dataset_task key).

    Example: rbln-eval run --artifact 3f2a9c --tasks lambada_openai --limit 100 --output_path results/
    """
    from rbln_eval.evaluation.datasets.run import checked_examples
    from rbln_eval.evaluation.datasets.spec import split_tasks
    from rbln_eval.evaluation.evaluate import options_from_lm_eval_args, source_model_name
    from rbln_eval.evaluation.preflight import check_chat_template, check_devices, check_eval_options, load_tasks, requested_tp

    # Cheap checks first: options, tasks, their datasets, devices; only then a bundle is loaded or compiled.
    if bool(artifact) == bool(model):
        raise RblnEvalError("pass exactly one of --artifact REF or --model MODEL")
    options = options_from_lm_eval_args(ctx.args, trust_remote_code=trust_remote_code)
    check_eval_options(options.num_fewshot, options.limit, options.gen_kwargs)
    check_scoring_args(options.model_args)
    compile_batch = _compiled_batch_size(batch_size)
    if bootstrap_iters is not None:
        if bootstrap_iters < 0:
            raise RblnEvalError(f"--bootstrap_iters must be 0 or more, got {bootstrap_iters}")
        options.bootstrap_iters = bootstrap_iters
    reference = {"artifact": artifact} if artifact else {"pretrained": model}
    model_args = reference | options.model_args  # as `lm-eval run --model rbln --model_args artifact=…` has them
    options.metadata = reference | options.metadata
    st = open_store(store)
    opts = compile_options(compile_batch, max_seq_len, tp, logits, dtype, rbln_config) if model else None
    dataset_tasks, lm_eval_tasks = split_tasks(options.tasks, options.include_path)
    if dataset_tasks and lm_eval_tasks:
        raise RblnEvalError(
            f"--tasks mixes dataset tasks ({', '.join(t.name for t in dataset_tasks)}) with lm_eval tasks "
            f"({', '.join(lm_eval_tasks)}): a bundle is scored on one kind; run them separately (or in a sweep)"
        )
    if artifact:  # the kind of task a stored bundle takes is known before its tasks are loaded
        try:
            stored = st.resolve(artifact)
        except RblnEvalError:
            stored = None  # said below, after the tasks' own checks
        if stored is not None:
            check_task_kind(stored, bool(dataset_tasks), options.tasks)
    manager = None if dataset_tasks else load_tasks(options.tasks, options.include_path, metadata=options.metadata)
    for task in dataset_tasks:  # their datasets, metrics and columns, before a bundle is compiled or loaded
        checked_examples(task)
    compiled_now = False
    groups = None
    if artifact:
        bundle = st.resolve(artifact)
        if compile_batch is not None and compile_batch != _bundle_batch_size(bundle):
            raise RblnEvalError(
                f"--batch_size {compile_batch}: bundle {bundle.digest[:12]} is compiled for batch size "
                f"{_bundle_batch_size(bundle)}; drop --batch_size, or compile another with --model"
            )
        if not ray:
            groups = check_devices(bundle.key.tensor_parallel, device, devices, data_parallel).groups
    else:
        if not ray:
            groups = check_devices(requested_tp(opts), device, devices, data_parallel).groups
        obtained = obtain_model(
            st, model, opts, revision=revision, npu=npu, no_remote=no_remote, remote=remote,  # type: ignore[arg-type]
            trust_remote_code=trust_remote_code,
        )
        bundle, compiled_now = obtained.bundle, obtained.compiled_now
    from rbln_eval.families.registry import family_of

    family_of(bundle.key.model_class).lm_class.check_args(options.model_args)
    check_task_kind(bundle, bool(dataset_tasks), options.tasks)
    check_chat_template(bundle, options.apply_chat_template)
    results = evaluate_bundle(
        bundle, options, manager, executor=_open_replicas(bundle, groups, data_parallel, ray), compiled_now=compiled_now,
        lm_args=options.model_args, model_name=model or source_model_name(bundle), model_args=model_args,
    )
    if results is None:
        return
    _print_results(results, bundle, options)


def check_task_kind(bundle: Bundle, dataset_tasks: bool, tasks: list[str]) -> None:
    """Refuse lm_eval tasks for a bundle scored on dataset tasks, and the other way round."""
    from rbln_eval.families.registry import family_of

    family = family_of(bundle.key.model_class)
    if dataset_tasks != (family.task_kind is not None):
        what = "dataset tasks" if family.task_kind else "lm_eval tasks"
        verb = "are not" if len(tasks) > 1 else "is not one"
        raise RblnEvalError(f"bundle {bundle.digest[:12]} ({family.name}) is scored on {what}: --tasks {','.join(tasks)} {verb}")


def check_scoring_args(model_args: dict[str, Any]) -> None:
    """Refuse ``--model_args`` no family's lm_eval model takes (the bundle's own is asked once it is known)."""
    from rbln_eval.families.registry import families

    accepted = sorted({name for family in families() for name in family.lm_class.MODEL_ARGS})
    unknown = sorted(set(model_args) - set(accepted))
    if unknown:
        raise RblnEvalError(
            f"--model_args {', '.join(unknown)}: not a setting of the scoring (accepted: {', '.join(accepted)}); "
            "the bundle is named with --artifact or --model"
        )


def _compiled_batch_size(batch_size: Optional[str]) -> Optional[int]:
    if batch_size is None:
        return None
    try:
        value = int(batch_size)
    except ValueError:
        value = 0
    if value < 1:
        raise RblnEvalError(f"--batch_size {batch_size!r} must be a positive integer (the compiled batch size)")
    return value


def _bundle_batch_size(bundle: Bundle) -> int:
    return int(bundle.key.fields()["compile"].get("batch_size") or 1)


def _print_results(results: dict[str, Any], bundle: Bundle, options: Any) -> None:
    """lm_eval's table (and, with --show_config, its results JSON), then where the time went."""
    from lm_eval.utils import make_table

    from rbln_eval.evaluation.evaluate import summary_json

    if options.show_config:
        out.print(summary_json({k: v for k, v in results.items() if k != "samples"}), markup=False)
    info = results["config"]["rbln"]
    out.print(
        f"rbln ({bundle.digest[:12]}, {bundle.key.target}), gen_kwargs: ({options.gen_kwargs}), limit: {whole(options.limit)}, "
        f"num_fewshot: {options.num_fewshot}, batch_size: {info['batch_size']}",
        markup=False,
    )
    out.print(make_table(results), markup=False)
    if "groups" in results:
        out.print(make_table(results, "groups"), markup=False)
    counters = ", ".join(f"{g}: {c['calls']} calls / {c['tokens']} tokens" for g, c in info["device_counters"].items())
    err.print(
        f"load {info['load_seconds']:.1f}s, eval {info['eval_seconds']:.1f}s, "
        f"{info['requests']} requests ({info['requests_per_second'] or 0:.1f}/s); device: {counters}"
    )
    from rbln_eval.execution.devices import format_devices

    for index, worker in enumerate(info.get("workers") or []):
        node = f" of node {worker['node'][:8]}" if worker.get("node") else ""
        err.print(
            f"replica {index} on {format_devices(worker['devices'])}{node}: {worker['requests']} requests, "
            f"busy {worker['busy_seconds']:.1f}s"
        )


def lm_eval_options_help() -> str:
    """The epilog of ``run --help``: lm_eval's own ``run`` options, as the installed lm_eval lists them."""
    from rbln_eval.evaluation.evaluate import RBLN_SETTINGS, lm_eval_option_strings, lm_eval_run_parser

    lines = ["\b", "lm_eval's options (as `lm-eval run`; dash spellings such as --include-path too):"]
    seen = set()
    for action in lm_eval_option_strings(lm_eval_run_parser()).values():
        if id(action) in seen or action.dest in (*RBLN_SETTINGS, "help", "trust_remote_code"):
            continue
        seen.add(id(action))
        names = ", ".join(action.option_strings)
        value = f" {action.metavar}" if action.metavar and action.nargs != 0 else ""
        lines.append(f"  {names}{value}")
        lines.append(f"      {' '.join(str(action.help or '').split())}")
    return "\n".join(lines)


def compare_command(
    ref: str = typer.Argument(..., help="Bundle: digest, prefix, alias or path."),
    tasks: TasksOpt = ...,  # type: ignore[assignment]
    limit: LimitOpt = None,
    num_fewshot: FewshotOpt = None,
    include_path: IncludePathOpt = None,
    gen_kwargs: GenKwargsOpt = None,
    seed: SeedOpt = None,
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Exit 1 when a |Δ| exceeds this (relative above 1)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON report path (default: compare-DIGEST.json)."),
    device: Optional[str] = typer.Option(None, "--device", help="NPU index or range of the bundle's replica."),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch size of the HF reference."),
    model_args: Optional[str] = typer.Option(
        None, "--model_args", help="Scoring settings, as for `run` (pll=original, language=en): both sides use them."
    ),
    store: StoreOpt = None,
) -> None:
    """Score a bundle and its model's HF reference on the same samples; report per-task and per-request deltas.

    Example: rbln-eval compare 3f2a9c --tasks hellaswag,arc_easy --limit 200 --tolerance 1e-4
    """
    from lm_eval.utils import simple_parse_args_string

    from rbln_eval.evaluation.compare import reference_lm, run_compare
    from rbln_eval.evaluation.datasets.compare import compare_dataset_tasks, reference_forward
    from rbln_eval.evaluation.datasets.run import checked_examples
    from rbln_eval.evaluation.datasets.spec import split_tasks as split_dataset_tasks
    from rbln_eval.families.registry import family_of
    from rbln_eval.evaluation.evaluate import EvalOptions, parse_seed
    from rbln_eval.evaluation.preflight import check_devices, check_eval_options, load_tasks

    if tolerance is not None and not tolerance >= 0:
        raise RblnEvalError(f"--tolerance must be a non-negative number, got {tolerance}")
    check_eval_options(num_fewshot, limit, gen_kwargs)
    options = EvalOptions(
        tasks=split_tasks(tasks), num_fewshot=num_fewshot, limit=whole(limit), include_path=include_path,
        gen_kwargs=gen_kwargs, seed=parse_seed(seed), log_samples=True,
    )
    st = open_store(store)
    dataset_tasks, lm_eval_tasks = split_dataset_tasks(options.tasks, include_path)
    if dataset_tasks and lm_eval_tasks:
        raise RblnEvalError(
            f"--tasks mixes dataset tasks ({', '.join(t.name for t in dataset_tasks)}) with lm_eval tasks "
            f"({', '.join(lm_eval_tasks)}): a bundle is scored on one kind"
        )
    if not dataset_tasks:
        load_tasks(options.tasks, include_path)  # unknown tasks and missing datasets fail before loading anything
    for task in dataset_tasks:
        checked_examples(task)
    scoring = simple_parse_args_string(model_args) if model_args else {}
    check_scoring_args(scoring)
    bundle = st.resolve(ref)
    family = family_of(bundle.key.model_class)
    check_task_kind(bundle, bool(dataset_tasks), options.tasks)
    family.lm_class.check_args(scoring)
    executor = _open_replicas(bundle, check_devices(bundle.key.tensor_parallel, device).groups)
    if dataset_tasks:
        with open_classifier(bundle, executor=executor, **scoring) as classifier:
            with err.status("loading the float32 reference…", spinner="dots"):
                forward = reference_forward(bundle, family, batch_size)
            report = compare_dataset_tasks(classifier, dataset_tasks, options.limit, tolerance, reference=forward)
    else:
        lm = open_lm(bundle, executor=executor, **scoring)
        try:
            with err.status("loading the HF reference…", spinner="dots"):
                reference = reference_lm(bundle, max_length=lm.max_length, batch_size=batch_size, settings=lm.reference_settings())
            report = run_compare(lm, options, tolerance, reference=reference)
        finally:
            lm.close()
    print_comparison(report, out)
    path = report.write(output or Path(f"compare-{bundle.digest[:12]}.json"))
    err.print(f"report written to {path}", markup=False)
    if not report.passed:
        details = "; ".join(f"{task.task} ({', '.join(task.failures)})" for task in report.failing)
        err.print(f"tolerance {tolerance:g} exceeded in {len(report.failing)} task(s): {details}", markup=False)
        raise typer.Exit(1)


def lm_eval_command(ctx: typer.Context) -> None:
    """Run lm_eval's own CLI with the `rbln` model registered (all arguments are lm_eval's).

    Example: rbln-eval lm-eval run --model rbln --model_args artifact=3f2a9c --tasks lambada_openai
    """
    import lm_eval.__main__ as lm_eval_main

    from rbln_eval import lm as _registers_rbln  # noqa: F401
    from rbln_eval import multimodal as _registers_rbln_vlm  # noqa: F401

    sys.argv = ["lm_eval", *ctx.args]
    lm_eval_main.cli_evaluate()


def register(app: typer.Typer) -> None:
    lm_eval_options = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True}, "epilog": lm_eval_options_help()}
    app.command("run", **lm_eval_options)(run_command)
    app.command(
        "eval", help="Alias of `run`.\n\nExample: rbln-eval eval --artifact 3f2a9c --tasks hellaswag", **lm_eval_options
    )(run_command)
    app.command("compare")(compare_command)
    app.command(
        "lm-eval",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )(lm_eval_command)
